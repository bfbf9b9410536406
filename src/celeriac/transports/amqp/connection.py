"""RabbitMQ connections, for the ``amqp://`` broker (and the ``rpc://`` backend after it).

aiormq speaks the protocol; this module adds what celeriac needs on top: opening a connection
with errors that say what to fix, telling "unreachable" (wait and retry) from "refused" and
"misconfigured" (retrying would not help), and declaring queues and exchanges with Celery's
flags, turning RabbitMQ's PRECONDITION_FAILED into a message that names the argument that
differs and its other refusals into a :class:`~celeriac.errors.BrokerError` that names them.

RabbitMQ refuses an operation by closing the channel it came on with a reply code (403
ACCESS_REFUSED, 404 NOT_FOUND, 405 RESOURCE_LOCKED, 406 PRECONDITION_FAILED), which aiormq
raises as a subclass of ``ChannelClosed``: those are :data:`REFUSED`, never
:data:`UNREACHABLE`, or a consumer would take a queue it may not use (``amq.*``) for an
outage and retry it forever.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import aiormq
import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection

from celeriac.errors import BrokerError, ConfigurationError
from celeriac.transports.amqp.properties import read_text_leniently
from celeriac.transports.urls import redacted

#: "Cannot reach RabbitMQ right now": worth waiting for. A channel used after it closed
#: under a caller (its connection dropped) counts too: it reopens with the connection. A
#: channel RabbitMQ closed to refuse an operation does not (see :data:`REFUSED`).
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    amqp_errors.AMQPConnectionError,
    amqp_errors.ChannelInvalidStateError,
    EOFError,
)
#: RabbitMQ refused the operation (it closed the channel with the reason): doing it again
#: fails the same way. :func:`refusal` says which refusal, and what was refused.
REFUSED: tuple[type[BaseException], ...] = (
    amqp_errors.ChannelAccessRefused,
    amqp_errors.ChannelNotFoundEntity,
    amqp_errors.ChannelLockedResource,
    amqp_errors.ChannelPreconditionFailed,
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


def refusal(exc: BaseException, doing: str) -> BrokerError:
    """RabbitMQ's refusal ``exc`` (one of :data:`REFUSED`) of ``doing`` ("declare the queue
    'x'"), as a BrokerError that names it: RabbitMQ's own text (``ACCESS_REFUSED - queue name
    'amq.x' contains reserved prefix 'amq.*'``) and that it is no outage."""
    reason = exc.args[0] if exc.args else type(exc).__name__
    error = BrokerError(
        f"RabbitMQ refused to {doing}: {reason} (a refusal, not an outage: doing it again"
        " fails the same way)"
    )
    error.__cause__ = exc
    return error


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
    except REFUSED as exc:  # a reserved name (amq.*), a queue exclusive to another connection
        raise refusal(exc, f"declare the queue {name!r}") from exc
    return int(ok.message_count or 0)


async def declare_direct(channel: AbstractChannel, queue: str) -> None:
    """The direct exchange named like the queue, bound to it with its name, as Celery makes
    for each queue (tasks are published to the default exchange, so this one is only for
    producers that name it)."""
    try:
        await channel.exchange_declare(queue, exchange_type="direct", durable=True)
    except amqp_errors.ChannelPreconditionFailed as exc:
        raise declare_error(exc) from None
    except REFUSED as exc:
        raise refusal(exc, f"declare the exchange {queue!r}") from exc
    try:
        await channel.queue_bind(queue, queue, routing_key=queue)
    except REFUSED as exc:
        raise refusal(exc, f"bind the queue {queue!r} to its exchange") from exc
