"""Fuzz: poison envelopes between good tasks never stop a worker on the memory broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from celeriac.protocol.envelope import Envelope
from celeriac.transports.broker import Broker
from poison import draw_many, mark_app, poison_envelopes, run_campaign

#: Envelopes per run in the suite; scripts/poison_campaign.py runs thousands.
COUNT = 300


async def _publish(queue: str, broker: Broker, envelopes: Sequence[Envelope]) -> None:
    for envelope in envelopes:
        await broker.publish(queue, envelope)


def test_poison_envelopes_never_stop_the_worker() -> None:
    queue = f"fuzz-{uuid.uuid4().hex}"
    app, tally = mark_app("fuzz", broker=f"memory://{uuid.uuid4().hex}")
    poison = draw_many(poison_envelopes(), COUNT)
    asyncio.run(
        run_campaign(
            app, tally, poison, lambda broker, batch: _publish(queue, broker, batch), queue=queue
        )
    )
    assert tally.dead > COUNT // 2, f"most mutations should be rejected: {tally}"
