"""A participant in a RabbitMQ lead, in a process of its own, for tests that kill or pause it.

``python amqp_lead_holder.py URL NAME HEARTBEAT STATE [--stall-ack NEXT]``

It starts a :class:`SingleActiveLead`, prints a line on every change (``leading=1
tokens=[...]``, the bodies as JSON text), and once it leads writes ``STATE`` and prints
``wrote``. With ``--stall-ack NEXT`` it then writes ``NEXT`` with acknowledgements that never
leave: the new token is published and confirmed, the old one stays held, and it prints
``acking`` at that point (a crash between the two halves of a write, when killed there).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from celeriac.transports.amqp.lead import SingleActiveLead


def report(lead: SingleActiveLead) -> None:
    bodies = [body.decode() for body in lead.tokens()]
    print(f"leading={int(lead.leading)} tokens={json.dumps(bodies)}", flush=True)


async def stall_acks(lead: SingleActiveLead) -> None:
    """Make the lead's channel hang on its next acknowledgement, after saying so."""
    channel: Any = lead._channel  # the test simulates a crash inside write()
    never = asyncio.Event()

    async def hang(*args: Any, **kwargs: Any) -> None:
        print("acking", flush=True)
        await never.wait()

    channel.basic_ack = hang


async def main(url: str, name: str, heartbeat: float, state: str, stall: str | None) -> None:
    lead = SingleActiveLead(url, name, heartbeat=heartbeat)
    await lead.start()
    print("started", flush=True)
    wrote = False
    writing: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references
    while True:
        report(lead)
        if lead.leading and not wrote:
            await lead.write(state.encode())
            wrote = True
            print("wrote", flush=True)
            report(lead)
            if stall is not None:
                await stall_acks(lead)
                writing.add(asyncio.create_task(lead.write(stall.encode())))
        await lead.changed(None)


if __name__ == "__main__":
    args = sys.argv[1:]
    stall = args[args.index("--stall-ack") + 1] if "--stall-ack" in args else None
    asyncio.run(main(args[0], args[1], float(args[2]), args[3], stall))
