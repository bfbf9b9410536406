"""The worker's half of Celery's canvas: what comes after a task that is a canvas step.

A client publishes only a chain's first step, or a chord's header tasks; every later step
is published by the worker that ran the step before it, from the signature dicts the
message carries in its embed (``chain``, ``callbacks``, ``errbacks``, ``chord``) and its
``group``/``group_index`` headers (WAVE2 §1.2, Celery's ``app/trace.py`` and
``backends/base.py``). :class:`CanvasSteps` does it, called by the execution at a few
points; a message whose embed is empty (:func:`carries_canvas` is false) never gets here.

* Success, before SUCCESS is stored (Celery's order, so the record's ``children`` names what
  was published): the ``link`` callbacks (several: one group), then the chain's next step.
  Each goes out with its signature's own priority, not the finished message's: Celery
  passes the parent's on only under ``task_inherit_parent_priority`` (off by default).
  After it: the chord part, and the chord's body (or its failure) from the one worker
  whose part completed the chord.
* Failure (final, not a retry), after FAILURE is stored: the chord part, the same FAILURE
  under the id of every later step of the chain (and their chord parts), then the error
  callbacks: a "new-style" one (a task registered here whose function takes more than one
  positional parameter besides the signature's own arguments) is called here as
  ``errback(request, exc, traceback)``; the others are published as one group, called with
  the failed task's id.
* A task that expired: its chord part (REVOKED). A task called with wrong arguments fails
  as above, error callbacks included (Celery's call raises TypeError in the worker). A task
  not registered here: its chain's later ids and its chord part fail with it, so nobody
  waits for them; its error callbacks are not called (Celery's worker calls none either).
* A chord part on a result store that cannot join chords (``rpc://``, ``disabled://``): the
  body's id gets a FAILURE that says so, never a silent drop.
* A malformed embed (its callbacks, error callbacks, chord, or the chain's next step) is
  found before the task runs: FAILURE under every id it names that can be read, the message
  to the dead letters. The chain's later steps go on as they came and are checked when they
  become the next (as Celery's worker does: checking them all at each step costs a chain of
  n steps n²/2 checks).

All of it happens before the message is acknowledged, so a worker killed halfway runs the
step again (at-least-once) rather than losing the rest of the chain. The ids of later steps
are frozen in the signatures, so a step run twice publishes the same ids; what stops such a
copy from doubling the rest of the canvas is this rule: **a canvas message whose task id
already has a final record in the result store is a copy of a step that ran to its end**
(its next steps were published before that record was stored). It is not run again; it
only repeats what is safe to repeat (the chord part, which the store counts once, and, for
a FAILURE, the later ids' FAILURE records) and is acknowledged. Its error callbacks are not
called again. (A copy that arrives while the first run is still going on in this worker
waits for that run's outcome instead: see ``Execution._run``.) This costs one read of the
store per canvas message (not for plain tasks),
and only on stores that keep records (not ``rpc://`` or ``disabled://``). One consequence
is Celery's too: a frozen canvas applied twice runs once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.canvas.publish import publish
from celeriac.errors import CanvasError, ChordError, ChordsNotSupported
from celeriac.protocol import canvas
from celeriac.protocol.records import exception_to_dict
from celeriac.task import Request
from celeriac.transports.backend import ChordPart, KeyValueBackend
from celeriac.worker import limits

if TYPE_CHECKING:
    from celeriac.app import Celery
    from celeriac.connections import Connection
    from celeriac.protocol.message import TaskMessage
    from celeriac.task import Task

logger = logging.getLogger("celeriac.worker")

Signature = canvas.SignatureDict


def carries_canvas(embed: dict[str, Any]) -> bool:
    """Whether a parsed message's embed asks anything of the worker (the one check a plain
    message pays)."""
    return bool(embed["chain"] or embed["chord"] or embed["callbacks"] or embed["errbacks"])


@dataclass(slots=True)
class Embed:
    """A message's canvas, checked: what the worker does after its task."""

    #: The chain's remaining steps, last first (as on the wire: the next one is ``[-1]``).
    #: Only the next one is checked here; the others go on as they came, each checked when
    #: it becomes the next step (as Celery's worker does): checking the whole rest at every
    #: step would cost a chain of n steps n²/2 checks.
    chain: list[Signature]
    callbacks: list[Signature]
    errbacks: list[Signature]
    #: The body of the chord this task is a header task of.
    chord: Signature | None
    #: The chord's header group (the message's ``group``, else the body's ``group_id``).
    group_id: str | None


