"""The classic Celery pattern in a Flask (sync) app, on celeriac."""
