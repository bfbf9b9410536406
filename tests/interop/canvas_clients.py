"""Each framework as a canvas client: its peer module and its canvas primitives, so one
test can run with either side sending."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

TIMEOUT = 20


@dataclass
class Client:
    """One side as the client: its peer module and its canvas primitives."""

    name: str
    peer: ModuleType
    chain: Any
    group: Any
    chord: Any
    chord_error: type[Exception]

    def wait(self, result: Any) -> Any:
        """The result's value; a chord's body waits on its own record only (by default both
        clients raise a failed header task's error instead of the body's ChordError)."""
        return result.get(timeout=TIMEOUT, follow_parents=False)


def configured(name: str) -> Client:
    """The peer ``name`` ("celery" or "celeriac") configured for this run, as a client."""
    if name == "celery":
        import celery
        import celery.exceptions

        from interop.peers import celery_app

        celery_app.configure()
        return Client(
            "celery",
            celery_app,
            celery.chain,
            celery.group,
            celery.chord,
            celery.exceptions.ChordError,
        )
    import celeriac
    import celeriac.errors
    from interop.peers import celeriac_app

    celeriac_app.configure()
    return Client(
        "celeriac",
        celeriac_app,
        celeriac.chain,
        celeriac.group,
        celeriac.chord,
        celeriac.errors.ChordError,
    )


def closed(name: str) -> None:
    """Close the peer ``name``'s client connections."""
    if name == "celery":
        from interop.peers import celery_app

        celery_app.close()
    else:
        from interop.peers import celeriac_app

        celeriac_app.app.close()