def read_embed(message: TaskMessage) -> Embed:
    """The message's canvas, checked; :class:`~celeriac.errors.CanvasError` names what is
    malformed and where."""
    embed = message.embed
    chain = list(embed["chain"] or [])  # a list of dicts: parse_task_message checked that
    if chain:
        chain[-1] = canvas.check(chain[-1], f"embed 'chain'[{len(chain) - 1}]")
    callbacks = canvas.check_list(embed["callbacks"] or [], "embed 'callbacks'")
    errbacks = canvas.check_list(embed["errbacks"] or [], "embed 'errbacks'")
    chord = embed["chord"]
    group_id = None
    if chord is not None:
        chord = canvas.check(chord, "embed 'chord'")
        group_id = message.group or chord["options"].get("group_id")
        if not group_id:
            raise CanvasError(
                "embed 'chord': the message has no 'group' header and the chord's body no"
                " 'group_id' option: which chord the task is part of is unknown"
            )
    return Embed(chain, callbacks, errbacks, chord, group_id)


class CanvasSteps:
    """Publishes and fails what follows canvas steps, for one worker (or one
    ``celery.chord_unlock`` run): through ``conn``, running error callbacks' sync functions
    in ``executor`` (None: the loop's default executor)."""

    def __init__(self, app: Celery, conn: Connection, executor: Executor | None = None) -> None:
        self.app = app
        self.conn = conn
        self.backend = conn.backend
        self.executor = executor

    # -- before the task runs ----------------------------------------------------------------

    async def ran_before(self, message: TaskMessage, embed: Embed) -> bool:
        """Whether the message is a copy of a step whose outcome is stored (the rule in the
        module doc); if so, repeat the safe part of what followed it."""
        if not isinstance(self.backend, KeyValueBackend):
            return False
        meta = await self.backend.get(message.id)
        state = None if meta is None else meta.get("status")
        if meta is None or state not in states.READY_STATES:
            return False
        logger.info(
            "task %s[%s] is a canvas step already %s (a redelivered or duplicated message):"
            " not run again, what followed its run stands",
            message.task,
            message.id,
            state,
        )
        value = meta.get("result")
        if state == states.FAILURE:
            await self.fail_chain(embed.chain, value, meta.get("traceback"))
        if embed.chord is not None:
            await self._chord_part(message, embed, state, value)
        return True

    async def malformed(self, message: TaskMessage, error: CanvasError) -> list[str]:
        """A message whose embed is malformed: FAILURE (naming the problem) under its id and
        every id its embed names that can be read, and its chord part if the chord itself
        is readable. The ids stored under."""
        record = exception_to_dict(CanvasError(f"malformed canvas in the message: {error}"))
        embed = message.embed
        ids = [message.id, *_frozen_ids([embed.get("chain"), embed.get("chord")])]
        for task_id in dict.fromkeys(ids):
            await self._store(task_id, states.FAILURE, record, None, parent_id=message.parent_id)
        try:
            chord = canvas.check(embed["chord"], "embed 'chord'") if embed["chord"] else None
        except CanvasError:
            chord = None
        group_id = message.group or (chord["options"].get("group_id") if chord else None)
        if chord is not None and group_id:
            readable = Embed([], [], [], chord, group_id)
            await self._chord_part(message, readable, states.FAILURE, record)
        return ids

    # -- after the task ----------------------------------------------------------------------

    async def succeeded(self, message: TaskMessage, embed: Embed, value: Any) -> list[Any]:
        """Publish the callbacks and the chain's next step (before SUCCESS is stored); the
        results published, as the record's ``children``. Raises
        :class:`~celeriac.errors.CanvasError` for a signature that cannot be applied."""
        root_id = message.root_id or message.id
        expansions: list[canvas.Expansion] = []
        if embed.callbacks:
            expansions += canvas.apply_callbacks(
                embed.callbacks,
                value,
                parent_id=message.id,
                root_id=root_id,
            )
        if embed.chain:
            expansions.append(
                canvas.apply(
                    embed.chain[-1],
                    (value,),
                    chain=embed.chain[:-1],
                    parent_id=message.id,
                    root_id=root_id,
                )
            )
        for expansion in expansions:
            await publish(self.app, expansion, conn=self.conn, from_wire=True)
        return [canvas.result_tuple(expansion.result) for expansion in expansions]

    async def stored_success(self, message: TaskMessage, embed: Embed, value: Any) -> None:
        """After SUCCESS is stored: the chord part (and the body, if it completes the chord)."""
        if embed.chord is not None:
            await self._chord_part(message, embed, states.SUCCESS, value)

    async def failed(
        self,
        message: TaskMessage,
        embed: Embed,
        request: Request,
        exc: BaseException,
        tb: str | None,
    ) -> None:
        """After a final FAILURE is stored: the chord part, the chain's later ids, then the
        error callbacks."""
        record = exception_to_dict(exc)
        if embed.chord is not None:
            await self._chord_part(message, embed, states.FAILURE, record)
        await self.fail_chain(embed.chain, record, tb)
        if embed.errbacks:
            await self.call_errbacks(embed.errbacks, request, exc, tb)

    async def rejected(self, message: TaskMessage, embed: Embed, record: Any) -> None:
        """A task not registered here (dead-lettered with a FAILURE): its chain's later ids
        and its chord part fail the same way; its errbacks are not called, as Celery's
        worker calls none for an unknown task."""
        if embed.chord is not None:
            await self._chord_part(message, embed, states.FAILURE, record)
        await self.fail_chain(embed.chain, record, None)

    async def revoked(self, message: TaskMessage, embed: Embed, record: Any) -> None:
        """A task that expired before it ran: its chord part is REVOKED (Celery's
        ``mark_as_revoked``: the chain after it is left as it is)."""
        if embed.chord is not None:
            await self._chord_part(message, embed, states.REVOKED, record)

    # -- chains ------------------------------------------------------------------------------

    async def fail_chain(self, chain: Sequence[Signature], record: Any, tb: str | None) -> None:
        """Celery's ``_fail_chain``: store the FAILURE ``record`` under the id of every step
        of ``chain`` (and of whatever runs inside one: a chord's body, a group's members),
        and return the chord part of each that is a chord header task."""
        for index, sig in enumerate(chain):
            try:  # the steps after the next one were not checked (see Embed.chain)
                checked = canvas.check(sig, f"embed 'chain'[{index}]")
            except CanvasError as exc:
                logger.error("cannot fail a later step of a chain: %s", exc)
                continue
            await self._fail_signature(checked, record, tb)

    async def _fail_signature(self, sig: Signature, record: Any, tb: str | None) -> None:
        subtask_type = sig["subtask_type"]
        kwargs, options = sig["kwargs"], sig["options"]
        if subtask_type in ("chain", "group"):
            for task in kwargs["tasks"]:
                await self._fail_signature(task, record, tb)
            return
        if subtask_type == "chord":
            header = kwargs["header"]
            for member in header if isinstance(header, list) else [header]:
                await self._fail_signature(member, record, tb)
            await self._fail_signature(kwargs["body"], record, tb)
            return
        task_id = options.get("task_id")
        if not task_id:
            return  # never frozen: nobody holds its id
        await self._store(
            task_id,
            states.FAILURE,
            record,
            tb,
            parent_id=options.get("parent_id"),
            group_id=options.get("group_id"),
            reply_to=options.get("reply_to"),
        )
        await self.fail_chain(options.get("chain") or [], record, tb)
        chord, group_id = options.get("chord"), options.get("group_id")
        if chord is not None and group_id:
            part = ChordPart(task_id, options.get("group_index"), states.FAILURE, record)
            await self.chord_part(group_id, part, chord, parent_id=task_id, root_id=None)

    # -- chords ------------------------------------------------------------------------------

    async def _chord_part(self, message: TaskMessage, embed: Embed, state: str, value: Any) -> None:
        assert embed.chord is not None and embed.group_id is not None
        part = ChordPart(message.id, message.group_index, state, value)
        await self.chord_part(
            embed.group_id, part, embed.chord, parent_id=message.id, root_id=message.root_id
        )

    async def chord_part(
        self,
        group_id: str,
        part: ChordPart,
        body: Signature,
        *,
        parent_id: str,
        root_id: str | None,
    ) -> None:
        """Record a header task's outcome; the caller whose part completes the chord
        publishes its body (or fails it) and tells the store the chord is done."""
        if not self.backend.joins_chords:
            await self._no_join(group_id, body)
            return
        parts = await self.backend.chord_part(group_id, part, expires=self.app.conf.result_expires)
        if parts is None:
            return
        await self.finish_chord(group_id, body, parts, parent_id=parent_id, root_id=root_id)
        await self.backend.chord_done(group_id)

    async def finish_chord(
        self,
        group_id: str,
        body: Signature,
        parts: Sequence[ChordPart],
        *,
        parent_id: str,
        root_id: str | None,
    ) -> None:
        """Every header task of the chord ended (``parts`` in ``group_index`` order): publish
        the body with their results, or, if one failed, fail the body with a ChordError."""
        failed = next((p for p in parts if p.state in states.PROPAGATE_STATES), None)
        if failed is not None:
            reason = f"Dependency {failed.task_id} raised {_exception_repr(failed.value)}"
            logger.error(
                "chord %s: %s; its body %s[%s] does not run",
                group_id,
                reason,
                body["task"],
                body["options"].get("task_id"),
            )
            await self.fail_body(body, ChordError(reason), parent_id=parent_id, root_id=root_id)
            return
        values = [p.value for p in parts]
        try:
            expansion = canvas.apply(body, (values,), parent_id=parent_id, root_id=root_id)
            await publish(self.app, expansion, conn=self.conn, from_wire=True)
        except (CanvasError, ChordsNotSupported) as exc:
            logger.error("chord %s: its body cannot be applied: %s", group_id, exc)
            error = ChordError(f"Callback error: {exc!r}")
            await self.fail_body(body, error, parent_id=parent_id, root_id=root_id)

    async def fail_body(
        self, body: Signature, exc: ChordError, *, parent_id: str | None, root_id: str | None
    ) -> None:
        """Celery's ``chord_error_from_stack``: the body's id (a chain body: each of its
        ids), and the chain that follows it, fail with ``exc``; its error callbacks get a
        request made from the body."""
        record = exception_to_dict(exc)
        await self._fail_signature(body, record, None)
        await self.fail_chain(body["options"].get("chain") or [], record, None)
        errbacks = body["options"].get("link_error") or []
        if body["subtask_type"] == "chain" and not errbacks:
            tasks = body["kwargs"]["tasks"]
            errbacks = (tasks[0]["options"].get("link_error") or []) if tasks else []
        if errbacks:
            request = Request(
                id=body["options"].get("task_id") or "",
                task=body["task"],
                args=list(body["args"]),
                kwargs=dict(body["kwargs"]),
                root_id=root_id,
                parent_id=parent_id,
                group=body["options"].get("group_id"),
            )
            await self.call_errbacks(errbacks, request, exc, None)

    async def _no_join(self, group_id: str, body: Signature) -> None:
        error = ChordsNotSupported(
            f"the result store {self.backend.describe()} cannot join chords: the body of chord"
            f" {group_id} never runs; use a Redis or SQLite result backend for chords"
        )
        logger.error("chord %s: %s", group_id, error)
        await self._fail_signature(body, exception_to_dict(error), None)

    # -- error callbacks ---------------------------------------------------------------------

    async def call_errbacks(
        self,
        errbacks: Sequence[Signature],
        request: Request,
        exc: BaseException,
        tb: str | None,
    ) -> None:
        """Celery's ``_call_task_errbacks``: new-style errbacks are called here, the others
        published as one group called with the failed task's id."""
        published: list[Signature] = []
        for errback in errbacks:
            task = self.app.tasks.get(errback["task"])
            if task is None or not _takes_request(task, errback):
                published.append(errback)
                continue
            args = list(errback["args"])
            if not errback["immutable"]:
                args = [request, exc, tb, *args]
            try:
                await self._call(task, args, dict(errback["kwargs"]))
            except Exception as error:
                logger.error(
                    "error callback %s of task %s[%s] failed: %s: %s",
                    task.name,
                    request.task,
                    request.id,
                    type(error).__name__,
                    error,
                    exc_info=error,
                )
        if published:
            expansion = canvas.apply_errbacks(
                published, request.id, root_id=request.root_id or request.id
            )
            await publish(self.app, expansion, conn=self.conn, from_wire=True)

    async def _call(self, task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run a task's function here, as the worker runs tasks: ``async def`` on the loop,
        a plain function in the executor."""
        if task.is_async:
            return await limits.run_async(task.run(*args, **kwargs), None, None)
        if self.executor is None:
            return await asyncio.to_thread(task.run, *args, **kwargs)
        return await limits.run_sync(lambda: task.run(*args, **kwargs), self.executor, None, None)

    # -- storing -----------------------------------------------------------------------------

    async def _store(
        self,
        task_id: str,
        state: str,
        result: Any,
        tb: str | None,
        *,
        parent_id: str | None = None,
        group_id: str | None = None,
        reply_to: str | None = None,
    ) -> None:
        await self.app.store_state(
            task_id,
            state,
            result,
            traceback=tb,
            parent_id=parent_id,
            group_id=group_id,
            reply_to=reply_to,
            backend=self.backend,
        )


def _takes_request(task: Task[Any, Any], errback: Signature) -> bool:
    """Whether an errback is new-style: its function takes more than one positional
    parameter besides those its signature's arguments fill."""
    count = 0
    for parameter in task.call_signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            count += 1
    return count - len(errback["args"]) > 1


def _exception_repr(record: Any) -> str:
    """A stored exception as Python shows it (``ValueError('kaboom')``), for Celery's
    ``Dependency <id> raised <exc>``."""
    if isinstance(record, dict) and "exc_type" in record:
        args = record.get("exc_message")
        args = args if isinstance(args, list) else [args]
        return f"{record['exc_type']}({', '.join(repr(arg) for arg in args)})"
    return repr(record)


def _frozen_ids(values: Sequence[Any]) -> Iterator[str]:
    """Every ``options.task_id`` found in what may be (malformed) signature dicts."""
    pending = list(values)
    while pending:
        item = pending.pop()
        if isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, dict):
            options = item.get("options")
            if isinstance(options, dict):
                task_id = options.get("task_id")
                if isinstance(task_id, str) and task_id and item.get("subtask_type") is None:
                    yield task_id
                pending.extend(options.get(key) for key in ("chain", "chord"))
            kwargs = item.get("kwargs")
            if isinstance(kwargs, dict) and item.get("subtask_type") is not None:
                pending.extend(kwargs.get(key) for key in ("tasks", "header", "body"))
