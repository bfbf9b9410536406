"""Task ids and delivery tags: UUID4 text, as ``str(uuid.uuid4())`` writes it."""

from __future__ import annotations

import uuid as std_uuid

from celeriac import uuid
from celeriac.ids import new_ids


def test_ids_are_random_version_4_uuids() -> None:
    ids = [uuid(), *new_ids(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = std_uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == std_uuid.RFC_4122
    # Every variant digit turns up: the variant keeps the random digit's two low bits.
    assert {text[19] for text in ids} == set("89ab")
