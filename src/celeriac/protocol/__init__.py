"""Celery's wire format, pure: envelopes, task messages, serializers and result records.

Nothing here does I/O or knows a transport; transports and the worker build on it."""
