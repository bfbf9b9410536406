"""The results a canvas applied gives: ``protocol.canvas`` result trees as
:class:`~celeriac.result.AsyncResult` and :class:`~celeriac.result.GroupResult` objects."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from celeriac.protocol.canvas import GroupNode, ResultNode
from celeriac.result import AsyncResult, GroupResult

if TYPE_CHECKING:
    from celeriac.app import Celery


def result_of(node: ResultNode, app: Celery) -> AsyncResult[Any] | GroupResult:
    """The result ``node`` stands for, its ``parent`` links included (a chain's last step
    links back to its first; a chord's body to its header group)."""
    line: list[ResultNode] = []
    at: ResultNode | None = node
    while at is not None:  # a loop, not recursion: a chain may have thousands of steps
        line.append(at)
        at = at.parent
    parent: AsyncResult[Any] | GroupResult | None = None
    for step in reversed(line):
        if isinstance(step, GroupNode):
            children = [result_of(child, app) for child in step.children]
            parent = GroupResult(step.id, children, parent=parent, app=app)
        else:
            parent = AsyncResult(step.id, app, parent=parent)
    assert parent is not None
    return parent


class SentGroupResult(GroupResult):
    """A group's result returned in async code while its messages are being published:
    ``await`` it to confirm the publish, as an ``AsyncResult`` from ``delay()``."""

    _sending: asyncio.Future[None] | None = None

    def __await__(self) -> Generator[Any, None, SentGroupResult]:
        if self._sending is not None:
            yield from self._sending.__await__()
        return self


def sent(
    result: AsyncResult[Any] | GroupResult, sending: asyncio.Future[None]
) -> AsyncResult[Any] | GroupResult:
    """``result``, awaitable until ``sending`` (its publish) ends."""
    if isinstance(result, AsyncResult):
        result._sending = sending
        return result
    awaitable = SentGroupResult(result.id, result.results, parent=result.parent, app=result.app)
    awaitable._sending = sending
    return awaitable
