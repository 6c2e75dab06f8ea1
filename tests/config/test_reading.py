"""Hostile YAML: a deployment file is read within bounds of size, depth and alias expansion,
and refused quickly, with memory flat, past them; ordinary anchors and merges still work."""

from __future__ import annotations

import itertools
import time
import tracemalloc

import pytest

from config.deployment import YamlLimits, load_deployment
from config.deployment.reading import YamlTooLarge, read_yaml
from config.errors import DeploymentSpecError, NestedTooDeeply

LIMITS = YamlLimits()


def billion_laughs(levels: int = 9) -> str:
    """Nine aliases of nine aliases of ..., ``9**levels`` strings once expanded, put where a
    deployment file takes any mapping (the simple queue's ``client_kwargs``)."""
    names = "abcdefghij"[:levels]
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for before, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{before}"] * 9) + "]")
    return (
        "name: Bomb\ncontrol-plane: {}\nmessage-queue:\n  type: simple\n  client_kwargs:\n"
        + "".join(f"    {line}\n" for line in lines)
        + "services:\n  s:\n    name: s\n"
    )


def test_a_billion_laughs_is_refused_in_milliseconds_with_memory_flat() -> None:
    # Given a file of about 500 bytes that expands to 387 million strings
    text = billion_laughs()
    assert len(text) < 600
    # When it is loaded
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DeploymentSpecError) as caught:
            load_deployment(text)
        took = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then it is refused, saying why, at once and without building the expansion
    assert caught.value.errors == {
        "yaml": [
            "Refused: the file holds more than 10,000 values once its aliases are expanded "
            "(CELERIAC_MAX_YAML_NODES)."
        ]
    }
    assert took < 0.5, took  # about 15 ms measured; generous for a loaded machine
    assert peak < 2 * 1024 * 1024, peak  # about 40 KiB measured


def test_the_alias_budget_counts_every_use_of_an_anchor() -> None:
    # 9**4 = 6,561 strings fit in the default budget; 9**5 = 59,049 do not
    small = billion_laughs(4).replace("services:\n  s:\n    name: s\n", "")
    assert read_yaml(small, LIMITS)["message-queue"]["client_kwargs"]["d"][0][0][0] == ["lol"] * 9
    with pytest.raises(YamlTooLarge):
        read_yaml(billion_laughs(5), LIMITS)
    # And the budget is the operator's
    with pytest.raises(YamlTooLarge):
        read_yaml(small, YamlLimits(max_nodes=1_000))


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    with pytest.raises(YamlTooLarge, match="an alias refers to a node that contains it"):
        read_yaml("a: &a [1, *a]\n", LIMITS)


def test_nesting_past_the_bound_is_refused_without_a_recursion_error() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(NestedTooDeeply, match="nested deeper than 100 levels"):
        read_yaml(deep, LIMITS)
    with pytest.raises(DeploymentSpecError) as caught:
        load_deployment(deep)
    assert caught.value.errors == {
        "yaml": ["Refused: nested deeper than 100 levels of arrays and objects."]
    }
    assert read_yaml("[" * 100 + "]" * 100, LIMITS) is not None


def test_a_file_over_the_byte_bound_is_refused_before_it_is_parsed() -> None:
    text = "name: X\n" + "# padding\n" * 200
    with pytest.raises(DeploymentSpecError) as caught:
        load_deployment(text, YamlLimits(max_bytes=1_000))
    assert caught.value.errors == {
        "yaml": [
            f"Refused: the file is {len(text):,} bytes; deployment files may have at most "
            "1,000 (CELERIAC_MAX_YAML_BYTES)."
        ]
    }


def test_ordinary_anchors_and_merge_keys_still_load() -> None:
    text = """
name: Shared
control-plane: {}
x-env: &env {API_URL: https://example.org, RETRIES: 3}
services:
  one: {name: One, source: {type: local, name: src}, path: src/w:wf, env: *env}
  two:
    name: Two
    source: {type: local, name: src}
    path: src/w:wf
    env: {<<: *env, RETRIES: 5}
"""
    data = read_yaml(text, LIMITS)
    assert data["services"]["one"]["env"] == {"API_URL": "https://example.org", "RETRIES": 3}
    assert data["services"]["two"]["env"] == {"API_URL": "https://example.org", "RETRIES": 5}


@pytest.mark.parametrize(
    ("value", "reason"),
    [("2024-13-40", "month must be in 1..12"), ("9" * 5000, "4300 digits")],
    ids=["impossible-date", "huge-integer"],
)
def test_a_scalar_python_cannot_build_is_refused_as_yaml(value: str, reason: str) -> None:
    # Given a value the YAML grammar reads as a date or an integer that Python refuses
    text = f"name: X\ncontrol-plane: {{port: {value}}}\nservices: {{}}\n"
    # When it is loaded
    with pytest.raises(DeploymentSpecError) as caught:
        load_deployment(text)
    # Then the file is refused, not crashed on
    [message] = caught.value.errors["yaml"]
    assert message.startswith("A value cannot be read: ")
    assert reason in message
