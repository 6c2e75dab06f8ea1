"""A workflow server's start event, turned into a task's run keyword arguments."""

from __future__ import annotations

import pytest

from app.control.handlers import start_input
from app.errors import InvalidInput


def test_a_bare_start_event_is_the_run_arguments() -> None:
    assert start_input({"message": "hi"}) == {"message": "hi"}


def test_a_bare_start_event_may_have_a_field_called_value() -> None:
    assert start_input({"value": 3, "name": "x"}) == {"value": 3, "name": "x"}


def test_an_envelope_gives_its_value_with_extra_fields_spread_out() -> None:
    envelope = {
        "type": "StartEvent",
        "qualified_name": "workflows.events.StartEvent",
        "value": {"_data": {"message": "hi"}},
    }
    assert start_input(envelope, {"more": 1}) == {"more": 1, "message": "hi"}


def test_an_envelope_without_a_value_has_no_fields() -> None:
    assert (
        start_input({"type": "StartEvent", "qualified_name": "workflows.events.StartEvent"}) == {}
    )


def test_an_envelope_whose_value_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        start_input({"type": "StartEvent", "value": [1]})
    assert "start_event.value" in caught.value.errors
