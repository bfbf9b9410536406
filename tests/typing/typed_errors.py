"""Misuse that mypy must reject: each line marked ``E:`` is expected to be an error."""

from __future__ import annotations

from celeriac import Celery

app = Celery("typed")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


async def client() -> None:
    add.delay(1, "x")  # E: wrong argument type
    add.delay(1)  # E: missing argument
    r = await add.delay(1, 2)
    text: str = await r.get()  # E: result is int, not str
    print(text)
