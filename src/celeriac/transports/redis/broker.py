"""``redis://`` and ``rediss://``: queues in kombu's Redis layout, shared with real Celery.

Messages, priority lists, the ``unacked`` hash and ``unacked_index`` sorted set are exactly
kombu's (see :mod:`celeriac.transports.redis.kombu`), so Celery producers and workers can use
the same queues. What celeriac does differently, and why:

* **Claims are atomic and batched.** One Lua script (``lua/claim.lua``) pops up to a prefetch
  window across the queue's lists and records every message in ``unacked`` in the same step.
  The consumer blocks in BRPOP only when every list is empty; the message it pops is recorded
  in ``unacked`` by one script call (which also claims whatever came meanwhile), written to
  Redis before the message is handed out, so a task never starts before its record is on its
  way. Its reply is not waited for: Redis runs one connection's commands in order, so the
  message's ack comes after it.
* **Holders stay fresh.** Held messages have their ``unacked_index`` score refreshed every
  quarter of the ``visibility_timeout``, so a long task is never restored (and run twice)
  while its worker lives. A worker that dies stops refreshing and its messages are restored
  after the timeout, by any celeriac or Celery worker.
* **ETAs are not held.** A message whose ETA is in the future is parked (``lua/defer.lua``):
  kept in ``unacked`` but scored ``eta - visibility_timeout``, so restorers put it back on its
  list at its ETA, exactly once, whoever restores it. Celery holds such messages in worker
  memory instead, which runs them twice when the ETA is beyond the visibility timeout.
* **Sweeps are frequent and cheap.** Every consumer looks for due entries at most
  ``restore_interval`` seconds apart (sooner when the next one is due sooner), and restores
  each with one script (``lua/settle.lua``) that acts only if the entry is due still, so
  racing sweepers never duplicate a message, nor lose one that a worker claimed again, under
  the same delivery tag, between a sweep's read and its restore.
* **Outages are ridden out.** Consumers, acks and sweeps retry with backoff (doubling up
  to 5 s) until Redis is back, and the outage is logged once when it starts and once when
  it ends; a consumer never stops silently.
* **Poison is data, never a crash.** Whatever a list holds (bytes that are not UTF-8 or not
  JSON, wrong types, kombu markers that do not decode, a delivery tag that is not text) is
  read by one total function, :func:`kombu.decode`, on both ways in (a claim and the
  blocking pop); what it refuses goes to the ``celeriac.dead`` list with the reason, and the
  consumer goes on. Sweeps move ``unacked`` entries they cannot restore there too.

Bytes that are not UTF-8. Redis hands out bytes; tags, fields and keys are held as ``str``
decoded with ``surrogateescape`` and sent back by ``_resp`` as the very same bytes, so a
message held under a tag that is not UTF-8 can still be acked, restored or dead-lettered.
A dead-letter record is a JSON object ``{"queue", "reason", "died_at", "envelope"}`` whose
``envelope`` string holds the message's bytes exactly: ``claim.lua`` (cjson) writes bytes
that are not UTF-8 raw inside the string, Python writes them as ``\\udcXX`` escapes (the
surrogates of ``surrogateescape``, so its records are plain ASCII JSON). Either way a reader
recovers the bytes one way: decode the record with ``surrogateescape``, parse it, and encode
``envelope`` back with ``surrogateescape`` (:func:`_dead_letter` does so).

Publishing with an ETA pushes the message at once, as Celery does: the ETA travels in its
headers and the worker that receives it early parks it (``hides_eta`` is False).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celeriac.errors import BrokerError, BrokerUnreachable
from celeriac.ids import new_ids
from celeriac.protocol.envelope import Envelope
from celeriac.protocol.serialization import json_value
from celeriac.transports.background import Background
from celeriac.transports.broker import (
    Broker,
    DeadLetter,
    Delivery,
    ExchangeKind,
    PrefetchWindow,
    PrefetchWindows,
    PublishRequest,
    Subscription,
    check_consume,
    now,
)
from celeriac.transports.options import Option
from celeriac.transports.redis import direct, fanout, kombu
from celeriac.transports.redis.client import Client, Connection, Pipeline, ReplyError, Script
from celeriac.transports.redis.connection import (
    UNREACHABLE,
    Coalescer,
    Outage,
    check_options,
    client_from_url,
    client_settings,
    refusal,
    until_done,
)
from celeriac.transports.urls import redacted

log = logging.getLogger(__name__)

DEAD_LETTERS = "celeriac.dead"
DEFERRED_PREFIX = "celeriac.deferred."
#: publish_once's keys: ``<prefix>celeriac.once.<key>``.
ONCE_PREFIX = "celeriac.once."
_OPTIONS = {
    "visibility_timeout": Option(float, 3600.0),
    "global_keyprefix": Option(str, ""),
    "restore_interval": Option(float, 1.0),
    "brpop_timeout": Option(float, 1.0),
}
_EPSILON = 0.002  # wake just after a due time, so the sweep finds the entry due
_SWEEP_BATCH = 100
_CLOSE_GRACE = 5.0  # beyond brpop_timeout, for a pop to end once woken
#: What the client raises; a public method raises celeriac's errors instead (``_failed``).
_DRIVER_ERRORS: tuple[type[Exception], ...] = (ReplyError, *UNREACHABLE)


def _script(name: str) -> str:
    # A plain path, not importlib.resources: that one imports tempfile, shutil, bz2 and lzma.
    return (Path(__file__).parent / "lua" / name).read_text()


@dataclass(slots=True)
class _Held:
    """A message this broker holds, as it came off its list. It is decoded only when handed
    to the consumer (a prefetch window of decoded envelopes costs several times the bytes),
    and again, rarely, to be restored unchanged but for its redelivered flags."""

    tag: str
    payload: bytes
    queue: str
    message: kombu.RedisMessage | None = None  # decoded already (BRPOP reads the tag)
    recording: asyncio.Task[Any] | None = None  # a BRPOP'd message's claim (see _record)

    def raw(self) -> dict[str, Any]:
        """The envelope as a fresh dict (restoring it edits it)."""
        value: dict[str, Any] = json_value(self.payload)
        return value


class RedisBroker(Broker):
    """kombu-compatible queues on one Redis database.

    Options (``broker_transport_options``): ``visibility_timeout`` (3600 s, kombu's: a held
    message whose holder stopped refreshing for that long is restored), ``global_keyprefix``
    (prefix of every key, as in kombu), ``restore_interval`` (1.0 s, longest gap between
    sweeps for due messages), ``brpop_timeout`` (1.0 s), and the client options
    ``socket_timeout``, ``socket_connect_timeout`` and ``health_check_interval`` (see
    :class:`celeriac.transports.redis.client.Client`).
    """

    #: Messages published with an ETA are pushed at once (the worker parks them).
    hides_eta = False
    publishes_once = True  # the key and the push in one script

    def __init__(self, url: str, **settings: Any) -> None:  # settings: see Broker
        super().__init__(url, **settings)
        opts = check_options(self.options, _OPTIONS, "broker_transport_options")
        self.visibility_timeout = float(opts["visibility_timeout"])
        self.restore_interval = float(opts["restore_interval"])
        self.brpop_timeout = float(opts["brpop_timeout"])
        self.prefix = str(opts["global_keyprefix"])
        self._client_options = opts
        self._client: Client | None = None
        self._scripts: dict[str, Script] = {}
        self._unacked = self.prefix + kombu.UNACKED
        self._index = self.prefix + kombu.UNACKED_INDEX
        self._dead = self.prefix + DEAD_LETTERS
        self._held: dict[str, _Held] = {}
        #: Tags settled here (acked, requeued, dead-lettered) whose write has not reached
        #: Redis yet (an outage holds it): still this broker's, refreshed and never
        #: restored by its own sweep, or a message already run would run again.
        self._settling: set[str] = set()
        self._claim_cache: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}
        self._windows = PrefetchWindows()
        self._bound: set[str] = set()
        self._blockers: set[_Blocker] = set()
        self._tasks = Background()
        self._maintenance: asyncio.Task[None] | None = None
        self._wake_sweep = asyncio.Event()
        self._next_due: float | None = None
        self._acks: Coalescer[str] = Coalescer(self._flush_acks)
        self._outage = Outage(url, "broker")
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        if self._client is None:
            raise BrokerError(f"the broker {redacted(self.url)} is not connected")
        return self._client

    @property
    def client_settings(self) -> dict[str, float]:
        """What its client is made with beyond the URL: a result store compares them before
        it borrows the client (``RedisBackend.share_connection``)."""
        return client_settings(self._client_options)

    async def connect(self) -> None:
        self._client = client_from_url(self.url, self._client_options)
        for name in ("claim", "settle", "defer", "purge", "publish_once"):
            self._scripts[name] = Script(_script(f"{name}.lua"))

    async def close(self) -> None:
        """Stop consuming, flush acks, put every held message back on its list."""
        if self._closed:
            return
        await self.close_subscriptions()
        self._closed = True
        self._windows.wake_all()
        self._wake_sweep.set()
        if self._maintenance is not None:
            self._maintenance.cancel()
        for blocker in list(self._blockers):
            await blocker.unblock()
        await self._tasks.settle()
        await self._acks.close()
        held = list(self._held.values())
        if held and self._client is not None:
            log.info("restoring %d unacknowledged message(s)", len(held))
            try:
                await self._restore_held(held, redelivered=True)
            except UNREACHABLE:
                pass  # they are in unacked: restored once the visibility timeout passes
            except ReplyError as exc:
                log.error(
                    "%s; the messages stay in unacked, restored once the visibility timeout passes",
                    refusal(self.url, exc, "the restore of held messages", "broker_url"),
                )
        self._held.clear()
        if self._client is not None:
            await self._client.aclose()

    async def ping(self) -> None:
        try:
            await self.client.execute("PING")
        except UNREACHABLE as exc:
            raise self._unreachable(exc, doing="") from exc
        except ReplyError as exc:
            raise self._refused(exc, "a PING") from exc

    def _deferred_key(self, queue: str) -> str:
        return f"{self.prefix}{DEFERRED_PREFIX}{queue}"

    # -- producing -------------------------------------------------------------------------

    async def _publish(self, requests: Sequence[PublishRequest]) -> None:
        try:
            if len(requests) == 1 and requests[0].queue in self._bound:
                # The common case, without a pipeline (its set-up costs a third of an LPUSH).
                request = requests[0]
                payload = kombu.encode(request.envelope, request.queue, request.priority)
                key = self.prefix + kombu.list_key(request.queue, request.priority)
                await self.client.execute("LPUSH", key, payload)
                return
            pipe = self.client.pipeline()
            bound = self._bind(pipe, {request.queue for request in requests})
            by_list: dict[tuple[str, int], list[Envelope]] = {}
            for request in requests:
                by_list.setdefault((request.queue, request.priority), []).append(request.envelope)
            for (queue, priority), envelopes in by_list.items():
                # One LPUSH of many values: popped from the right, they leave in this order.
                tags = new_ids(len(envelopes))
                payloads = kombu.encode_many(envelopes, queue, priority, tags)
                pipe.add("LPUSH", self.prefix + kombu.list_key(queue, priority), *payloads)
            await pipe.execute()
            self._bound.update(bound)
        except UNREACHABLE as exc:
            raise self._unreachable(exc) from exc
        except ReplyError as exc:
            raise self._refused(exc, "a message") from exc

    async def _publish_once(self, request: PublishRequest, key: str, sequence: int) -> bool:
        payload = kombu.encode(request.envelope, request.queue, request.priority)
        keys = [
            f"{self.prefix}{ONCE_PREFIX}{key}",
            self.prefix + kombu.list_key(request.queue, request.priority),
        ]
        try:
            pipe = self.client.pipeline()
            bound = self._bind(pipe, [request.queue])
            pipe.run_script(self._scripts["publish_once"], keys, [sequence, payload])
            replies = await pipe.execute()
            self._bound.update(bound)
        except UNREACHABLE as exc:
            raise self._unreachable(exc) from exc
        except ReplyError as exc:
            raise self._refused(exc, "a message") from exc
        return bool(replies[-1])

    def priority_to_wire(self, priority: int) -> int:
        return kombu.celery_priority(priority)

    def priority_from_wire(self, priority: int) -> int:
        return kombu.celery_priority(priority)  # 9 - p: its own inverse

    def publish_now(
        self, queue: str, envelope: Envelope, *, priority: int = 0, eta: float | None = None
    ) -> asyncio.Future[None] | None:
        super().publish_now(queue, envelope, priority=priority, eta=eta)
        if queue not in self._bound or self._client is None:
            return None
        payload = kombu.encode(envelope, queue, priority)
        reply = self._client.submit("LPUSH", self.prefix + kombu.list_key(queue, priority), payload)
        if reply is None:
            return None
        done = asyncio.get_running_loop().create_future()

        def settle(reply: asyncio.Future[Any]) -> None:
            if done.done():
                return
            if reply.cancelled():
                done.cancel()
            elif (error := reply.exception()) is not None:
                done.set_exception(self._failed(error, "publish"))
            else:
                done.set_result(None)

        reply.add_done_callback(settle)
        return done

    # -- broadcasting ----------------------------------------------------------------------

    async def _broadcast(
        self, exchange: str, envelope: Envelope, routing_key: str, kind: ExchangeKind
    ) -> None:
        """PUBLISH on kombu's fanout channel (see ``fanout.py``), the same for ``topic``
        (Celery's events exchange is a fanout with patterns on Redis); a ``direct`` message
        goes onto the lists of the queues bound with its routing key (see ``direct.py``)."""
        try:
            if kind == "direct":
                await direct.publish(self.client, self.prefix, exchange, envelope, routing_key)
                return
            name = fanout.channel(self.prefix, self.client.address.db, exchange, routing_key)
            await self.client.execute(
                "PUBLISH", name, fanout.encode(envelope, exchange, routing_key)
            )
        except UNREACHABLE as exc:
            raise self._unreachable(exc, doing="cannot broadcast: ") from exc
        except ReplyError as exc:
            raise self._refused(exc, "a broadcast") from exc

    def _subscribe(self, exchange: str, routing_key: str, kind: ExchangeKind) -> Subscription:
        if kind == "direct":
            return direct.DirectSubscription(self.client, self.prefix, exchange, routing_key, kind)
        return fanout.RedisSubscription(self.client, self.prefix, exchange, routing_key, kind)

    def _unreachable(
        self, exc: BaseException, doing: str = "cannot publish: "
    ) -> BrokerUnreachable:
        error = BrokerUnreachable(
            f"{doing}Redis at {redacted(self.url)} is unreachable ({exc}); check"
            " that it runs and that broker_url points at it"
        )
        error.__cause__ = exc
        return error

    def _refused(self, exc: ReplyError, doing: str) -> BrokerError:
        """An error reply as a BrokerError: waiting will not help, the message says what will."""
        error = BrokerError(refusal(self.url, exc, doing, "broker_url"))
        error.__cause__ = exc
        return error

    def _failed(self, exc: BaseException, doing: str) -> Exception:
        """What a public method raises for the client's error ``exc`` (one of
        ``_DRIVER_ERRORS``; anything else is returned as it is)."""
        if isinstance(exc, UNREACHABLE):
            return self._unreachable(exc, doing=f"cannot {doing}: ")
        if isinstance(exc, ReplyError):
            return self._refused(exc, f"to {doing}")
        return exc if isinstance(exc, Exception) else RuntimeError(exc)

    def _bind(self, pipe: Pipeline, queues: Iterable[str]) -> set[str]:
        """Declare queues the way Celery does, once per broker (their ``_kombu.binding``);
        returns those added to ``pipe``, to be marked bound once it ran."""
        new = {queue for queue in queues if queue not in self._bound}
        for queue in new:
            member = kombu.binding_member(queue)
            pipe.add("SADD", f"{self.prefix}{kombu.BINDING_PREFIX}{queue}", member)
            pipe.add("SADD", f"{self.prefix}_kombu.binding_permanent.{queue}", member)
        return new

    # -- consuming -------------------------------------------------------------------------

    async def consume(
        self, queues: Sequence[str], *, prefetch: int
    ) -> AsyncGenerator[Delivery, None]:
        check_consume(queues, prefetch)
        if self._closed:
            raise BrokerError(f"the broker {redacted(self.url)} is closed")
        names = list(dict.fromkeys(queues))
        # A consumer's Redis calls run in tasks of their own behind asyncio.shield: cancelling
        # the consumer must not cut a claim short, or what it claimed would wait out the
        # visibility timeout (see _shielded).
        await self._start(names)
        window = PrefetchWindow(prefetch)
        self._windows.open.add(window)
        blocker = _Blocker(self)
        self._blockers.add(blocker)
        buffered: deque[_Held] = deque()
        rotation = 0
        drained = False  # the last claim found every list empty: BRPOP next, no claim
        recording: asyncio.Task[list[_Held]] | None = None  # a popped message's claim
        try:
            while not self._closed:
                if buffered:
                    delivery = await self._open(buffered.popleft())
                    if delivery is not None:
                        yield delivery
                    continue
                window.signal.clear()
                order = names[rotation:] + names[:rotation]  # kombu's round robin
                try:
                    if window.room <= 0:
                        await window.signal.wait()
                        continue
                    rotation = (rotation + 1) % len(names)
                    claimed = []
                    if recording is not None:
                        # What the popped message's claim took besides: the next ones out.
                        claimed = await self._shielded(recording)
                        recording = None
                        # It took everything there was: another claim now would only find
                        # empty lists again (BRPOP returns at once if one filled).
                        drained = not claimed
                    elif not drained:
                        claimed = await self._shielded(self._claim(order, window.room))
                    if not claimed and not self._closed:
                        claimed = await self._shielded(self._pop(blocker, order, window.room - 1))
                        if claimed:
                            recording = claimed[0].recording
                except UNREACHABLE as exc:  # the claim's or the blocking pop's
                    await self._outage.wait(exc)
                    continue
                self._outage.over()  # Redis answered (a BRPOP timing out is an answer too)
                self._windows.track(window, (held.tag for held in claimed))
                buffered.extend(claimed)
        except _DRIVER_ERRORS as exc:  # an error reply (a key of another type, say)
            raise self._failed(exc, f"consume from {', '.join(names)}") from exc
        finally:
            self._blockers.discard(blocker)
            self._windows.open.discard(window)
            await blocker.close()
            await self._give_back(buffered)

    async def _start(self, names: list[str]) -> None:
        try:
            await asyncio.shield(self._tasks.spawn(self._start_consuming(names)))
        except _DRIVER_ERRORS as exc:  # an error reply; unreachable only once closing
            raise self._failed(exc, f"consume from {', '.join(names)}") from exc

    async def _start_consuming(self, queues: list[str]) -> None:
        pipe = self.client.pipeline()
        bound = self._bind(pipe, queues)
        await until_done(pipe.execute, self._outage, give_up=lambda: self._closed)
        self._bound.update(bound)
        if self._maintenance is None:
            self._maintenance = self._tasks.spawn(self._maintain())

    async def _shielded(
        self, job: Coroutine[Any, Any, list[_Held]] | asyncio.Task[list[_Held]]
    ) -> list[_Held]:
        """Run a claim so that, if the consumer is cancelled meanwhile, what it claimed goes
        straight back to its list instead of waiting out the visibility timeout."""
        task = job if isinstance(job, asyncio.Task) else self._tasks.spawn(job)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._give_back_claim)
            raise  # a BRPOP in flight is woken by the consumer's blocker.close()

    def _give_back_claim(self, task: asyncio.Task[list[_Held]]) -> None:
        if task.cancelled() or task.exception() is not None or self._closed:
            return  # closed: what it claimed is still in _held, which close() restores
        held = [h for h in task.result() if self._held.pop(h.tag, None) is not None]
        if held:
            self._tasks.spawn(self._restore_held(held, redelivered=False))
        for entry in held:  # a popped message: its claim may take more
            if entry.recording is not None:
                entry.recording.add_done_callback(self._give_back_claim)

    async def _pop(self, blocker: _Blocker, queues: list[str], more: int) -> list[_Held]:
        """BRPOP; a popped message comes back with its claim started (``_record``)."""
        popped = await blocker.pop(queues)
        if popped:
            self._record(popped[0], queues, more)
        return popped

    def _record(self, popped: _Held, queues: list[str], more: int) -> asyncio.Task[list[_Held]]:
        """Start recording a BRPOP'd message in ``unacked``, with a claim of up to ``more``
        messages that came meanwhile in the same script call; the task returns those.

        The script is sent before the popped message can reach a task: this task's first
        step is scheduled ahead of anything the consumer does with it, and writes the
        command then (see ``_resp``). Its reply is not waited for: Redis runs the commands
        of one connection in order, so the message's ack, which takes the same connection,
        comes after it (on a new connection, after a drop, the ack waits for the reply:
        ``_Held.recording``). A worker killed once the script is sent loses nothing.
        """
        task = self._tasks.spawn(
            until_done(
                lambda: self._claim(queues, max(0, more), popped),
                self._outage,
                give_up=lambda: self._closed,
            )
        )
        popped.recording = task
        return task

    async def _claim(
        self, queues: list[str], count: int, popped: _Held | None = None
    ) -> list[_Held]:
        """Claim up to ``count`` messages; also record ``popped`` in ``unacked`` if given."""
        keys, routing = self._claim_args(tuple(queues))
        hold: list[str | bytes] = ["", ""]
        if popped is not None:
            hold = [popped.tag, kombu.unacked_entry(popped.payload, popped.queue)]
        reply = await self.client.run_script(
            self._scripts["claim"], keys, [repr(now()), count, *hold, *routing]
        )
        buried = int(reply[0])
        if buried:
            log.error(
                "moved %d malformed message(s) (not JSON envelopes) from %s to the dead letters",
                buried,
                ", ".join(queues),
            )
        claimed = []
        for i in range(1, len(reply), 3):
            # A tag is any string the element held: kept as text that goes back byte for byte.
            held = _Held(
                _text(reply[i]), reply[i + 1], queues[(int(reply[i + 2]) - 1) % len(queues)]
            )
            self._held[held.tag] = held
            claimed.append(held)
        return claimed

    def _claim_args(self, queues: tuple[str, ...]) -> tuple[list[str], list[str]]:
        """``claim.lua``'s keys and routing keys for queues in this order (made once)."""
        known = self._claim_cache.get(queues)
        if known is None:
            lists = [self.prefix + key for key in kombu.consume_keys(list(queues))]
            keys = [self._unacked, self._index, self._dead, *lists]
            routing = [json.dumps(q) for q in queues] * len(kombu.PRIORITY_STEPS)
            known = self._claim_cache[queues] = (keys, routing)
        return known

    async def _open(self, held: _Held) -> Delivery | None:
        """A held message as a delivery; one that cannot be read goes to the dead letters."""
        try:
            message = held.message or kombu.decode(held.payload, held.tag)
            held.message = None  # kept in _held until settled: no need for a second copy
        except kombu.EnvelopeError as exc:
            self._windows.settle(held.tag)
            self._held.pop(held.tag, None)
            record = _malformed(held.queue, held.payload, exc)
            await self._settle(
                held.tag,
                held.queue,
                record,
                push="LPUSH",
                destination=self._dead,
                doing="dead-letter",
            )
            return None
        return Delivery(
            message.envelope, held.queue, held.tag, message.redelivered, message.priority
        )

    async def _give_back(self, buffered: Iterable[_Held]) -> None:
        held = []
        for entry in buffered:
            if self._windows.settle(entry.tag) and self._held.pop(entry.tag, None) is not None:
                held.append(entry)
        if held and not self._closed:
            await self._restore_held(held, redelivered=False)

    async def _restore_held(self, held: list[_Held], *, redelivered: bool) -> None:
        for entry in held:
            await _recorded(entry)
        pipe = self.client.pipeline()
        for entry in reversed(held):  # RPUSH: the first one given back is the next out
            try:
                raw = entry.raw()
                payload = kombu.redelivered(raw, entry.tag) if redelivered else entry.payload
                key = self.prefix + kombu.list_key(entry.queue, kombu.priority_of(raw))
            except Exception:  # claimed, never read: back as it came, its reader dead-letters it
                payload = entry.payload
                key = self.prefix + kombu.list_key(entry.queue, kombu.priority_of({}))
            pipe.run_script(
                self._scripts["settle"],
                [self._unacked, self._index, key, self._deferred_key(entry.queue)],
                [entry.tag, payload, "+inf", "RPUSH"],
            )
        await pipe.execute()

    # -- settling --------------------------------------------------------------------------

    def _forget(self, delivery: Delivery) -> bool:
        return self._windows.settle(delivery.tag)

    async def ack(self, delivery: Delivery) -> None:
        """Acks are pipelined: those made while one batch is in flight form the next."""
        if self._forget(delivery):
            self._settling.add(delivery.tag)
            try:
                await _recorded(self._held.pop(delivery.tag, None))
                await self._acks.add(delivery.tag)
            except _DRIVER_ERRORS as exc:  # an error reply; unreachable only once closing
                raise self._failed(exc, "ack a message") from exc
            finally:
                self._settling.discard(delivery.tag)

    async def _flush_acks(self, tags: list[str]) -> None:
        async def flush() -> None:
            pipe = self.client.pipeline()
            pipe.add("ZREM", self._index, *tags)
            pipe.add("HDEL", self._unacked, *tags)
            await pipe.execute()

        await until_done(flush, self._outage, give_up=lambda: self._closed)

    async def requeue(self, delivery: Delivery) -> None:
        if self._forget(delivery):
            entry = self._held.pop(delivery.tag)
            await _recorded(entry)
            payload = kombu.redelivered(entry.raw(), delivery.tag)
            key = self.prefix + kombu.list_key(delivery.queue, delivery.priority)
            await self._settle(
                delivery.tag,
                delivery.queue,
                payload,
                push="RPUSH",
                destination=key,
                doing="requeue",
            )

    async def defer(self, delivery: Delivery, eta: float) -> None:
        if not self._forget(delivery):
            return
        await _recorded(self._held.pop(delivery.tag, None))
        score = eta - self.visibility_timeout

        async def park() -> Any:
            return await self.client.run_script(
                self._scripts["defer"],
                [self._unacked, self._index, self._deferred_key(delivery.queue)],
                [delivery.tag, repr(score)],
            )

        try:
            await until_done(park, self._outage, give_up=lambda: self._closed)
        except _DRIVER_ERRORS as exc:  # an error reply; unreachable only once closing
            raise self._failed(exc, "defer a message") from exc
        if self._next_due is None or eta < self._next_due:
            self._next_due = eta
            self._wake_sweep.set()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if not self._forget(delivery):
            return
        entry = self._held.pop(delivery.tag)
        await _recorded(entry)
        record = _dead_record(delivery.queue, reason, entry.payload)
        await self._settle(
            delivery.tag,
            delivery.queue,
            record,
            push="LPUSH",
            destination=self._dead,
            doing="dead-letter",
        )

    async def _settle(
        self, tag: str, queue: str, value: str, *, push: str, destination: str, doing: str
    ) -> None:
        async def settle() -> Any:
            return await self.client.run_script(
                self._scripts["settle"],
                [self._unacked, self._index, destination, self._deferred_key(queue)],
                [tag, value, "+inf", push],
            )

        self._settling.add(tag)
        try:
            await until_done(settle, self._outage, give_up=lambda: self._closed)
        except _DRIVER_ERRORS as exc:  # an error reply; unreachable only once closing
            raise self._failed(exc, f"{doing} a message") from exc
        finally:
            self._settling.discard(tag)

    # -- holders and sweeps ----------------------------------------------------------------

    async def _maintain(self) -> None:
        """Refresh what this broker holds and restore what is due, until close()."""
        refresh_every = self.visibility_timeout / 4
        refreshed = now()
        while not self._closed:
            self._wake_sweep.clear()  # a defer from here on wakes the wait below
            self._next_due = None
            try:
                if now() - refreshed >= refresh_every:
                    await self._refresh()
                    refreshed = now()
                next_due = await self._sweep()
            except UNREACHABLE as exc:
                await self._outage.wait(exc)
                continue
            except Exception:  # a worker must never stop restoring: log and go on
                log.exception("sweep of %s failed; retrying", redacted(self.url))
                next_due = None
            self._outage.over()
            timeout = self.restore_interval
            due = min(d for d in (next_due, self._next_due, refreshed + refresh_every) if d)
            timeout = max(0.0, min(timeout, due - now() + _EPSILON))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_sweep.wait(), timeout)

    async def _refresh(self) -> None:
        tags = [*self._held, *self._settling]
        if not tags:
            return
        at = now()
        pipe = self.client.pipeline()
        for start in range(0, len(tags), 1000):
            scored = [arg for tag in tags[start : start + 1000] for arg in (at, tag)]
            pipe.add("ZADD", self._index, "XX", *scored)
        await pipe.execute()

    async def _sweep(self) -> float | None:
        """Restore every entry whose holder went silent or whose ETA came; returns when the
        next entry is due (its score + the visibility timeout), if any."""
        while True:
            cutoff = now() - self.visibility_timeout
            due = await self.client.execute(
                "ZRANGEBYSCORE", self._index, "-inf", repr(cutoff), "LIMIT", 0, _SWEEP_BATCH
            )
            if due:
                await self._restore_due([_text(t) for t in due], cutoff)
            if len(due) < _SWEEP_BATCH:
                break
        first = await self.client.execute("ZRANGE", self._index, 0, 0, "WITHSCORES")
        return float(first[1]) + self.visibility_timeout if first else None

    async def _restore_due(self, tags: list[str], cutoff: float) -> None:
        """Restore the entries ``tags``, found due at ``cutoff``. Each restore (or removal of
        a stale index entry) is one ``settle.lua`` call that acts only if the entry is due
        still: by the time it runs, another sweep may have restored it and a worker claimed
        it again under the same tag, and what was read here no longer describes it."""
        values = await self.client.execute("HMGET", self._unacked, *tags)
        pipe = self.client.pipeline()
        due = repr(cutoff)
        # The keys of a call that pushes nothing, or pushes to the dead letters.
        no_queue = [self._unacked, self._index, self._dead, self._deferred_key("")]
        restores = []  # positions in the pipeline of the restores' replies
        for tag, value in zip(tags, values, strict=True):
            if value is None:  # acked or restored meanwhile; drop a stale index entry
                pipe.run_script(self._scripts["settle"], no_queue, [tag, "", due, "RPUSH"])
                continue
            if tag in self._held or tag in self._settling:
                # Ours, its refresh or settlement held up by an outage: not a dead holder's.
                pipe.add("ZADD", self._index, "XX", repr(now()), tag)
                continue
            try:
                raw, queue = _unacked_value(value)
                payload = kombu.redelivered(raw, tag)
                priority = kombu.priority_of(raw)
            except Exception as exc:  # anything a peer left there: never stop the sweep
                log.error(
                    "moved unacked entry %r to the dead letters: it cannot be restored (%s);"
                    " its bytes are kept in the record",
                    tag,
                    exc,
                )
                record = _dead_record("", f"unreadable unacked entry: {exc}", value)
                pipe.run_script(self._scripts["settle"], no_queue, [tag, record, due, "LPUSH"])
                continue
            restores.append(len(pipe))
            pipe.run_script(
                self._scripts["settle"],
                [
                    self._unacked,
                    self._index,
                    self.prefix + kombu.list_key(queue, priority),
                    self._deferred_key(queue),
                ],
                [tag, payload, due, "RPUSH"],
            )
        replies = await pipe.execute()
        restored = sum(1 for i in restores if replies[i] == 1)
        if restored:
            log.debug("restored %d due message(s)", restored)

    # -- administration --------------------------------------------------------------------

    async def purge(self, queue: str) -> int:
        keys = [self.prefix + k for k in kombu.consume_keys([queue])]
        try:
            deleted = await self.client.run_script(
                self._scripts["purge"],
                [self._unacked, self._index, self._deferred_key(queue), *keys],
                [],
            )
        except _DRIVER_ERRORS as exc:
            raise self._failed(exc, f"purge {queue}") from exc
        return int(deleted)

    async def queue_sizes(self, queues: Sequence[str] = ()) -> dict[str, int]:
        """Waiting messages (lists) plus held and parked ones (``unacked``) per queue.

        Known queues are those with a ``_kombu.binding`` (declared by a Celery or celeriac
        producer or worker), a held message, or named in ``queues``. This scans
        ``unacked``: an admin call.
        """
        try:
            return await self._queue_sizes(queues)
        except _DRIVER_ERRORS as exc:
            raise self._failed(exc, "count messages") from exc

    async def _queue_sizes(self, queues: Sequence[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        async for _, value in self.client.scan_hash(self._unacked):
            try:
                queue = _unacked_value(value)[1]
            except ValueError:
                continue
            counts[queue] = counts.get(queue, 0) + 1
        known = set(counts) | await self._bound_queues() | set(queues)
        pipe = self.client.pipeline()
        ordered = sorted(known)
        for queue in ordered:
            for key in kombu.consume_keys([queue]):
                pipe.add("LLEN", self.prefix + key)
        lengths = await pipe.execute()
        steps = len(kombu.PRIORITY_STEPS)
        for i, queue in enumerate(ordered):
            counts[queue] = counts.get(queue, 0) + sum(lengths[i * steps : (i + 1) * steps])
        return {queue: n for queue, n in counts.items() if n}

    async def _bound_queues(self) -> set[str]:
        queues: set[str] = set()
        pattern = f"{self.prefix}{kombu.BINDING_PREFIX}*"
        async for key in self.client.scan_keys(pattern):
            for member in await self.client.execute("SMEMBERS", key):
                parts = _text(member).split(kombu.SEPARATOR)
                if len(parts) == 3 and parts[2]:
                    queues.add(parts[2])
        return queues

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        try:
            records = await self.client.execute("LRANGE", self._dead, 0, limit - 1)
        except _DRIVER_ERRORS as exc:
            raise self._failed(exc, "read the dead letters") from exc
        return [_dead_letter(record) for record in records]

    async def dead_letter_count(self) -> int:
        try:
            return int(await self.client.execute("LLEN", self._dead))
        except _DRIVER_ERRORS as exc:
            raise self._failed(exc, "count the dead letters") from exc


class _Blocker:
    """One consumer's blocking pop, on a connection of its own so that close() can wake it
    with ``CLIENT UNBLOCK`` (a cancelled BRPOP could lose the message it just popped)."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self._connection: Connection | None = None
        self._client_id: int | None = None
        self._waiting = False
        self._popping: asyncio.Task[Any] | None = None

    async def pop(self, queues: list[str]) -> list[_Held]:
        """BRPOP one message and hold it (its claim is the caller's, see ``_record``); a
        message that cannot be read goes to the dead letters (it was never held).

        An unreachable Redis raises, for the consumer to wait the outage out: swallowed
        here, the consumer would take the empty answer for Redis answering, and log the
        outage over and reset its backoff after every failed attempt.
        """
        broker = self.broker
        self._popping = asyncio.current_task()
        keys = [broker.prefix + k for k in kombu.consume_keys(queues)]
        try:
            if self._connection is None or not self._connection.usable:
                self._client_id = None
                self._connection = await broker.client.connection()
                self._client_id = int(await self._connection.execute("CLIENT", "ID"))
            self._waiting = True
            try:
                popped = await self._connection.execute(
                    "BRPOP",
                    *keys,
                    broker.brpop_timeout,
                    timeout=broker.brpop_timeout + _CLOSE_GRACE,
                )
            finally:
                self._waiting = False
        except UNREACHABLE:
            self._drop()
            raise
        if popped is None:
            return []
        key, payload = _text(popped[0]), popped[1]
        queue = queues[keys.index(key) % len(queues)]
        try:
            message = kombu.decode(payload, "")
        except kombu.EnvelopeError as exc:
            record = _malformed(queue, payload, exc)
            await until_done(
                lambda: broker.client.execute("LPUSH", broker._dead, record),
                broker._outage,
                give_up=lambda: broker._closed,
            )
            return []
        tag = kombu.delivery_tag(message.raw)
        if tag is None or tag in broker._held:  # none, or another held message has it
            tag = f"celeriac-untagged-{id(payload):x}-{now()!r}"
        held = broker._held[tag] = _Held(tag, payload, queue, message)
        return [held]

    async def unblock(self) -> None:
        """Wake a BRPOP in flight, through another connection of the pool."""
        if self._waiting and self._client_id is not None:
            with contextlib.suppress(*UNREACHABLE):
                await self.broker.client.execute("CLIENT", "UNBLOCK", self._client_id)

    async def close(self) -> None:
        """Wake and wait for a pop in flight, then close the connection: closing it under a
        BRPOP could lose the message Redis just popped for it."""
        popping = self._popping
        if popping is not None and not popping.done():
            await self.unblock()
            await asyncio.wait([popping], timeout=self.broker.brpop_timeout + _CLOSE_GRACE)
        self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            self.broker.client.forget(self._connection)
            self._connection = None
            self._client_id = None


async def _recorded(entry: _Held | None) -> None:
    """Wait until a BRPOP'd message's claim has run, if it has not yet: settling it must come
    after (commands on one connection run in order, but the claim may be retried on another)."""
    recording = entry.recording if entry is not None else None
    if recording is not None and not recording.done():
        with contextlib.suppress(Exception):  # its own retries end only when closing
            await asyncio.shield(recording)


def _text(value: Any) -> str:
    """Text from Redis; bytes that are not UTF-8 become lone surrogates, which ``_resp``
    sends back as the same bytes (see the module docstring)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _routing_key(raw: dict[str, Any]) -> str:
    info = raw.get("properties", {}).get("delivery_info", {})
    key = info.get("routing_key") if isinstance(info, dict) else None
    return key if isinstance(key, str) else ""


def _unacked_value(value: bytes) -> tuple[dict[str, Any], str]:
    """``(envelope, queue)`` from an ``unacked`` hash value ``[envelope, exchange, key]``;
    ValueError for anything else (not UTF-8, not JSON, a type marker that does not decode)."""
    try:
        entry = json_value(value)
    except Exception as exc:  # any bytes a peer left there
        raise ValueError(f"cannot be decoded: {exc}") from None
    if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], dict)):
        raise ValueError("not [envelope, exchange, routing_key]")
    queue = entry[2] if isinstance(entry[2], str) and entry[2] else _routing_key(entry[0])
    return entry[0], queue


