"""A lead kept by RabbitMQ alone (``SingleActiveLead``), on a real server in a virtual host of
this module's own: one participant leads, the state document travels with the lead, a killed,
paused or cut-off leader is replaced within heartbeats (a cut-off one stops believing it leads
first), a write leaves one token, and a crash inside a write hands every token to the next
leader.

Nothing here sleeps to synchronise: tests wait on ``changed()`` (or a helper process's
output) with timeouts, and the queue's contents are read with ``rabbitmqctl``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import aiormq
import pytest
from aiormq import spec

from celeriac.errors import BrokerUnreachable, ConfigurationError
from celeriac.transports.amqp.lead import NotLeading, SingleActiveLead
from services import (
    AMQP_HOST,
    AMQP_PORT,
    add_amqp_vhost,
    amqp_vhost_url,
    delete_amqp_vhost,
    eventually,
    free_port,
    require_rabbitmq,
)

pytestmark = pytest.mark.integration

WAIT = 15.0
HOLDER = Path(__file__).parent / "apps" / "amqp_lead_holder.py"
#: The heartbeat of the failover tests, and how soon another participant must lead after
#: the leader's process is killed (its socket closes: RabbitMQ notices at once) or paused
#: (RabbitMQ notices after two to three heartbeats without a frame).
FAILOVER_HEARTBEAT = 2.0
KILLED_BOUND = 5.0
PAUSED_BOUND = 3 * FAILOVER_HEARTBEAT + 2.0


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    require_rabbitmq()
    name = f"celeriac-lead-{uuid.uuid4().hex[:12]}"
    add_amqp_vhost(name)
    yield name
    delete_amqp_vhost(name)


@pytest.fixture
def url(vhost: str) -> str:
    return amqp_vhost_url(vhost)


@pytest.fixture
def name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def leads(url: str, name: str) -> AsyncIterator[Callable[..., SingleActiveLead]]:
    """A factory of leads on this test's name, each stopped at the end."""
    made: list[SingleActiveLead] = []

    def make(*, heartbeat: float = 5.0) -> SingleActiveLead:
        lead = SingleActiveLead(url, name, heartbeat=heartbeat)
        made.append(lead)
        return lead

    yield make
    await asyncio.gather(*(lead.stop() for lead in made))


