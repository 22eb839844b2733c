"""When an app traces: the rule of `durable_core.tracing`, the OTLP exporter it sets up from
the environment, and an app without OpenTelemetry installed. Whatever touches the process's
global tracer provider (which can be set only once) runs in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from durable_core import ConfigError, Durable

CHILD_DEADLINE = 120.0

# A child process: an app with one function of two steps, run in embedded mode (SQLite in
# DURABLE_DIR); it prints what it saw as JSON on its last line.
APP = """
import asyncio, json, os, sys
from durable_core import Context, Durable, TriggerEvent
from durable_core.orchestrator.embedded import Embedded

def make(**options):
    d = Durable("shop", dev=True, **options)

    @d.function(id="order", trigger=TriggerEvent("shop/order"))
    async def order(ctx: Context) -> int:
        return await ctx.step.run("a", lambda: 1) + await ctx.step.run("b", lambda: 2)

    return d, order

async def run_once(d, fn):
    emb = Embedded(d, directory=os.environ["DURABLE_DIR"])
    await emb.start()
    try:
        return await d.invoke_async(fn, {}, wait=True, timeout=60)
    finally:
        await emb.stop()
"""


def child(script: str, tmp_path: Path, **env: str) -> dict[str, Any]:
    """Run `APP` + `script` in a fresh interpreter; the JSON it printed last."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ.update(DURABLE_DIR=str(tmp_path / "durable"), **env)
    code = APP + textwrap.dedent(script)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CHILD_DEADLINE,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_without_opentelemetry_installed_apps_run_and_tracing_true_says_what_to_install(
    tmp_path: Path,
) -> None:
    seen = child(
        """
        sys.modules["opentelemetry"] = None  # as if it were not installed: importing it fails
        from durable_core import ConfigError
        out = {}
        d, order = make()
        out["default"] = asyncio.run(run_once(d, order))
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
        d, order = make()
        out["endpoint set"] = asyncio.run(run_once(d, order))
        try:
            make(tracing=True)
        except ConfigError as err:
            out["tracing=True"] = str(err)
        print(json.dumps(out))
        """,
        tmp_path,
    )
    assert seen == {
        "default": 3,
        "endpoint set": 3,
        "tracing=True": "tracing=True needs OpenTelemetry: pip install 'durable-core[otel]'",
    }


def test_off_imports_nothing_and_by_default_an_app_traces_once_a_tracer_provider_is_set(
    tmp_path: Path,
) -> None:
    seen = child(
        """
        d, order = make(tracing=False)
        off = asyncio.run(run_once(d, order))
        imported = sorted(m for m in sys.modules if m.startswith("opentelemetry"))

        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        d, order = make()
        before = asyncio.run(run_once(d, order))  # no provider yet: not traced
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        after = asyncio.run(run_once(d, order))
        names = [s.name for s in exporter.get_finished_spans()]
        print(json.dumps({"outputs": [off, before, after], "imported": imported, "spans": names}))
        """,
        tmp_path,
    )
    assert seen == {
        "outputs": [3, 3, 3],
        "imported": [],
        "spans": ["step a", "step b", "run shop-order"],
    }


class Collector:
    """An OTLP/HTTP trace receiver on loopback: the export requests it was sent."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/traces", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        with self.lock:
            self.requests.append(message)
        return Response(b"", media_type="application/x-protobuf")

    def spans(self) -> list[tuple[str, str]]:
        """(service.name, span name) of every span received."""
        out = []
        for message in self.requests:
            for resource_spans in message.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    out += [(attrs.get("service.name", ""), s.name) for s in scope.spans]
        return out


def test_an_otlp_endpoint_in_the_environment_exports_the_runs_spans(
    tmp_path: Path, uvicorn_server: Any
) -> None:
    collector = Collector()
    server = uvicorn_server(collector.app)
    seen = child(
        """
        from opentelemetry import trace
        d, order = make()
        out = asyncio.run(run_once(d, order))
        user = trace.get_tracer("shop")  # the app's own spans go to the same exporter
        with user.start_as_current_span("outside any run"):
            pass
        print(json.dumps({"out": out}))
        """,
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=server.base_url,
    )
    assert seen == {"out": 3}
    # The batch processor flushes when the process exits, so the spans are in by now.
    assert sorted(collector.spans()) == [
        ("shop", "outside any run"),
        ("shop", "run shop-order"),
        ("shop", "step a"),
        ("shop", "step b"),
    ]


def test_the_argument_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, spans: Any
) -> None:
    monkeypatch.setenv("DURABLE_TRACING", "0")
    assert Durable("shop").tracing.tracer() is None
    assert Durable("shop", tracing=spans.provider).tracing.tracer() is not None


def test_otel_sdk_disabled_keeps_the_default_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert Durable("shop").tracing.tracer() is None


def test_bad_settings_say_what_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"tracing='yes': pass True, False or an OpenTelemetry"):
        Durable("shop", tracing="yes")  # type: ignore[arg-type]
    monkeypatch.setenv("DURABLE_TRACING", "maybe")
    with pytest.raises(ConfigError, match=r"DURABLE_TRACING='maybe': set it to 1 \(on\) or 0"):
        Durable("shop")
