"""The Celery-alternative example: a FastAPI app whose slow work runs in celeriac workers."""