async def settle(
    leads: Sequence[SingleActiveLead],
    condition: Callable[[], object],
    what: str,
    timeout: float = WAIT,
) -> None:
    """Wait on the leads' ``changed()`` until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        waits = [asyncio.ensure_future(lead.changed(left)) for lead in leads]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)


def leaders(leads: Sequence[SingleActiveLead]) -> list[SingleActiveLead]:
    return [lead for lead in leads if lead.leading]


_LIST_QUEUES = ("rabbitmqctl", "list_queues", "-q")


async def queue_counts(vhost: str, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages in ``queue``, as ``rabbitmqctl`` reports them."""

    def run() -> str:
        done = subprocess.run(
            [*_LIST_QUEUES, "-p", vhost, "name", "messages_ready", "messages_unacknowledged"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    for line in (await asyncio.to_thread(run)).splitlines():
        fields = line.split()
        if fields and fields[0] == queue:
            return int(fields[1]), int(fields[2])
    raise AssertionError(f"no queue {queue!r} in vhost {vhost!r}")


class Holder:
    """A lead in a process of its own (``apps/amqp_lead_holder.py``) and what it printed."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, url: str, name: str, state: str, *extra: str) -> Holder:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HOLDER),
            url,
            name,
            str(FAILOVER_HEARTBEAT),
            state,
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process)

    async def next_line(self, timeout: float = WAIT) -> str:
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                raw = await self.process.stdout.readline()
        except TimeoutError:
            raise AssertionError(
                f"the holder printed nothing new in {timeout} s:\n{self.log()}"
            ) from None
        if not raw:
            raise AssertionError(f"the holder ended; it printed:\n{self.log()}")
        line = raw.decode().rstrip("\n")
        self.lines.append(line)
        return line

    async def wait_for(self, text: str, timeout: float = WAIT) -> str:
        """The next line that contains ``text`` (the lines before it are kept in ``lines``)."""
        deadline = time.monotonic() + timeout
        while True:
            line = await self.next_line(max(0.0, deadline - time.monotonic()))
            if text in line:
                return line

    def log(self) -> str:
        return "\n".join(self.lines)

    async def end(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


@pytest.fixture
async def holders() -> AsyncIterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        if holder.process.returncode is None:
            holder.process.send_signal(signal.SIGCONT)  # a paused one must be able to die
        await holder.end()


# -- one leader, and the state travels with the lead ---------------------------------------


async def test_one_of_three_leads_and_the_state_passes_to_the_next_leader(
    leads: Callable[..., SingleActiveLead],
) -> None:
    group = [leads(), leads(), leads()]
    for lead in group:
        await lead.start()
    # Each start published one empty token: all three go to the one active consumer.
    await settle(
        group,
        lambda: any(len(lead.tokens()) == 3 for lead in group),
        "one lead holding the three start tokens",
    )
    [first] = leaders(group)
    assert first.tokens() == [b"", b"", b""]
    assert all(lead.tokens() == [] for lead in group if lead is not first)

    await first.write(b"state-1")
    assert first.leading and first.tokens() == [b"state-1"]

    await first.stop()
    assert not first.leading and first.tokens() == []
    rest = [lead for lead in group if lead is not first]
    await settle(rest, lambda: leaders(rest), "another lead to take over")
    [second] = leaders(rest)
    assert second.tokens() == [b"state-1"]

    # A participant joining later queues behind the leader: its start token goes to it.
    late = leads()
    await late.start()
    await settle([second, late], lambda: len(second.tokens()) == 2, "the late start token")
    assert second.tokens() == [b"state-1", b""]
    assert leaders([*rest, late]) == [second]
    assert late.tokens() == []


async def test_tokens_collapse_to_one_message_after_writes(
    leads: Callable[..., SingleActiveLead], vhost: str
) -> None:
    lead = leads()
    await lead.start()
    await settle([lead], lambda: lead.leading, "the only participant to lead")
    for number in range(5):
        await lead.write(f"state-{number}".encode())
    assert lead.tokens() == [b"state-4"]
    # The acknowledgements reach the queue after the channel sent them: wait for the count.
    await eventually(
        lambda: _counts_are(vhost, lead.queue, (0, 1)), WAIT, "one message, held by the leader"
    )


async def _counts_are(vhost: str, queue: str, expected: tuple[int, int]) -> bool:
    return await queue_counts(vhost, queue) == expected


async def test_refresh_publishes_the_newest_state_again_and_lets_go_of_the_old(
    leads: Callable[..., SingleActiveLead], vhost: str
) -> None:
    lead = leads()
    await lead.start()
    await settle([lead], lambda: lead.leading, "the only participant to lead")
    await lead.write(b"kept")
    # The delivery a consumer_timeout would count from: its number on the channel.
    [held] = lead._held
    await lead.changed(0)  # forget the changes so far
    await lead.refresh()
    [renewed] = lead._held
    assert renewed.number > held.number and renewed.message_id != held.message_id
    assert lead.tokens() == [b"kept"] and lead.leading
    await asyncio.wait_for(lead.changed(None), 0.1)  # the new token arrived: a change
    await eventually(
        lambda: _counts_are(vhost, lead.queue, (0, 1)), WAIT, "the old token acknowledged"
    )

    # A start token that came after the state is not taken for it.
    follower = leads()
    await follower.start()
    await settle([lead], lambda: lead.tokens() == [b"kept", b""], "the follower's start token")
    await lead.refresh()
    assert lead.tokens() == [b"kept"]


async def test_a_cancelled_write_runs_to_its_end(
    leads: Callable[..., SingleActiveLead], vhost: str
) -> None:
    lead = leads()
    await lead.start()
    await settle([lead], lambda: lead.leading, "the only participant to lead")
    await lead.write(b"first")
    writing = asyncio.ensure_future(lead.write(b"second"))
    await asyncio.sleep(0)  # let the write begin (an ordering, not a wait for something)
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    await settle([lead], lambda: lead.tokens() == [b"second"], "the write to finish anyway")
    assert lead.leading
    await eventually(
        lambda: _counts_are(vhost, lead.queue, (0, 1)), WAIT, "one token after the write"
    )


# -- who may write ------------------------------------------------------------------------


async def test_writing_without_the_lead_is_refused(
    leads: Callable[..., SingleActiveLead],
) -> None:
    never_started = leads()
    with pytest.raises(NotLeading, match="does not lead"):
        await never_started.write(b"x")

    leader, follower = leads(), leads()
    await leader.start()
    await settle([leader], lambda: leader.leading, "the first participant to lead")
    await follower.start()
    await settle([leader], lambda: len(leader.tokens()) == 2, "the follower's start token")
    assert not follower.leading
    with pytest.raises(NotLeading, match="does not lead"):
        await follower.write(b"x")
    with pytest.raises(NotLeading, match="does not lead"):
        await follower.refresh()
    assert leader.tokens() == [b"", b""]  # nothing the follower did reached the queue

    await leader.stop()
    with pytest.raises(NotLeading):
        await leader.write(b"x")


# -- failover -----------------------------------------------------------------------------


async def test_a_killed_leader_is_replaced_within_the_bound(
    leads: Callable[..., SingleActiveLead], holders: list[Holder], url: str, name: str
) -> None:
    holder = await Holder.start(url, name, "from-the-dead")
    holders.append(holder)
    await holder.wait_for("wrote")
    waiting = [leads(heartbeat=FAILOVER_HEARTBEAT), leads(heartbeat=FAILOVER_HEARTBEAT)]
    for lead in waiting:
        await lead.start()
    await holder.wait_for('"from-the-dead", "", ""')  # both start tokens reached the holder
    assert leaders(waiting) == []

    killed_at = time.monotonic()
    holder.process.send_signal(signal.SIGKILL)
    await settle(waiting, lambda: leaders(waiting), "another participant to lead")
    elapsed = time.monotonic() - killed_at
    print(f"failover after SIGKILL: {elapsed:.3f} s (heartbeat {FAILOVER_HEARTBEAT} s)")
    assert elapsed < KILLED_BOUND
    [leader] = leaders(waiting)
    assert leader.tokens() == [b"from-the-dead", b"", b""]


async def test_a_paused_leader_is_replaced_and_stops_believing_it_leads(
    leads: Callable[..., SingleActiveLead], holders: list[Holder], url: str, name: str
) -> None:
    holder = await Holder.start(url, name, "paused")
    holders.append(holder)
    await holder.wait_for("wrote")
    waiting = leads(heartbeat=FAILOVER_HEARTBEAT)
    await waiting.start()
    await holder.wait_for('"paused", ""')

    paused_at = time.monotonic()
    holder.process.send_signal(signal.SIGSTOP)  # a hung host: its socket stays open
    await settle([waiting], lambda: waiting.leading, "the waiting participant to lead")
    elapsed = time.monotonic() - paused_at
    print(f"failover after SIGSTOP: {elapsed:.3f} s (heartbeat {FAILOVER_HEARTBEAT} s)")
    assert FAILOVER_HEARTBEAT <= elapsed < PAUSED_BOUND
    assert waiting.tokens() == [b"paused", b""]

    holder.process.send_signal(signal.SIGCONT)
    # The first thing it reports on waking (after its log line) is that it does not lead.
    assert await holder.wait_for("leading=") == "leading=0 tokens=[]"
    assert "did not answer within 2 s: dropping the connection" in holder.log()


async def test_a_dropped_connection_ends_the_lead_at_once_and_start_reconnects(
    leads: Callable[..., SingleActiveLead], vhost: str
) -> None:
    lead = leads()
    await lead.start()
    await settle([lead], lambda: lead.leading, "the only participant to lead")
    await lead.write(b"before the drop")

    await asyncio.to_thread(
        subprocess.run,
        ["rabbitmqctl", "close_all_connections", "-p", vhost, "test: a dropped connection"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    await settle([lead], lambda: not lead.leading, "the lead to be lost with the connection")
    assert lead.tokens() == []
    with pytest.raises(NotLeading):
        await lead.write(b"x")

    await lead.start()
    await settle([lead], lambda: len(lead.tokens()) == 2, "the lead again, with its state")
    assert lead.leading and lead.tokens() == [b"before the drop", b""]


class CutProxy:
    """A TCP relay to RabbitMQ that can cut the network: once ``cut()``, nothing passes in
    either direction and no connection is closed, as when a cable is pulled."""

    def __init__(self) -> None:
        self.port = free_port()
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    def cut(self) -> None:
        self._open.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(AMQP_HOST, AMQP_PORT)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                await self._open.wait()  # cut: held here for good
                sink.write(data)
                await sink.drain()
        if self._open.is_set():
            sink.close()

    async def close(self) -> None:
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_a_cut_network_ends_the_belief_before_another_leads(
    leads: Callable[..., SingleActiveLead], url: str, name: str, vhost: str
) -> None:
    proxy = CutProxy()
    await proxy.start()
    try:
        cut_off = SingleActiveLead(
            f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
            name,
            heartbeat=FAILOVER_HEARTBEAT,
        )
        await cut_off.start()
        await settle([cut_off], lambda: cut_off.leading, "the first participant to lead")
        await cut_off.write(b"before the cut")
        follower = leads(heartbeat=FAILOVER_HEARTBEAT)
        await follower.start()
        await settle([cut_off], lambda: len(cut_off.tokens()) == 2, "the follower's token")

        cut_at = time.monotonic()
        proxy.cut()
        both = [cut_off, follower]
        await settle(both, lambda: not cut_off.leading, "the cut-off leader to stop leading")
        believed = time.monotonic() - cut_at
        assert not follower.leading  # RabbitMQ has not handed the lead on yet
        await settle(both, lambda: follower.leading, "the follower to lead")
        handed = time.monotonic() - cut_at
        print(
            f"cut network: the leader stopped believing after {believed:.3f} s, the follower"
            f" led after {handed:.3f} s (heartbeat {FAILOVER_HEARTBEAT} s)"
        )
        assert believed < 2 * FAILOVER_HEARTBEAT
        assert believed + FAILOVER_HEARTBEAT / 2 < handed < PAUSED_BOUND
        assert follower.tokens() == [b"before the cut", b""]
        with pytest.raises(NotLeading):
            await cut_off.write(b"too late")
        await cut_off.stop()
    finally:
        await proxy.close()


# -- a crash inside a write ---------------------------------------------------------------


async def test_a_crash_between_publish_and_ack_hands_every_token_to_the_next_leader(
    leads: Callable[..., SingleActiveLead], holders: list[Holder], url: str, name: str, vhost: str
) -> None:
    holder = await Holder.start(url, name, "old", "--stall-ack", "new")
    holders.append(holder)
    await holder.wait_for("wrote")
    await holder.wait_for("acking")  # "new" is in the queue, confirmed; "old" still held
    follower = leads(heartbeat=FAILOVER_HEARTBEAT)
    await follower.start()
    await holder.wait_for('"old", "new", ""')
    holder.process.send_signal(signal.SIGKILL)

    await settle([follower], lambda: len(follower.tokens()) == 3, "every token, at the follower")
    assert follower.leading
    assert follower.tokens() == [b"old", b"new", b""]
    # The caller merges them; its write collapses them into one.
    await follower.write(b"old+new")
    assert follower.tokens() == [b"old+new"]
    await eventually(
        lambda: _counts_are(vhost, follower.queue, (0, 1)), WAIT, "one token after the merge"
    )


# -- errors that say what to fix ----------------------------------------------------------


async def test_a_queue_declared_without_single_active_consumer_is_named_with_the_fix(
    url: str, name: str
) -> None:
    lead = SingleActiveLead(url, name)
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_declare(lead.queue, durable=True)
        with pytest.raises(ConfigurationError) as info:
            await lead.start()
        text = str(info.value)
        assert "x-single-active-consumer" in text and lead.queue in text
        assert "delete" in text
        assert not lead.leading
    finally:
        await lead.stop()
        channel = await connection.channel()
        await channel.queue_delete(lead.queue)
        await connection.close()


async def test_an_unreachable_server_is_broker_unreachable() -> None:
    lead = SingleActiveLead(f"amqp://guest:guest@127.0.0.1:{free_port()}//", "nowhere")
    with pytest.raises(BrokerUnreachable, match="start"):
        await lead.start()
    assert not lead.leading


async def test_extra_tokens_are_handed_over_in_the_order_they_came(
    leads: Callable[..., SingleActiveLead], url: str
) -> None:
    """Tokens published by others (not the leader) are handed over as they came: the caller
    sees every body, in the order RabbitMQ delivered them."""
    lead = leads()
    await lead.start()
    await settle([lead], lambda: lead.leading, "the only participant to lead")
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        for body in (b"a", b"b"):
            await channel.basic_publish(
                body, routing_key=lead.queue, properties=spec.Basic.Properties(delivery_mode=2)
            )
    finally:
        await connection.close()
    await settle([lead], lambda: len(lead.tokens()) == 3, "the two extra tokens")
    assert lead.tokens() == [b"", b"a", b"b"]
