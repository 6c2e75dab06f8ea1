"""Tests of a service's task controls: the ``celeriac`` block, its checks, and the policies."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import config
from config.deployment import (
    ConcurrencyLimit,
    RetryPolicy,
    ServiceControls,
    load_deployment,
    load_deployment_file,
    load_deployment_mapping,
)
from config.errors import DeploymentSpecError

EXAMPLES = Path(config.__file__).parent / "deployments"
AT = "services.fetcher.celeriac"

FETCHER = """
name: Controlled
control-plane: {}
services:
  fetcher:
    name: Fetcher
    source: {type: local, name: src}
    path: src/workflow:fetcher
    celeriac:
      time-limit: 120
      queue-timeout: 600
      retry:
        attempts: 3
        backoff: 1.0
        multiplier: 2.0
        max-backoff: 60
        jitter: 0.1
        on: [ConnectionError, httpx.HTTPError]
        not-on: [ValueError]
      concurrency:
        limit: 4
        key: user_id
        per-key: 1
"""

HTTPX_CONNECT_TIMEOUT = [
    "httpx.ConnectTimeout",
    "httpx.TimeoutException",
    "httpx.TransportError",
    "httpx.RequestError",
    "httpx.HTTPError",
    "builtins.Exception",
    "builtins.BaseException",
    "builtins.object",
]
VALUE_ERROR = ["builtins.ValueError", "builtins.Exception", "builtins.BaseException"]


def _document(**controls: Any) -> dict[str, Any]:
    """The FETCHER deployment as a mapping, its ``celeriac`` block replaced by ``controls``."""
    document = yaml.safe_load(FETCHER)
    document["services"]["fetcher"]["celeriac"] = copy.deepcopy(controls)
    return document


def _controls(**controls: Any) -> ServiceControls | None:
    """Load a deployment whose fetcher has the given ``celeriac`` block; return its controls."""
    return load_deployment_mapping(_document(**controls)).services["fetcher"].controls


def _errors(document: dict[str, Any]) -> dict[str, list[str]]:
    with pytest.raises(DeploymentSpecError) as caught:
        load_deployment_mapping(document)
    return caught.value.errors


# --- what loads -------------------------------------------------------------------------------


def test_the_documented_block_loads() -> None:
    spec = load_deployment(FETCHER)

    assert spec.services["fetcher"].controls == ServiceControls(
        time_limit=120.0,
        queue_timeout=600.0,
        retry=RetryPolicy(
            attempts=3,
            backoff=1.0,
            multiplier=2.0,
            max_backoff=60.0,
            jitter=0.1,
            on=("ConnectionError", "httpx.HTTPError"),
            not_on=("ValueError",),
        ),
        concurrency=ConcurrencyLimit(limit=4, key="user_id", per_key=1),
    )


def test_a_service_without_the_block_has_no_controls() -> None:
    text = FETCHER.split("    celeriac:")[0]

    assert load_deployment(text).services["fetcher"].controls is None


def test_a_null_block_means_no_controls() -> None:
    document = _document()
    document["services"]["fetcher"]["celeriac"] = None

    assert load_deployment_mapping(document).services["fetcher"].controls is None


def test_every_control_is_optional() -> None:
    assert _controls() == ServiceControls()
    assert _controls(**{"time-limit": 5}) == ServiceControls(time_limit=5.0)


def test_retry_defaults() -> None:
    controls = _controls(retry={"attempts": 2})

    assert controls is not None
    assert controls.retry == RetryPolicy(
        attempts=2, backoff=1.0, multiplier=2.0, max_backoff=60.0, jitter=0.1, on=(), not_on=()
    )


def test_concurrency_without_a_key() -> None:
    controls = _controls(concurrency={"limit": 1})

    assert controls is not None
    assert controls.concurrency == ConcurrencyLimit(limit=1, key=None, per_key=None)


def test_a_bare_on_key_in_yaml_is_read_as_on() -> None:
    # YAML 1.1 reads an unquoted ``on`` key as the boolean true; the block still means "on".
    text = FETCHER.replace("on: [ConnectionError, httpx.HTTPError]", "on:\n          - OSError")

    retry = load_deployment(text).services["fetcher"].controls.retry  # type: ignore[union-attr]

    assert retry is not None
    assert retry.on == ("OSError",)


def test_on_given_both_quoted_and_bare_is_refused() -> None:
    text = FETCHER.replace("on: [Conn", "'on': [OSError]\n        on: [Conn")

    with pytest.raises(DeploymentSpecError) as caught:
        load_deployment(text)

    assert "Given twice" in " ".join(caught.value.errors[f"{AT}.retry.on"])


def test_to_dict_round_trips_through_yaml_and_json() -> None:
    spec = load_deployment(FETCHER)

    document = spec.to_dict()

    assert document["services"]["fetcher"]["celeriac"]["retry"]["max-backoff"] == 60
    assert json.loads(json.dumps(document)) == document
    assert load_deployment(yaml.safe_dump(document)) == spec
    assert load_deployment_mapping(json.loads(json.dumps(document))) == spec


def test_from_dict_reads_the_json_form_without_marshmallow() -> None:
    controls = load_deployment(FETCHER).services["fetcher"].controls
    assert controls is not None

    rebuilt = ServiceControls.from_dict(json.loads(json.dumps(controls.to_dict())))

    assert rebuilt == controls
    assert ServiceControls.from_dict({}) == ServiceControls()
    assert ServiceControls.from_dict({"retry": {"attempts": 4}}).retry == RetryPolicy(attempts=4)


def test_from_dict_refuses_an_unknown_key() -> None:
    with pytest.raises(ValueError, match=r"unknown key.*in retry: attemps"):
        ServiceControls.from_dict({"retry": {"attemps": 4}})


def test_files_without_the_block_give_the_same_dict_as_before() -> None:
    spec = load_deployment_file(EXAMPLES / "quickstart" / "deployment.yml")

    assert "celeriac" not in spec.to_dict()["services"]["echo_workflow"]


def test_durable_is_read_and_round_trips_without_marshmallow() -> None:
    spec = load_deployment(
        "name: D\ncontrol-plane: {}\nservices:\n  s:\n    name: s\n"
        "    source: {type: local, name: .}\n    path: w:wf\n    celeriac: {durable: true}\n"
    )
    service = spec.services["s"]
    assert service.durable and service.controls is not None
    assert service.controls.to_dict() == {"durable": True}
    assert ServiceControls.from_dict(service.controls.to_dict()).durable
    assert not load_deployment(FETCHER).services["fetcher"].durable


def test_the_controls_example_loads() -> None:
    spec = load_deployment_file(EXAMPLES / "quickstart" / "with-controls.yml")

    controls = spec.services["echo_workflow"].controls
    assert controls is not None
    assert controls.time_limit == 30
    assert controls.retry is not None and controls.retry.attempts == 3
    assert controls.concurrency == ConcurrencyLimit(limit=4)


# --- what is refused, and where ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("controls", "field", "reason"),
    [
        ({"time-limit": 0}, "time-limit", "more than 0 and at most 2592000 seconds"),
        ({"time-limit": -1}, "time-limit", "more than 0"),
        ({"time-limit": 30 * 86400 + 1}, "time-limit", "(30 days)"),
        ({"time-limit": True}, "time-limit", "Must be a number, not a scalar (bool)."),
        ({"time-limit": "120"}, "time-limit", "Must be a number, not a scalar (str)."),
        ({"time-limit": float("inf")}, "time-limit", "Must be a finite number"),
        ({"time-limit": None}, "time-limit", "may not be null"),
        ({"time-limit": 10**400}, "time-limit", "Must be at most 9007199254740992"),
        ({"time-limit": 2**53}, "time-limit", "at most 2592000 seconds"),
        ({"queue-timeout": 0}, "queue-timeout", "more than 0"),
        ({"queue-timeout": 31 * 86400}, "queue-timeout", "at most 2592000"),
        ({"retry": {}}, "retry.attempts", "Missing data for required field."),
        ({"retry": {"attempts": 0}}, "retry.attempts", "Must be from 1 to 100"),
        ({"retry": {"attempts": 101}}, "retry.attempts", "Must be from 1 to 100"),
        ({"retry": {"attempts": 10**400}}, "retry.attempts", "Must be from 1 to 100"),
        ({"retry": {"attempts": 2.5}}, "retry.attempts", "Must be a whole number, not 2.5."),
        ({"retry": {"attempts": False}}, "retry.attempts", "whole number, not a scalar (bool)"),
        ({"retry": {"attempts": 2, "backoff": -1}}, "retry.backoff", "Must be from 0"),
        ({"retry": {"attempts": 2, "multiplier": 0.5}}, "retry.multiplier", "at least 1"),
        ({"retry": {"attempts": 2, "max-backoff": -1}}, "retry.max-backoff", "Must be from 0"),
        (
            {"retry": {"attempts": 2, "backoff": 10, "max-backoff": 5}},
            "retry.max-backoff",
            "Must be at least backoff (10), not 5.",
        ),
        (
            {"retry": {"attempts": 2, "backoff": 90}},
            "retry.backoff",
            "Must be at most max-backoff (60, its default)",
        ),
        ({"retry": {"attempts": 2, "jitter": 1.5}}, "retry.jitter", "from 0 to 1"),
        ({"retry": {"attempts": 2, "jitter": -0.1}}, "retry.jitter", "from 0 to 1"),
        ({"retry": {"attempts": 2, "on": "ValueError"}}, "retry.on", "Not a valid list."),
        ({"retry": {"attempts": 2, "on": [""]}}, "retry.on.0", "Must not be empty."),
        ({"retry": {"attempts": 2, "on": ["OSError", 3]}}, "retry.on.1", "Not a valid string."),
        (
            {"retry": {"attempts": 2, "not-on": ["httpx..HTTPError"]}},
            "retry.not-on.0",
            "Invalid error type 'httpx..HTTPError'",
        ),
        ({"retry": {"attempts": 2, "on": ["Bad Name"]}}, "retry.on.0", "Invalid error type"),
        ({"retry": {"attempts": 2, "tries": 3}}, "retry.tries", "Unknown field."),
        ({"retry": [3]}, "retry", "Invalid input type."),
        ({"concurrency": {}}, "concurrency.limit", "Missing data for required field."),
        ({"concurrency": {"limit": 0}}, "concurrency.limit", "Must be at least 1."),
        ({"concurrency": {"limit": True}}, "concurrency.limit", "not a scalar (bool)"),
        ({"concurrency": {"limit": 4, "per-key": 1}}, "concurrency.per-key", "Needs key"),
        ({"concurrency": {"limit": 4, "key": "user_id"}}, "concurrency.key", "Needs per-key"),
        ({"concurrency": {"limit": 4, "key": "", "per-key": 1}}, "concurrency.key", "not be empty"),
        ({"concurrency": {"limit": 4, "key": 7, "per-key": 1}}, "concurrency.key", "valid string"),
        (
            {"concurrency": {"limit": 4, "key": "u", "per-key": 0}},
            "concurrency.per-key",
            "Must be at least 1.",
        ),
        (
            {"concurrency": {"limit": 2, "key": "u", "per-key": 3}},
            "concurrency.per-key",
            "Must be at most limit (2)",
        ),
        ({"concurrency": {"limit": 4, "per_key": 1}}, "concurrency.per_key", "Unknown field."),
        ({"durable": "yes"}, "durable", "Not a valid boolean."),
        ({"durable": 1}, "durable", "Not a valid boolean."),
        ({"durable": None}, "durable", "may not be null"),
        ({"time_limit": 5}, "time_limit", "Unknown field."),
        ({"retries": {"attempts": 2}}, "retries", "Unknown field."),
    ],
)
def test_a_bad_value_is_refused_with_its_field_path(
    controls: dict[str, Any], field: str, reason: str
) -> None:
    errors = _errors(_document(**controls))

    assert list(errors) == [f"{AT}.{field}"]
    assert reason in " ".join(errors[f"{AT}.{field}"])


def test_a_block_that_is_not_a_mapping_is_refused() -> None:
    document = _document()
    document["services"]["fetcher"]["celeriac"] = [120]

    assert _errors(document) == {AT: ["Invalid input type."]}


def test_every_bad_control_is_reported_at_once() -> None:
    errors = _errors(_document(**{"time-limit": 0, "retry": {"attempts": 0}}))

    assert list(errors) == [f"{AT}.time-limit", f"{AT}.retry.attempts"]


def test_the_ui_takes_no_controls() -> None:
    document = _document()
    document["ui"] = {
        "name": "UI",
        "source": {"type": "local", "name": "ui"},
        "celeriac": {"time-limit": 5},
    }

    errors = _errors(document)

    assert list(errors) == ["ui.celeriac"]
    assert "The ui runs no tasks" in errors["ui.celeriac"][0]


# --- delays -----------------------------------------------------------------------------------


def test_delays_grow_by_the_multiplier_up_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(attempts=10, backoff=1.0, multiplier=2.0, max_backoff=10.0, jitter=0)

    delays = [policy.delay(n, draw=0.0) for n in range(1, 7)]

    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_jitter_scales_the_delay_by_the_draw() -> None:
    policy = RetryPolicy(attempts=5, backoff=2.0, multiplier=3.0, max_backoff=100.0, jitter=0.5)

    # Retry 2: 2 * 3 = 6 seconds, then 0.5 to 1.5 times that.
    assert policy.delay(2, draw=0.0) == pytest.approx(3.0)
    assert policy.delay(2, draw=0.5) == pytest.approx(6.0)
    assert policy.delay(2, draw=0.75) == pytest.approx(7.5)
    assert policy.delay(2, draw=0.999999) == pytest.approx(9.0, rel=1e-5)


def test_jitter_never_goes_past_the_cap() -> None:
    policy = RetryPolicy(attempts=5, backoff=8.0, multiplier=2.0, max_backoff=10.0, jitter=0.5)

    # Retry 1 is 8 seconds, up to 12 with jitter: capped at 10. Retry 2 is capped, then lowered.
    assert policy.delay(1, draw=0.99) == 10.0
    assert policy.delay(2, draw=0.0) == pytest.approx(5.0)


def test_default_policy_delays() -> None:
    policy = RetryPolicy(attempts=3)

    assert [policy.delay(n, draw=0.5) for n in (1, 2, 3, 7, 8)] == [1.0, 2.0, 4.0, 60.0, 60.0]
    assert policy.delay(1, draw=0.0) == pytest.approx(0.9)


def test_huge_growth_stays_at_the_cap() -> None:
    policy = RetryPolicy(attempts=100, backoff=1.0, multiplier=1e10, max_backoff=30.0, jitter=0)

    assert policy.delay(99, draw=0.0) == 30.0


def test_no_backoff_means_no_delay() -> None:
    policy = RetryPolicy(attempts=100, backoff=0.0, multiplier=1e300, jitter=0.5)

    assert policy.delay(99, draw=0.9) == 0.0


@pytest.mark.parametrize(("retry_number", "draw"), [(0, 0.5), (1, -0.1), (1, 1.5)])
def test_delay_refuses_arguments_out_of_range(retry_number: int, draw: float) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=3).delay(retry_number, draw)


# --- which errors are retried -----------------------------------------------------------------


def test_without_on_every_error_is_retried() -> None:
    policy = RetryPolicy(attempts=3)

    assert policy.retries(VALUE_ERROR)
    assert policy.retries(HTTPX_CONNECT_TIMEOUT)


@pytest.mark.parametrize(
    "name",
    ["httpx.HTTPError", "HTTPError", "httpx.ConnectTimeout", "ConnectTimeout", "Exception"],
)
def test_on_matches_a_class_of_the_chain_by_qualified_or_bare_name(name: str) -> None:
    policy = RetryPolicy(attempts=3, on=(name,))

    assert policy.retries(HTTPX_CONNECT_TIMEOUT)


@pytest.mark.parametrize("name", ["httpx.ValueError", "other.HTTPError", "TimeoutError", "httpx"])
def test_on_does_not_match_other_names(name: str) -> None:
    policy = RetryPolicy(attempts=3, on=(name,))

    assert not policy.retries(HTTPX_CONNECT_TIMEOUT)


def test_an_error_outside_on_is_not_retried() -> None:
    policy = RetryPolicy(attempts=3, on=("ConnectionError", "httpx.HTTPError"))

    assert not policy.retries(VALUE_ERROR)
    assert policy.retries(["builtins.ConnectionResetError", "builtins.ConnectionError"])


def test_not_on_wins_over_on() -> None:
    policy = RetryPolicy(attempts=3, on=("httpx.HTTPError",), not_on=("httpx.TimeoutException",))

    assert not policy.retries(HTTPX_CONNECT_TIMEOUT)
    assert policy.retries(["httpx.ConnectError", "httpx.TransportError", "httpx.HTTPError"])


def test_not_on_alone_retries_everything_else() -> None:
    policy = RetryPolicy(attempts=3, not_on=("ValueError",))

    assert not policy.retries(["json.decoder.JSONDecodeError", *VALUE_ERROR])
    assert policy.retries(HTTPX_CONNECT_TIMEOUT)


def test_a_nested_class_matches_by_its_bare_name() -> None:
    policy = RetryPolicy(attempts=3, on=("Busy",))

    assert policy.retries(["app.errors.Client.Busy", "builtins.Exception"])
