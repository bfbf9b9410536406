"""The example's tasks, in four pools that each hold what they need once per process.

- email: one SMTP connection per process (``smtp``), ``send_email`` and ``send_bulk_emails``
  (which streams its progress);
- image: Pillow loaded once (``imaging``), ``resize`` and ``process_batch`` (streams);
- data: one database connection and one TTL cache per process, ``aggregate``,
  ``etl_pipeline`` (streams) and ``cached_query``;
- scheduled: maintenance, ``cleanup_old_files`` and ``generate_daily_report``.

Settings come from the environment, so the tests can point them at their own servers:
``EXAMPLE_SMTP_HOST``/``EXAMPLE_SMTP_PORT`` (localhost:8025), ``EXAMPLE_DATA_DIR`` (where
images, the database and reports live; ./example-data). The broker is the embedded SQLite
file unless ``CELERIAC_BROKER_URL`` says otherwise.
"""

from __future__ import annotations

import os
import smtplib
import sqlite3
import statistics
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from types import ModuleType
from typing import Any

from celeriac import Celery, use

app = Celery("fastapi_example")
app.conf.worker_pools = {
    "email": {"queues": ["email"], "processes": 2},
    "image": {"queues": ["image"], "processes": 2, "concurrency": 4},
    "data": {"queues": ["data"], "processes": 4},
    "scheduled": {"queues": ["scheduled"], "processes": 1},
}

DATA_DIR = Path(os.environ.get("EXAMPLE_DATA_DIR", "example-data"))


# -- resources: built once per worker process ---------------------------------------------


@app.resource
def smtp() -> Iterator[smtplib.SMTP]:
    client = smtplib.SMTP(
        os.environ.get("EXAMPLE_SMTP_HOST", "localhost"),
        int(os.environ.get("EXAMPLE_SMTP_PORT", "8025")),
        timeout=10,
    )
    yield client
    client.quit()


@app.resource
def imaging() -> ModuleType:
    from PIL import Image  # imported once per image process, not per task

    return Image


@app.resource
def database() -> Iterator[sqlite3.Connection]:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(DATA_DIR / "example.db", check_same_thread=False)
    conn.execute("CREATE TABLE IF NOT EXISTS sales (region TEXT, amount REAL)")
    yield conn
    conn.close()


class TTLCache:
    """A per-process cache whose entries live ``ttl`` seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> tuple[bool, Any]:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, key: str, value: Any) -> None:
        self._entries[key] = (time.monotonic() + self.ttl, value)


@app.resource
def query_cache() -> TTLCache:
    return TTLCache(ttl=60.0)


# -- email -----------------------------------------------------------------------------------


def _message(to: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "noreply@example.com"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message


@app.task(queue="email", autoretry_for=(smtplib.SMTPServerDisconnected,), max_retries=3)
def send_email(
    to: str, subject: str, body: str, mailer: smtplib.SMTP = use(smtp)
) -> dict[str, str]:
    mailer.send_message(_message(to, subject, body))
    return {"to": to, "status": "sent"}


@app.task(queue="email")
def send_bulk_emails(
    recipients: list[str], subject: str, body: str, mailer: smtplib.SMTP = use(smtp)
) -> Iterator[dict[str, Any]]:
    for i, to in enumerate(recipients):
        mailer.send_message(_message(to, subject, body))
        yield {"current": i + 1, "total": len(recipients), "sent_to": to}
    return {"sent": len(recipients)}  # type: ignore[misc]  # the task's result


# -- images ----------------------------------------------------------------------------------


@app.task(queue="image")
def resize(path: str, width: int, height: int, image: ModuleType = use(imaging)) -> dict[str, Any]:
    source = Path(path)
    target = source.with_name(f"{source.stem}-{width}x{height}{source.suffix}")
    with image.open(source) as picture:
        picture.resize((width, height)).save(target)
    return {"path": str(target), "size": [width, height]}


@app.task(queue="image")
def process_batch(
    paths: list[str], width: int, image: ModuleType = use(imaging)
) -> Iterator[dict[str, Any]]:
    done = []
    for i, path in enumerate(paths):
        with image.open(path) as picture:
            height = max(1, round(picture.height * width / picture.width))
        done.append(resize(path, width, height, image=image)["path"])
        yield {"current": i + 1, "total": len(paths), "path": done[-1]}
    return {"processed": done}  # type: ignore[misc]


# -- data ------------------------------------------------------------------------------------


@app.task(queue="data")
async def aggregate(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "sum": sum(values),
        "mean": statistics.fmean(values) if values else 0.0,
        "max": max(values) if values else 0.0,
    }


@app.task(queue="data")
def etl_pipeline(
    rows: list[dict[str, Any]], db: sqlite3.Connection = use(database)
) -> Iterator[dict[str, Any]]:
    yield {"step": "extract", "rows": len(rows)}
    clean = [r for r in rows if isinstance(r.get("amount"), int | float) and r.get("region")]
    yield {"step": "transform", "rows": len(clean), "dropped": len(rows) - len(clean)}
    with db:
        db.executemany(
            "INSERT INTO sales (region, amount) VALUES (?, ?)",
            [(r["region"], float(r["amount"])) for r in clean],
        )
    yield {"step": "load", "rows": len(clean)}
    return {"loaded": len(clean)}  # type: ignore[misc]


@app.task(queue="data")
def cached_query(
    region: str, db: sqlite3.Connection = use(database), cache: TTLCache = use(query_cache)
) -> dict[str, Any]:
    hit, total = cache.get(region)
    if not hit:
        row = db.execute("SELECT COALESCE(SUM(amount), 0) FROM sales WHERE region = ?", (region,))
        total = row.fetchone()[0]
        cache.put(region, total)
    return {"region": region, "total": total, "cached": hit, "pid": os.getpid()}


# -- scheduled maintenance --------------------------------------------------------------------


@app.task(queue="scheduled")
def cleanup_old_files(directory: str, max_age_seconds: float) -> dict[str, Any]:
    cutoff = time.time() - max_age_seconds
    removed = []
    for path in Path(directory).glob("*"):
        if path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink()
            removed.append(path.name)
    return {"removed": sorted(removed)}


@app.task(queue="scheduled")
def generate_daily_report(db: sqlite3.Connection = use(database)) -> dict[str, Any]:
    rows = db.execute("SELECT region, SUM(amount) FROM sales GROUP BY region ORDER BY region")
    totals = {region: amount for region, amount in rows}
    report = DATA_DIR / f"report-{time.strftime('%Y-%m-%d')}.txt"
    report.write_text("".join(f"{r}\t{a:.2f}\n" for r, a in totals.items()))
    return {"report": str(report), "totals": totals}
