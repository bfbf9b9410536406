"""``memory://``: a broker and result store inside one process, for unit tests."""
