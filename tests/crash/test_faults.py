"""`DURABLE_FAULT` kills the process at the n-th time it reaches the named point, and nowhere
else; `DURABLE_FAULT_MARK` makes it fire once among processes; a misspelt point is an error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# Reaches `step.ran` five times, with other points in between, printing a count before each.
SCRIPT = """
from durable_core._faults import fault
for i in range(1, 6):
    fault("claim.committed")
    print(i, flush=True)
    fault("step.ran")
    fault("answer.committed")
print("done", flush=True)
"""


def run(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_without_the_variable_nothing_happens() -> None:
    done = run()
    assert (done.returncode, done.stdout.split()) == (0, ["1", "2", "3", "4", "5", "done"])


def test_the_process_dies_by_sigkill_at_the_nth_time_it_reaches_the_point(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    done = run(DURABLE_FAULT="step.ran:3", DURABLE_FAULT_MARK=str(mark))
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split() == ["1", "2", "3"]
    assert "fault point step.ran reached (3)" in done.stderr
    name, count, pid = mark.read_text().split()
    assert (name, count) == ("step.ran", "3") and int(pid) > 0


def test_without_a_count_the_first_time() -> None:
    done = run(DURABLE_FAULT="answer.committed")
    assert (done.returncode, done.stdout.split()) == (-signal.SIGKILL, ["1"])


def test_a_mark_left_by_another_process_disarms_the_fault(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    mark.write_text("step.ran 3 1\n")
    done = run(DURABLE_FAULT="step.ran:3", DURABLE_FAULT_MARK=str(mark))
    assert (done.returncode, done.stdout.split()[-1]) == (0, "done")
    assert mark.read_text() == "step.ran 3 1\n"


@pytest.mark.parametrize("spec", ["step.rann", "step.ran:0", "step.ran:x", "step.ran:-1"])
def test_an_unknown_point_or_bad_count_fails_at_import(spec: str) -> None:
    done = run(DURABLE_FAULT=spec)
    assert done.returncode == 1
    assert "ValueError" in done.stderr and f"DURABLE_FAULT={spec!r}" in done.stderr
