"""RabbitMQ connections, for the ``amqp://`` broker (and the ``rpc://`` backend after it).

aiormq speaks the protocol; this module adds what celeriac needs on top: opening a connection
with errors that say what to fix, telling "unreachable" (wait and retry) from "misconfigured"
(retrying would not help), and declaring queues and exchanges with Celery's flags, turning
RabbitMQ's PRECONDITION_FAILED into a message that names the argument that differs.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import aiormq
import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection

from celeriac.errors import ConfigurationError
from celeriac.transports.amqp.properties import read_text_leniently
from celeriac.transports.urls import redacted

#: "Cannot reach RabbitMQ right now": worth waiting for. A channel that was closed under a
#: caller (its connection dropped) counts too: it reopens with the connection.
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    amqp_errors.AMQPConnectionError,
    amqp_errors.ChannelInvalidStateError,
    amqp_errors.ChannelClosed,
    EOFError,
)


def _quiet_connection_noise(record: logging.LogRecord) -> bool:
    """aiormq logs a lost connection as an error with a traceback, then an error per failed
    reconnect; the broker reports the same outage itself, once, with what to check. Its
    critical records still pass."""
    return record.levelno >= logging.CRITICAL


logging.getLogger("aiormq.connection").addFilter(_quiet_connection_noise)
read_text_leniently()  # one message with a header name that is not UTF-8 must not end a connection

_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)' for (queue|exchange) '([^']*)'")


async def connect(url: str, *, timeout: float) -> AbstractConnection:
    """An open connection; a refused login or virtual host is a :class:`ConfigurationError`."""
    try:
        async with asyncio.timeout(timeout):
            connection = await aiormq.connect(url)
    except TimeoutError as exc:
        raise ConnectionError(f"RabbitMQ at {redacted(url)} did not answer in {timeout} s") from exc
    except (amqp_errors.AuthenticationError, amqp_errors.ProbableAuthenticationError) as exc:
        raise ConfigurationError(
            f"RabbitMQ at {redacted(url)} refused the login ({exc}): check the user and"
            " password in the URL (amqp://user:password@host:5672/vhost)"
        ) from None
    except amqp_errors.ConnectionNotAllowed as exc:
        raise ConfigurationError(
            f"RabbitMQ at {redacted(url)} refused the virtual host ({exc}): check the vhost at"
            " the end of the URL ('//' is the default vhost '/') and the user's permissions"
        ) from None
    return connection


def declare_error(exc: amqp_errors.ChannelPreconditionFailed) -> ConfigurationError:
    """PRECONDITION_FAILED on a declaration, as a message that says what differs and how to
    fix it (RabbitMQ's own text is kept at the end)."""
    text = str(exc)
    found = _INEQUIVALENT.search(text)
    if found is None:
        return ConfigurationError(f"RabbitMQ refused a declaration: {text}")
    argument, kind, name = found.groups()
    fix = (
        "set task_queue_max_priority to the queue's x-max-priority, or delete the queue"
        if argument == "x-max-priority"
        else f"declare it the way it exists, or delete the {kind}"
    )
    return ConfigurationError(
        f"{kind} {name!r} already exists with a different {argument!r}: {fix}"
        f" (rabbitmqctl delete_{kind} {name}, which drops its messages) [{text}]"
    )


async def declare_queue(
    channel: AbstractChannel, name: str, arguments: dict[str, Any] | None = None
) -> int:
    """Declare a durable queue (Celery's flags); returns how many messages are ready in it."""
    try:
        ok = await channel.queue_declare(name, durable=True, arguments=arguments or None)
    except amqp_errors.ChannelPreconditionFailed as exc:
        raise declare_error(exc) from None
    return int(ok.message_count or 0)


async def declare_direct(channel: AbstractChannel, queue: str) -> None:
    """The direct exchange named like the queue, bound to it with its name, as Celery makes
    for each queue (tasks are published to the default exchange, so this one is only for
    producers that name it)."""
    try:
        await channel.exchange_declare(queue, exchange_type="direct", durable=True)
    except amqp_errors.ChannelPreconditionFailed as exc:
        raise declare_error(exc) from None
    await channel.queue_bind(queue, queue, routing_key=queue)
