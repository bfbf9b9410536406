"""One leader among any number of participants, and a small state document, kept by RabbitMQ.

A deployment whose only server is RabbitMQ has no result store to hold a lease in. Here
RabbitMQ itself decides who leads: every participant consumes the durable classic queue
``celeriac.lead.<name>``, declared with ``x-single-active-consumer``, so RabbitMQ delivers
its messages to one consumer only, the first registered, until that consumer's channel
closes; the next in line is then activated and the messages it held are delivered again, to
it. No one polls and no clock is compared across machines.

The messages are *tokens*: persistent messages whose body is the state document. The
consumer that receives one leads; it keeps them unacknowledged (acknowledging one would
delete it). Each participant publishes one empty token when it starts, so a fresh queue has
one. The leader writes a new state by publishing ONE new token, confirmed, and only then
acknowledging every token it held before, so the state is never out of the queue: a crash
between the two leaves the old tokens and the new one, all of which the next leader
receives, and the caller merges their bodies (:meth:`SingleActiveLead.tokens` hands over
every one, oldest first).

What the leader must do, and what it is promised:

* **Write regularly.** RabbitMQ closes a channel that holds a delivery longer than its
  ``consumer_timeout`` (30 min by default), which would hand the lead to another participant:
  :meth:`SingleActiveLead.refresh` rewrites the newest state well before that.
* **A dead peer is noticed within a few heartbeats.** Each lead has a connection of its own,
  with an AMQP heartbeat of ``heartbeat`` seconds. A process that dies loses its TCP
  connection at once, and the next participant leads within milliseconds; a hung host or a
  cut network is noticed by RabbitMQ after two to three heartbeats without a frame from it,
  and only then does the next consumer lead.
* **A leader that cannot confirm it still leads stops believing it does.** RabbitMQ can
  give the lead away two heartbeats after it last heard from the leader, while the client
  library notices a silent connection only after ``(heartbeat + 1) * 3`` seconds, so the
  two could overlap. Instead, :attr:`~SingleActiveLead.leading` holds only while RabbitMQ
  has answered a request sent less than ``heartbeat`` seconds ago; a probe (a passive
  declare of the queue) is sent every third of that, and one not answered in time drops
  the connection. After a pause of the process (a stopped VM, a long blocking call) longer
  than ``heartbeat``, the lead is given up even if RabbitMQ had not noticed yet. The belief
  ends at least a heartbeat before RabbitMQ can hand the lead on; a caller reads
  ``leading`` right before each act only the leader may do, and keeps the act short.

Limits: a leader whose event loop keeps running (heartbeats and probes answered) but whose
own work is stuck keeps the lead; so does one that never calls ``refresh()``, until
``consumer_timeout`` closes its channel. The queue is a classic queue: it lives on one node
of a cluster, and while that node is down no one leads. If the tokens are deleted by hand
(the queue purged while they were being handed over), no one leads until a participant
starts again and publishes an empty token. A write that fails may still have reached the
queue: the next leader may or may not see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiormq.exceptions as amqp_errors
from aiormq import spec
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from yarl import URL

from celeriac.errors import BrokerError, BrokerUnreachable, ConfigurationError, NotLeading
from celeriac.transports.amqp import connection as _amqp
from celeriac.transports.amqp.connection import REFUSED, UNREACHABLE, refusal
from celeriac.transports.urls import redacted

log = logging.getLogger(__name__)

QUEUE_PREFIX = "celeriac.lead."
#: RabbitMQ's argument that makes one consumer of a queue the only one served.
SINGLE_ACTIVE_CONSUMER = "x-single-active-consumer"
#: Tokens handed to the leader at once: more than a crash loop can leave behind.
PREFETCH = 100
_CONNECT_TIMEOUT = 5.0
#: The longest joining may take, connecting included.
_START_TIMEOUT = 10.0
#: The longest a step of closing waits for RabbitMQ: what is not acknowledged goes back.
_CLOSE_TIMEOUT = 5.0
#: What a lost channel or connection raises at a caller that used it.
_LOST: tuple[type[BaseException], ...] = (*UNREACHABLE, amqp_errors.AMQPError)


@dataclass(frozen=True, slots=True)
class _Token:
    number: int  # its delivery tag on the channel it came on
    body: bytes
    message_id: str


class SingleActiveLead:
    """A participant in the lead named ``name``: a connection and a consuming channel of its
    own on the RabbitMQ at ``url`` (``amqp://`` or ``amqps://``, virtual host included).

    ``heartbeat`` (seconds, rounded up to a whole second on the wire) is the connection's
    AMQP heartbeat and the longest the lead is believed without RabbitMQ's word: a dead
    leader is replaced within two to three of them.
    """

    def __init__(self, url: str, name: str, *, heartbeat: float = 5.0) -> None:
        if not heartbeat > 0:
            raise ConfigurationError(
                f"heartbeat={heartbeat!r}: give the lead's AMQP heartbeat in seconds (above 0)"
            )
        if not name:
            raise ConfigurationError("a lead needs a name (its queue is celeriac.lead.<name>)")
        self.url = url
        self.name = name
        self.queue = f"{QUEUE_PREFIX}{name}"
        self.heartbeat = float(heartbeat)
        self._url = str(URL(url).update_query(heartbeat=str(math.ceil(heartbeat))))
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._led_on: AbstractChannel | None = None  # the channel a token came on
        self._held: list[_Token] = []
        #: When the newest request RabbitMQ answered on the channel was sent (monotonic).
        self._contact = 0.0
        self._arrivals: dict[str, asyncio.Future[None]] = {}  # written tokens on their way
        self._stirred = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()  # the probe, writes, closings

    # -- what the caller reads -------------------------------------------------------------

    @property
    def leading(self) -> bool:
        """This participant is the active consumer: a token came on its current channel, the
        channel is open, and RabbitMQ answered a request sent less than ``heartbeat`` s ago."""
        channel = self._channel
        return (
            channel is not None
            and not channel.is_closed
            and self._led_on is channel
            and time.monotonic() - self._contact < self.heartbeat
        )

    def tokens(self) -> list[bytes]:
        """The bodies of the tokens held, oldest first (the order RabbitMQ delivered them):
        several after a leader died between publishing a state and letting go of the old."""
        return [token.body for token in self._held]

    async def changed(self, timeout: float | None) -> None:
        """Return once ``leading`` or ``tokens()`` changed since the last time this returned
        (at once if it has), or after ``timeout`` seconds (``None``: no limit)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._stirred.wait()
        self._stirred.clear()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the lead: connect (again, if the connection was lost), declare the queue,
        publish an empty token and consume. A no-op while this participant's channel is
        open, so a caller may call it whenever it does not lead (with backoff after a
        failure). Unreachable RabbitMQ, or no answer within ``_START_TIMEOUT``, is a
        :class:`BrokerUnreachable`; a queue declared otherwise, a refused login or virtual
        host, a :class:`ConfigurationError`."""
        async with self._start_lock:
            channel = self._channel
            if channel is not None and not channel.is_closed:
                return
            try:
                async with asyncio.timeout(_START_TIMEOUT):
                    await self._open()
            except UNREACHABLE as exc:  # TimeoutError among them
                await self._drop()  # a connection that does not answer is no use again
                raise self._unreachable(exc, "start") from exc
            except REFUSED as exc:
                raise refusal(exc, f"let this lead consume the queue {self.queue!r}") from exc
            except amqp_errors.AMQPError as exc:  # another refusal RabbitMQ closed with
                raise BrokerError(f"lead {self.name!r}: RabbitMQ refused to start: {exc}") from exc

    async def _open(self) -> None:
        connection = self._connection
        if connection is None or connection.is_closed:
            connection = await _amqp.connect(self._url, timeout=_CONNECT_TIMEOUT)
            self._connection = connection
            connection.closing.add_done_callback(partial(self._connection_lost, connection))
        channel = await connection.channel(publisher_confirms=True)
        try:
            await self._declare(channel)
            await self._publish(channel, b"")
            await channel.basic_qos(prefetch_count=PREFETCH)
        except BaseException:
            await self._give_up(channel)
            raise
        self._channel = channel
        self._held = []
        self._led_on = None
        self._contact = time.monotonic()
        channel.closing.add_done_callback(partial(self._channel_lost, channel))
        channel.on_consumer_cancel_callbacks.add(partial(self._cancelled, channel))
        await channel.basic_consume(self.queue, partial(self._arrived, channel))
        self._hold(asyncio.create_task(self._probe(channel)))

    async def _declare(self, channel: AbstractChannel) -> None:
        try:
            await _amqp.declare_queue(channel, self.queue, {SINGLE_ACTIVE_CONSUMER: True})
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"{exc}. The lead {self.name!r} needs its queue declared with"
                f" {SINGLE_ACTIVE_CONSUMER}=true: delete the queue (the state in its tokens"
                " is lost) and start the participants again"
            ) from None

    async def stop(self) -> None:
        """Close the connection: the tokens held go back to the queue, and the next
        participant in line leads. ``start()`` joins again."""
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await self._drop()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drop(self) -> None:
        """Forget the channel and close the connection (without waiting long: RabbitMQ puts
        back what it held when it closes the connection or notices it gone)."""
        connection, self._connection = self._connection, None
        channel, self._channel = self._channel, None
        self._forget(channel)
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*_LOST, TimeoutError, RuntimeError):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await connection.close()

    # -- writing ---------------------------------------------------------------------------

    async def write(self, state: bytes) -> None:
        """Make ``state`` the one token: publish it (confirmed), then acknowledge every token
        held before it, then wait until it is delivered back here. Only the leader writes
        (:class:`NotLeading` otherwise). Any failure means the lead is lost (``leading`` is
        False afterwards) and the new state may or may not be in the queue. Cancelling the
        caller does not cut a write in half: it runs on to its end."""
        await self._shielded(self._write(state, "write"))

    async def refresh(self) -> None:
        """Write the newest state again, so no delivery is held long enough for RabbitMQ's
        ``consumer_timeout`` (30 min by default) to close the channel. The newest state is
        the newest token that is not empty (empty ones are start tokens, which may arrive
        after the state); the others are acknowledged, so a caller that holds several
        different states merges them and writes first."""
        await self._shielded(self._write(None, "refresh"))

    async def _shielded(self, writing: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(writing)
        self._hold(task)
        await asyncio.shield(task)

    async def _write(self, state: bytes | None, doing: str) -> None:
        """Write ``state``, or the newest state again when it is None."""
        async with self._write_lock:
            channel = self._channel
            if channel is None or not self.leading:
                raise self._not_leading(doing)
            if state is None:
                state = next((t.body for t in reversed(self._held) if t.body), b"")
            before = max((token.number for token in self._held), default=0)
            message_id = uuid.uuid4().hex
            arrival: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._arrivals[message_id] = arrival
            try:
                async with asyncio.timeout(self.heartbeat * 2 + _CLOSE_TIMEOUT):
                    await self._publish(channel, state, message_id)
                    if before:
                        await channel.basic_ack(before, multiple=True)
                        self._held = [t for t in self._held if t.number > before]
                        self._stir()
                    await arrival
            except BaseException as exc:
                await self._give_up(channel)
                if isinstance(exc, REFUSED):
                    raise refusal(exc, f"take a token for the queue {self.queue!r}") from exc
                if isinstance(exc, (*_LOST, TimeoutError)):
                    raise self._unreachable(exc, f"{doing} the state") from exc
                raise
            finally:
                self._arrivals.pop(message_id, None)

    async def _publish(
        self, channel: AbstractChannel, body: bytes, message_id: str | None = None
    ) -> None:
        sent_at = time.monotonic()
        properties = spec.Basic.Properties(
            delivery_mode=2, message_id=message_id or uuid.uuid4().hex
        )
        confirm = await channel.basic_publish(
            body, exchange="", routing_key=self.queue, properties=properties
        )
        if not isinstance(confirm, spec.Basic.Ack):
            raise BrokerError(f"RabbitMQ did not take a token for {self.queue!r}: {confirm!r}")
        if channel is self._channel:
            self._contact = max(self._contact, sent_at)

    # -- what RabbitMQ tells -----------------------------------------------------------------

    async def _arrived(self, channel: AbstractChannel, message: DeliveredMessage) -> None:
        if channel is not self._channel or message.delivery_tag is None:
            return  # a channel given up: RabbitMQ puts its deliveries back
        message_id = str(message.header.properties.message_id or "")
        self._held.append(_Token(message.delivery_tag, bytes(message.body), message_id))
        self._led_on = channel
        arrival = self._arrivals.get(message_id)
        if arrival is not None and not arrival.done():
            arrival.set_result(None)
        self._stir()

    def _cancelled(self, channel: AbstractChannel, _: object) -> None:
        """RabbitMQ ended the consumer (the queue was deleted): the lead is gone with it."""
        if channel is self._channel:
            log.warning("lead %r: RabbitMQ cancelled the consumer (queue deleted?)", self.name)
            self._hold(asyncio.create_task(self._give_up(channel)))

    def _channel_lost(self, channel: AbstractChannel, _: object) -> None:
        if channel is self._channel:
            self._channel = None
            self._forget(channel)

    def _connection_lost(self, connection: AbstractConnection, _: object) -> None:
        if connection is self._connection:
            self._connection = None
            channel, self._channel = self._channel, None
            self._forget(channel)

    def _forget(self, channel: AbstractChannel | None) -> None:
        """The channel is gone: RabbitMQ has put back what it held (or will, when it notices)."""
        if channel is None:
            return
        self._held = []
        self._led_on = None
        for arrival in self._arrivals.values():
            if not arrival.done():
                arrival.set_exception(ConnectionError(f"the channel of lead {self.name!r} closed"))
        self._stir()

    async def _probe(self, channel: AbstractChannel) -> None:
        """Ask RabbitMQ something every third of ``heartbeat``; when no answer comes within
        ``heartbeat`` of the last request answered, drop the connection: RabbitMQ may be about
        to give the lead to another participant, and this one must not lead meanwhile."""
        loop = asyncio.get_running_loop()
        while True:
            if channel is not self._channel or channel.is_closed:
                return  # given up, or closed: whoever did it forgot the channel
            sent_at = time.monotonic()
            lapse = self._contact + self.heartbeat
            if sent_at >= lapse:
                break
            try:
                async with asyncio.timeout_at(loop.time() + (lapse - sent_at)):
                    await channel.queue_declare(self.queue, passive=True)
            except TimeoutError:
                break
            except (*_LOST, *REFUSED):
                return  # the channel closed: its callback said so
            self._contact = max(self._contact, sent_at)
            await asyncio.sleep(self.heartbeat / 3)
        if channel is self._channel:
            log.warning(
                "lead %r: RabbitMQ at %s did not answer within %g s: dropping the connection"
                " (another participant may lead); start() joins again",
                self.name,
                redacted(self.url),
                self.heartbeat,
            )
            await self._drop()

    async def _give_up(self, channel: AbstractChannel) -> None:
        """Close ``channel`` (its tokens go back, another participant leads) and forget it."""
        if channel is self._channel:
            self._channel = None
            self._forget(channel)
        if not channel.is_closed:
            with contextlib.suppress(*_LOST, TimeoutError, RuntimeError):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await channel.close()

    # -- helpers ---------------------------------------------------------------------------

    def _stir(self) -> None:
        self._stirred.set()

    def _hold(self, task: asyncio.Task[Any]) -> None:
        """Keep a reference to ``task`` until it ends (the loop holds only weak ones)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _not_leading(self, doing: str) -> NotLeading:
        return NotLeading(
            f"lead {self.name!r}: cannot {doing}, this participant does not lead (only the"
            " one RabbitMQ delivers the tokens to writes); wait on changed() until leading"
        )

    def _unreachable(self, exc: BaseException, doing: str) -> BrokerUnreachable:
        error = BrokerUnreachable(
            f"lead {self.name!r}: could not {doing} at RabbitMQ {redacted(self.url)}"
            f" ({type(exc).__name__}: {exc}); the lead is lost here: start() again, with"
            " backoff, once RabbitMQ answers"
        )
        error.__cause__ = exc
        return error
