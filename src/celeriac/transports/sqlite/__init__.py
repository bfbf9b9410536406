"""``sqlite://``: the embedded broker and result store, one durable file per machine, with
wake-ups between the processes that share it."""
