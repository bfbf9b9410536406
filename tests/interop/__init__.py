"""Interop tests: real Celery (client and worker) against celeriac over a shared Redis."""
