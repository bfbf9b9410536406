"""``redis://``: Celery's Redis layout (kombu's lists and keys), its RESP client, and the
result store on the same client code."""
