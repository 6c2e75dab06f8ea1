"""Measuring JSON without recursion: depth and size of hostile values."""

from __future__ import annotations

import json

import pytest

from config.errors import NestedTooDeeply
from config.limits import json_size, load_json, nesting_depth


def test_depth_of_values() -> None:
    assert nesting_depth(1, 10) == 0
    assert nesting_depth([], 10) == 1
    assert nesting_depth({"a": [1, {"b": []}]}, 10) == 4
    assert nesting_depth([[[[[]]]]], 3) == 4  # stops early, past the bound


def test_a_value_nested_100_000_deep_is_measured_without_recursion() -> None:
    value: list[object] = []
    for _ in range(100_000):
        value = [value]
    assert nesting_depth(value, 100) == 101


def test_hostile_json_text_is_refused_as_a_value_error() -> None:
    with pytest.raises(NestedTooDeeply, match="nested deeper than 100 levels"):
        load_json("[" * 100_000 + "]" * 100_000, 100)
    with pytest.raises(NestedTooDeeply):
        load_json("[" * 101 + "]" * 101, 100)
    with pytest.raises(json.JSONDecodeError):
        load_json("{nope", 100)
    assert load_json('{"a": [1]}', 100) == {"a": [1]}


def test_size_is_compact_utf8_json() -> None:
    assert json_size({"a": [1, 2]}) == len('{"a":[1,2]}')
    assert json_size("é") == 4
