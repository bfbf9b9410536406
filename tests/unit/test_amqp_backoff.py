"""The RabbitMQ broker's reconnection backoff: doubling from 50 ms, capped at 5 s, for as long
as an outage lasts."""

from __future__ import annotations

from celeriac.transports.amqp.broker import backoff


def test_backoff_doubles_from_50_ms_up_to_5_s() -> None:
    delays = [backoff(attempt) for attempt in range(9)]
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_backoff_of_an_outage_lasting_hours_stays_at_the_cap() -> None:
    """Attempt 2,000 (about three hours at 5 s each) once overflowed a float (2**2000)."""
    assert backoff(2000) == 5.0
