"""The wheel as users get it: built from this checkout, installed into a fresh virtualenv that
cannot see the editable source tree, and imported and run from there.

Everything is local: the wheel is built without build isolation (setuptools comes from the dev
extras) and installed with `--no-deps --no-index`; the framework and other dependencies are those
of the environment running the tests, reached through a plain path in a `.pth` file, which does
not run that environment's own `.pth` files (and so not its editable-install hook).
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("durable_core", "adapters")
MODULES = (
    "durable_core",
    "durable_core.cli",
    "adapters.fastapi",
    "adapters.starlette",
    "adapters.flask",
    "adapters.django",
)
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NAME = PROJECT["name"]
VERSION = PROJECT["version"]
TIMEOUT = 120

# Left out of the copy that the wheel is built from: local environments and build leftovers.
# A stale build/ would otherwise put modules that src/ no longer has into the wheel.
SKIP_AT_TOP = {".git", ".venv", "build", "dist", ".durable", ".hypothesis"}
SKIP_ANYWHERE = ("__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "node_modules")


def _ignore(folder: str, names: list[str]) -> set[str]:
    at_top = Path(folder) == ROOT
    return {
        n
        for n in names
        if n in SKIP_ANYWHERE or n.endswith(".egg-info") or (at_top and n in SKIP_AT_TOP)
    }


def _run(*args: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def _site_packages(venv: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    return Path(_run(venv / "bin" / "python", "-c", code, cwd=venv).strip())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of this checkout (the checkout itself is left untouched)."""
    base = tmp_path_factory.mktemp("packaging")
    tree = base / "checkout"
    shutil.copytree(ROOT, tree, ignore=_ignore)
    out = base / "dist"
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--quiet",
        "--wheel-dir",
        out,
        tree,
        cwd=base,
    )
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with only the wheel installed; dependencies come from ours."""
    home = tmp_path_factory.mktemp("installed") / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", home, cwd=home.parent)
    python = home / "bin" / "python"
    site = _site_packages(home)
    deps = dict.fromkeys(sysconfig.get_path(key) for key in ("purelib", "platlib"))
    (site / "_test_dependencies.pth").write_text("".join(f"{path}\n" for path in deps))
    _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-index",
        "--no-compile",
        "--quiet",
        wheel,
        cwd=home.parent,
    )
    return home


def test_wheel_is_named_durable_core_and_carries_the_durable_command(wheel: Path) -> None:
    assert NAME == "durable-core"
    assert wheel.name == f"durable_core-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        info = f"durable_core-{VERSION}.dist-info"
        metadata = HeaderParser().parsestr(zf.read(f"{info}/METADATA").decode())
        entry_points = configparser.ConfigParser()
        entry_points.read_string(zf.read(f"{info}/entry_points.txt").decode())
        names = set(zf.namelist())
    assert metadata["Name"] == "durable-core"
    assert metadata["Version"] == VERSION
    assert dict(entry_points["console_scripts"]) == {"durable": "durable_core.cli:main"}
    assert {"durable_core/py.typed", "adapters/py.typed"} <= names
    assert {
        "durable_core/orchestrator/web/index.html",
        "durable_core/orchestrator/web/app.js",
    } <= names
    # Only our two import packages are installed at the top level (no tests, examples...).
    assert {n.split("/")[0] for n in names} == {*PACKAGES, info}


def test_wheel_holds_every_file_of_the_source_packages(wheel: Path) -> None:
    """A module or data file that src/ has and the wheel lacks (a folder without __init__.py,
    a file type missing from package-data) would work in the editable install and fail once
    installed."""
    in_src = {
        path.relative_to(ROOT / "src").as_posix()
        for package in PACKAGES
        for path in (ROOT / "src" / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {n for n in zf.namelist() if n.split("/")[0] in PACKAGES}
    assert in_wheel == in_src


_PROBE = """
import importlib, importlib.metadata, json, sys
files = {name: importlib.import_module(name).__file__ for name in sys.argv[1:]}
dist = importlib.metadata.distribution("durable-core")
(script,) = [ep for ep in dist.entry_points if ep.group == "console_scripts"]
main = script.load()
print(json.dumps({
    "files": files,
    "path": sys.path,
    "dist": str(dist.locate_file("")),
    "script": [script.name, script.value],
    "main": [main.callback.__module__, sys.modules[main.callback.__module__].__file__],
    "main_is_cli_main": main is sys.modules["durable_core.cli"].main,
}))
"""


def test_installed_packages_import_from_the_install_not_from_src(venv: Path) -> None:
    site = _site_packages(venv)
    out = json.loads(_run(venv / "bin" / "python", "-c", _PROBE, *MODULES, cwd=venv))
    src = ROOT / "src"
    assert str(src) not in out["path"], "the editable source tree leaked onto sys.path"
    for name, file in out["files"].items():
        assert Path(file).is_relative_to(site), (name, file)
        assert not Path(file).resolve().is_relative_to(src), (name, file)
    assert Path(out["dist"]) == site
    assert out["script"] == ["durable", "durable_core.cli:main"]
    assert out["main"] == ["durable_core.cli", str(site / "durable_core" / "cli" / "__init__.py")]
    assert out["main_is_cli_main"] is True


def test_installed_durable_command_runs(venv: Path) -> None:
    script = venv / "bin" / "durable"
    assert str(venv / "bin" / "python") in script.read_text()  # run by the new venv's python
    assert _run(script, "--version", cwd=venv).strip() == f"durable, version {VERSION}"
