"""``similar_json``: a template gives exactly ``json_text`` of each document."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celeriac.protocol.serialization import json_text
from celeriac.transports.redis.similar_json import Template, differing_keys

leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(
    shared=st.dictionaries(st.text(max_size=6), values, max_size=6),
    own=st.lists(st.fixed_dictionaries({"a": values, '%s\x00"é': values}), min_size=2),
)
def test_documents_from_one_template_encode_as_json_text(
    shared: dict[str, Any], own: list[dict[str, Any]]
) -> None:
    """Documents that share some values (the same objects) and have values of their own."""
    documents = []
    for values_of_own in own:
        headers = dict(shared)
        for key in sorted(values_of_own):  # one key order for every document
            headers[key] = values_of_own[key]
        documents.append({"headers": headers, "body": values_of_own.get("a")})
    varying = differing_keys([d["headers"] for d in documents])
    assert varying is not None
    slots = [("headers", key) for key in varying] + [("body",)]
    template = Template(documents[0], slots)
    for document in documents:
        rendered = template.render([document["headers"][k] for k in varying] + [document["body"]])
        assert rendered == json_text(document)


def test_equal_values_that_are_not_the_same_object_differ() -> None:
    """1, 1.0 and True are equal but encode differently: only identity counts as shared."""
    shared = [1, 2]
    dicts = [{"a": 1, "b": shared, "c": "x"}, {"a": True, "b": shared, "c": "x"}]
    assert differing_keys(dicts) == ["a"]
    dicts.append({"a": 1.0, "b": [1, 2], "c": "x"})
    assert differing_keys(dicts) == ["a", "b"]


def test_other_keys_or_order_cannot_share_a_template() -> None:
    assert differing_keys([{"a": 1, "b": 2}, {"b": 2, "a": 1}]) is None
    assert differing_keys([{"a": 1}, {"a": 1, "b": 2}]) is None


def test_a_template_keeps_percent_signs_and_refuses_slots_out_of_order() -> None:
    document = {"a": "100% %s", "b": {"c": 1, "d": "%%"}}
    template = Template(document, [("a",), ("b", "c")])
    assert template.render(["50%", 2]) == json_text({"a": "50%", "b": {"c": 2, "d": "%%"}})
    with pytest.raises(ValueError, match="not in the document's order"):
        Template(document, [("b", "c"), ("a",)])
