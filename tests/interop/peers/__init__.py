"""Peer apps for the interop tests: the same task names in a Celery app and a celeriac app.

Every module here is importable without the other framework: ``errors`` imports neither,
``celery_app`` only Celery and ``celeriac_app`` only celeriac. The worker subprocesses read
their per-test settings from environment variables (see ``settings``).
"""
