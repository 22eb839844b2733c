"""The README's first app (`Durable("shop")`, embedded, production mode) as a user runs it, under
uvicorn and gunicorn in a process of its own: `ctx.logger` and the run's lines show on its
stderr with logging left as the server configures it, once each despite replays; the `durable`
command run in the app's directory finds its signing key, and says in one line what to set
when it cannot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests import ports

DEADLINE = 30.0
BIN = Path(sys.executable).parent

APP = """
from fastapi import FastAPI

from adapters.fastapi import Serve
from durable_core import Context, Durable, TriggerEvent

durable = Durable("shop")


@durable.function(id="hello", trigger=TriggerEvent("shop/hello"))
async def hello(ctx: Context) -> str:
    ctx.logger.info("hello from the shop")
    await ctx.step.run("one", lambda: 1)
    await ctx.step.run("two", lambda: 2)
    return "done"


web = FastAPI()
Serve(web, durable)
"""


def free_port() -> int:
    return ports.free_port()


def wait_for(what: str, probe: object, deadline: float = DEADLINE) -> object:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        got = probe()  # type: ignore[operator]
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    return {**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


class App:
    def __init__(self, directory: Path, url: str, log: Path) -> None:
        self.directory, self.url, self.log = directory, url, log

    def cli(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "durable"), *args],
            cwd=cwd or self.directory,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )


SERVERS = {
    "uvicorn": lambda port: [str(BIN / "uvicorn"), "app:web", "--port", str(port)],
    "gunicorn": lambda port: [
        str(BIN / "gunicorn"), "app:web", "-k", "uvicorn.workers.UvicornWorker",
        "-w", "1", "-b", f"127.0.0.1:{port}",
    ],
}  # fmt: skip


@pytest.fixture(params=sorted(SERVERS))
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    directory = tmp_path / "shop"
    directory.mkdir()
    (directory / "app.py").write_text(APP)
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            SERVERS[request.param](port), cwd=directory, env=clean_env(), stdout=out, stderr=out
        )
    running = App(directory, f"http://127.0.0.1:{port}/durable", log)
    try:
        wait_for("the app to start", lambda: "embedded orchestrator started" in log.read_text())
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_cli_finds_the_key_and_the_log_shows_the_run(app: App) -> None:
    assert (app.directory / ".durable" / "signing-key").exists()
    sent = app.cli("send", "shop/hello", "--url", app.url)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("sent shop/hello: ")

    def completed() -> str | None:
        listed = app.cli("runs", "--url", app.url).stdout
        line = next((ln for ln in listed.splitlines() if "shop-hello" in ln), "")
        return line.split()[0] if "completed" in line else None

    run_id = wait_for("the run to complete", completed)
    shown = app.cli("run", str(run_id), "--url", app.url)
    assert shown.returncode == 0 and "one" in shown.stdout and '"done"' in shown.stdout

    def logged() -> str | None:
        text = app.log.read_text()
        return text if f"run {run_id} of shop-hello completed" in text else None

    text = str(wait_for("the completed line", logged))
    assert text.count("hello from the shop") == 1, text  # the function ran three times
    assert f"run {run_id} of shop-hello: step 'two' done" in text


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_cli_says_what_to_set(app: App, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    no_key = one_line(app.cli("runs", "--url", app.url, cwd=elsewhere))
    assert "needs its signing key (HTTP 401)" in no_key and "DURABLE_SIGNING_KEY" in no_key
    assert ".durable/signing-key" in no_key

    wrong = one_line(app.cli("runs", "--url", app.url, "--signing-key", "ab" * 32))
    assert "refused the signing key" in wrong and "--signing-key" in wrong

    key = one_line(app.cli("send", "shop/hello", "--url", app.url, "--event-key", "nope"))
    assert "refused the event key 'nope' (HTTP 401)" in key and "DURABLE_EVENT_KEY" in key

    root = app.url.removesuffix("/durable")
    lost = one_line(app.cli("runs", "--url", root))
    assert f"nothing answers {root}/v1/runs (HTTP 404)" in lost and "/durable" in lost

    gone = one_line(app.cli("runs", "--url", f"http://127.0.0.1:{free_port()}"))
    assert "cannot reach the orchestrator" in gone and "DURABLE_ORCHESTRATOR_URL" in gone
