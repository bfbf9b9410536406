"""Celery's canvas for celeriac's users: signatures, chains, groups and chords.

:mod:`celeriac.canvas.publish` publishes what applying one asks for (the client's
``apply_async`` and the worker's next steps alike).
"""
