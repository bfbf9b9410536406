"""The FastAPI example, started by ``celeriac run`` on the embedded broker, used over HTTP:
emails reach a real SMTP server, images are resized by Pillow, data lands in a real
database, streams arrive as Server-Sent Events, and one SIGTERM stops everything."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from PIL import Image

from services import free_port, wait_until

from .conftest import CELERIAC, sse

pytestmark = pytest.mark.integration


class Inbox:
    """aiosmtpd's handler: every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        from email import message_from_bytes

        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def to(self) -> list[str]:
        return [str(m["To"]) for m in self.messages]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def test_the_fastapi_example_end_to_end(
    servers: Any, port: int, tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    inbox, smtp_port = smtp
    data = tmp_path / "data"
    data.mkdir()
    run = servers(
        [
            *CELERIAC,
            *("run", "examples.fastapi_app.main:api", "--port", str(port), "-l", "warning"),
            *("--pool", "all: queues=email,image,data,scheduled processes=2"),
        ],
        CELERIAC_BROKER_URL=f"sqlite:///{tmp_path / 'broker.db'}",
        EXAMPLE_SMTP_HOST="127.0.0.1",
        EXAMPLE_SMTP_PORT=str(smtp_port),
        EXAMPLE_DATA_DIR=str(data),
    )
    base = f"http://127.0.0.1:{port}"
    run.wait_http(base + "/health")
    with httpx.Client(base_url=base, timeout=60) as http:
        # Email: one, then a bulk send that streams its progress.
        sent = http.post("/api/email/send", json={"to": "a@x.test", "subject": "Hi", "body": "1"})
        assert sent.json() == {"to": "a@x.test", "status": "sent"}
        bulk = http.post(
            "/api/email/send-bulk",
            json={"recipients": [f"r{i}@x.test" for i in range(5)], "subject": "S", "body": "b"},
        )
        assert bulk.headers["content-type"].startswith("text/event-stream")
        events = sse(bulk.text)
        progress = [d["info"]["sent_to"] for name, d in events if name == "PROGRESS"]
        # From whenever the stream attached (a quick task may be done by then): in order.
        assert progress == [f"r{i}@x.test" for i in range(5)][5 - len(progress) :]
        assert events[-1] == ("SUCCESS", {**events[-1][1], "info": {"sent": 5}})
        wait_until(lambda: len(inbox.messages) == 6, 20, "six messages at the SMTP server")
        assert sorted(inbox.to()) == sorted(["a@x.test", *(f"r{i}@x.test" for i in range(5))])

        # Images: Pillow, loaded once per process.
        paths = []
        for i in range(3):
            path = data / f"img{i}.png"
            Image.new("RGB", (200, 100), (i * 80, 0, 0)).save(path)
            paths.append(str(path))
        resized = http.post("/api/image/resize", json={"path": paths[0], "width": 50, "height": 40})
        with Image.open(resized.json()["path"]) as picture:
            assert picture.size == (50, 40)
        batch = sse(http.post("/api/image/process-batch", json={"paths": paths, "width": 20}).text)
        counts = [d["info"]["current"] for n, d in batch if n == "PROGRESS"]
        assert counts == [1, 2, 3][3 - len(counts) :]
        for path in batch[-1][1]["info"]["processed"]:
            with Image.open(path) as picture:
                assert picture.size == (20, 10)

        # Data: aggregate, an ETL that streams its steps, a cached query per process.
        stats = http.post("/api/data/aggregate", json={"values": [1, 2, 3, 6]}).json()
        assert stats == {"count": 4, "sum": 12.0, "mean": 3.0, "max": 6.0}
        rows = [{"region": "north", "amount": 10}, {"region": "south", "amount": 5}, {"bad": 1}]
        steps = sse(http.post("/api/data/etl", json={"rows": rows}).text)
        seen = [d["info"]["step"] for n, d in steps if n == "PROGRESS"]
        # A stream that attaches late starts from the latest step: a suffix of the three.
        assert seen == ["extract", "transform", "load"][3 - len(seen) :]
        assert steps[-1][1]["info"] == {"loaded": 2}
        answers = [http.get("/api/data/query", params={"region": "north"}).json() for _ in range(8)]
        assert all(a["total"] == 10.0 for a in answers)
        assert any(a["cached"] for a in answers)  # a process answered twice from its cache

        # Scheduled maintenance.
        old = data / "old.tmp"
        old.write_text("x")
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        cleaned = http.post(
            "/api/scheduled/cleanup", json={"directory": str(data), "max_age_seconds": 600}
        )
        assert cleaned.json() == {"removed": ["old.tmp"]}
        report = http.post("/api/scheduled/daily-report").json()
        assert report["totals"] == {"north": 10.0, "south": 5.0}
        assert Path(report["report"]).read_text() == "north\t10.00\nsouth\t5.00\n"

        assert http.get("/docs").status_code == 200
    assert run.stop() == 0, run.log()
