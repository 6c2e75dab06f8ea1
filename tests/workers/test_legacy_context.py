"""``ctx.get`` / ``ctx.set``: llama-index-workflows 1.x's state API, as the runtime installs it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from workflows import Context, Workflow, step
from workflows.events import StartEvent, StopEvent

from config.deployment import load_deployment
from tests.workers.conftest import RecordingReporter, run_step, write_file
from workers import legacy_context
from workers.runtime import ServiceRuntime


class StateWorkflow(Workflow):
    """Runs ``ev.probe`` (a coroutine function of the Context) and returns what it returns."""

    @step
    async def only(self, ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=await ev.probe(ctx))


def run_probe(probe: Any) -> Any:
    """Run ``probe(ctx)`` inside a step of a fresh workflow run; its result."""

    async def main() -> Any:
        return await StateWorkflow(timeout=10).run(probe=probe)

    return asyncio.run(main())


def test_get_and_set_are_the_stores_get_and_set() -> None:
    # Given the shim installed
    legacy_context.install()

    async def probe(ctx: Context) -> Any:
        # When a step writes with each API and reads with the other
        await ctx.set("a.b", 1)  # type: ignore[attr-defined]
        await ctx.store.set("c", [2])
        return (
            await ctx.store.get("a.b"),
            await ctx.get("c"),  # type: ignore[attr-defined]
            await ctx.get("missing", default=None),  # type: ignore[attr-defined]
            await ctx.get("missing", default=0),  # type: ignore[attr-defined]
        )

    # Then both see one state: dotted keys are paths, defaults answer for missing keys
    assert run_probe(probe) == (1, [2], None, 0)


def test_get_without_default_of_a_missing_key_raises_value_error() -> None:
    """As in 1.x: a step can catch ``ValueError`` to detect a key never set."""
    legacy_context.install()

    async def probe(ctx: Context) -> str:
        try:
            await ctx.get("never")  # type: ignore[attr-defined]
        except ValueError as exc:
            return str(exc)
        return "no error"

    assert "never" in run_probe(probe)


def test_set_accepts_make_private_and_ignores_it() -> None:
    legacy_context.install()

    async def probe(ctx: Context) -> Any:
        await ctx.set("k", "v", make_private=True)  # type: ignore[attr-defined]
        return await ctx.store.get("k")

    assert run_probe(probe) == "v"


def test_install_is_idempotent_and_keeps_a_context_method_of_that_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a workflows release whose Context has its own ``get`` (but no ``set``)
    monkeypatch.delattr(Context, "set", raising=False)

    def own_get(self: Context, key: str) -> str:
        return f"own {key}"

    monkeypatch.setattr(Context, "get", own_get, raising=False)
    # When the shim is installed twice
    legacy_context.install()
    legacy_context.install()
    # Then the release's own ``get`` stays, and ``set`` is the shim's
    assert vars(Context)["get"] is own_get
    assert vars(Context)["set"].__module__ == legacy_context.__name__


def test_the_runtime_installs_it_when_it_serves_a_deployment(
    runtime: ServiceRuntime,
    reporter: RecordingReporter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a Context without ``get`` and ``set`` (a 2.x release, before the runtime starts)
    monkeypatch.delattr(Context, "get", raising=False)
    monkeypatch.delattr(Context, "set", raising=False)
    # And a deployment whose workflow counts with them
    write_file(
        tmp_path / "src" / "workflow.py",
        """
        from workflows import Context, Workflow, step
        from workflows.events import StartEvent, StopEvent


        class Count(Workflow):
            @step
            async def count(self, ctx: Context, ev: StartEvent) -> StopEvent:
                await ctx.set("n", await ctx.get("n", default=0) + 1)
                return StopEvent(result=await ctx.store.get("n"))


        wf = Count(timeout=10)
        """,
    )
    spec = load_deployment(
        "name: Dep\ncontrol-plane: {}\nservices:\n  svc:\n    name: svc\n"
        "    source: {type: local, name: ./src}\n    path: workflow:wf\n"
    )
    # When the runtime serves it and runs a step
    runtime.install(spec, tmp_path)
    outcome = runtime.run(run_step("Dep", "svc"), reporter)
    # Then the step ran with ctx.get and ctx.set
    assert (outcome.ok, outcome.result, outcome.error) == (True, 1, None)
