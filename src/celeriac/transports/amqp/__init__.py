"""``amqp://``: RabbitMQ as Celery 5 uses it, and the ``rpc://`` result backend over it."""