def _malformed(queue: str, payload: bytes, exc: kombu.EnvelopeError) -> str:
    """Log the one line for a message that cannot be read; its dead-letter record."""
    log.error(
        "moved a malformed message from %s to the dead letters: %s (its bytes are kept there)",
        queue,
        exc,
    )
    return _dead_record(queue, f"malformed message: {exc}", payload)


def _dead_record(queue: str, reason: str, payload: bytes) -> str:
    """A dead-letter record: JSON that keeps ``payload`` byte for byte (module docstring)."""
    envelope = payload.decode("utf-8", "surrogateescape")
    return json.dumps({"queue": queue, "reason": reason, "died_at": now(), "envelope": envelope})


def _dead_letter(record: bytes) -> DeadLetter:
    """A dead-letter record read back, whoever wrote it (Python, ``claim.lua``, a peer):
    never raises. A message that cannot be decoded comes back as its bytes, as the body."""
    try:
        data = json.loads(_text(record))
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):  # not a record at all: keep what is there, as the body
        return DeadLetter("", Envelope(record, "", ""), "not a dead-letter record", 0.0)
    payload = data.get("envelope", "")
    raw = _bytes(payload if isinstance(payload, str) else json.dumps(payload))
    try:
        envelope = kombu.decode(raw, "").envelope
    except kombu.EnvelopeError:
        envelope = Envelope(raw, "", "")
    queue, reason, died_at = data.get("queue"), data.get("reason"), data.get("died_at")
    return DeadLetter(
        queue if isinstance(queue, str) else "",
        envelope,
        reason if isinstance(reason, str) else repr(reason),
        _seconds(died_at),
    )


def _bytes(text: str) -> bytes:
    """The bytes a dead-letter record's text stands for (see the module docstring)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # an escaped surrogate that no bytes decode to: left escaped
        return text.encode("utf-8", "backslashreplace")


def _seconds(value: object) -> float:
    try:
        return float(value) if isinstance(value, int | float) else 0.0
    except OverflowError:  # an integer too large for a float
        return 0.0
