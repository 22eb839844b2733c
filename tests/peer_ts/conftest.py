"""The TypeScript peer harness: an app written with the npm `inngest` SDK (pinned in
package.json), served by its `inngest/node` handler under node, and our orchestrator
(`durable dev`), each a real subprocess on loopback. It reuses the Python peer's harness.

The node packages are installed with `npm ci` when `node_modules` is missing or older than the
lockfile (`make test` does it too). Without node or npm the tests are skipped, except under
`CI=true`, where that fails the run.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from peer.conftest import FINISHED, START_DEADLINE, Peer, Process, free_port

__all__ = ["FINISHED", "FUNCTION_IDS", "TsPeer"]

HERE = Path(__file__).parent
APP_SCRIPT = HERE / "app.js"
LOCKFILE = HERE / "package-lock.json"
STAMP = HERE / "node_modules" / ".installed"
DURABLE_BIN = Path(sys.executable).with_name("durable")
SERVE_PATH = "/api/inngest"
MODES = ("on", "off")
NAMES = (
    "loop", "plain", "async", "sleep", "sleep-until", "wait", "sent", "sender", "child",
    "invoker", "parallel", "race", "flaky", "later", "doomed", "signal", "signaller", "serial",
    "limited",
)  # fmt: skip
#: Every function the app registers: each name with checkpointing on and off, and the
#: `onFailure` handler the SDK registers as a function of its own.
FUNCTION_IDS = {
    f"peer-ts-{name}-{mode}{suffix}"
    for mode in MODES
    for name in NAMES
    for suffix in ("", "-failure")
    if suffix == "" or name == "doomed"
}


def _missing(what: str) -> None:
    message = f"{what}: the TypeScript peer tests need node and npm"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def install_node_packages() -> Path:
    """`npm ci` unless `node_modules` is newer than the lockfile; the path of `node`."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _missing("node" if node is None else "npm")
    assert node is not None and npm is not None
    # Parallel test processes install once: the first takes the lock, the others wait for it.
    with open(HERE / ".npm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not STAMP.exists() or STAMP.stat().st_mtime < LOCKFILE.stat().st_mtime:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
            STAMP.touch()
    return Path(node)


class TsPeer(Peer):
    """The orchestrator's API, and the app's own URL (for its durable endpoint)."""

    def __init__(self, url: str, app_url: str, processes: list[Process]) -> None:
        super().__init__(url, processes)
        self.app_url = app_url


@pytest.fixture(scope="module")
def peer_ts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TsPeer]:
    """The node app and `durable dev` syncing it, both ready to run."""
    node = install_node_packages()
    tmp = tmp_path_factory.mktemp("peer_ts")
    orch_port, app_port = free_port(), free_port()
    orch_url = f"http://127.0.0.1:{orch_port}"
    app_url = f"http://127.0.0.1:{app_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INNGEST_", "DURABLE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    processes: list[Process] = []
    peer = None
    try:
        app_env = {**env, "PEER_APP_PORT": str(app_port), "PEER_ORCHESTRATOR_URL": orch_url}
        processes.append(
            Process("node app", [str(node), str(APP_SCRIPT)], app_env, tmp / "app.log")
        )
        dev = [str(DURABLE_BIN), "dev", "--port", str(orch_port), "--db", str(tmp / "dev.db")]
        dev += ["--fast-retries", "-u", app_url + SERVE_PATH]
        processes.append(Process("durable dev", dev, env, tmp / "orchestrator.log"))
        peer = TsPeer(orch_url, app_url, processes)

        def synced() -> set[str] | None:
            try:
                rows = peer.http.get("/v1/functions").json()["data"]
            except httpx.TransportError:
                return None
            ids = {f["function_id"] for f in rows}
            return ids if ids >= FUNCTION_IDS else None

        registered = peer.until("the app's functions to be synced", synced, START_DEADLINE)
        assert registered == FUNCTION_IDS
        yield peer
    finally:
        if peer is not None:
            peer.http.close()
        for p in reversed(processes):
            p.stop()


@pytest.fixture(params=MODES, ids=lambda m: f"checkpointing-{m}")
def mode(request: pytest.FixtureRequest) -> str:
    """The SDK's `checkpointing` option of the functions a test drives: on or off."""
    return str(request.param)
