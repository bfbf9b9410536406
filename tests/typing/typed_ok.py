"""Typed usage that mypy --strict must accept (checked by tests/unit/test_typing.py)."""

from __future__ import annotations

from typing import Any

from celeriac import AsyncResult, Celery

app = Celery("typed")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
def shout(text: str) -> str:
    return text.upper()


@app.task(bind=True, max_retries=2)
async def bound(self: Any, n: int) -> list[int]:
    return [n]


async def client() -> int:
    r: AsyncResult[int] = await add.delay(1, 2)
    value: int = await r.get(timeout=5)
    inline: int = await add(2, 3)
    shouted: str = shout("x")
    again: str = await (await shout.delay("y")).get()
    listed: list[int] = await (await bound.delay(3)).get()
    batch: list[AsyncResult[int]] = await add.delay_many([(1, 2), {"x": 3, "y": 4}])
    sums: list[int] = [await each.get() for each in batch]
    return value + inline + len(shouted) + len(again) + len(listed) + sum(sums)
