"""``rediss://`` against a real TLS Redis that wants a password: a private redis-server of
this test's own, with a self-signed certificate made by ``openssl`` for the run."""

from __future__ import annotations

import asyncio
import gc
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.errors import ConfigurationError
from celeriac.protocol.envelope import Envelope
from celeriac.transports.redis.backend import RedisBackend
from celeriac.transports.redis.broker import RedisBroker
from services import free_port, unavailable, wait_until

PASSWORD = "tls-s3cret"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """(port, CA file) of a redis-server that speaks only TLS."""
    for tool in ("redis-server", "openssl"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (apt-get install redis-server openssl)")
    directory = tmp_path_factory.mktemp("tls-redis")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    server = subprocess.Popen(
        [
            *("redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
            *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
            *("--requirepass", PASSWORD),
            *("--save", "", "--appendonly", "no", "--dir", str(directory)),
            *("--logfile", str(directory / "redis.log")),
        ]
    )
    try:
        log = directory / "redis.log"

        def ready() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"redis-server (TLS) exited: {log.read_text()}")
            return log.exists() and "Ready to accept connections" in log.read_text()

        wait_until(ready, 15, "the TLS redis-server")
        yield port, cert
    finally:
        server.terminate()
        server.wait(10)


async def test_broker_and_results_work_over_tls_with_a_password(
    tls_redis: tuple[int, Path],
) -> None:
    port, ca = tls_redis
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/2?ssl_ca_certs={ca}"
    broker, backend = RedisBroker(url), RedisBackend(url)
    await broker.connect()
    await backend.connect()
    try:
        envelope = Envelope(b"[[], {}, {}]", "application/json", "utf-8", {"id": "t1"}, {})
        await broker.publish("tls-q", envelope)
        async for delivery in broker.consume(["tls-q"], prefetch=1):
            assert delivery.envelope.headers["id"] == "t1"
            await broker.ack(delivery)
            break
        waiting = asyncio.ensure_future(backend.wait("t1", timeout=10))
        await backend.store("t1", {"status": "SUCCESS", "result": 42, "task_id": "t1"}, expires=60)
        record = await waiting  # over the TLS subscription connection
        assert record["result"] == 42
    finally:
        await broker.close()
        await backend.close()


async def test_an_untrusted_certificate_is_a_configuration_error(
    tls_redis: tuple[int, Path],
) -> None:
    port, _ = tls_redis
    broker = RedisBroker(f"rediss://:{PASSWORD}@127.0.0.1:{port}/2")  # the system's CAs
    await broker.connect()
    try:
        with pytest.raises(ConfigurationError, match="certificate"):
            await broker.publish("q", Envelope(b"[]", "application/json", "utf-8", {}, {}))
    finally:
        await broker.close()
    await asyncio.sleep(0)  # let the aborted connection finish closing, then
    gc.collect()  # an unclosed socket or transport would warn now, failing this test
