"""The test suite on every Python the package declares: ``.venv/bin/nox -f scripts/noxfile.py``.

``./scripts/test`` calls this file after the lint and type checks:

- ``suite``: the whole suite on the interpreter running nox (``.venv``'s, Python 3.11 on the build
  machine; ``./scripts/bootstrap test`` made it, with the Debian packages some tests need), under
  branch coverage;
- ``coverage``: its report for the package, and a floor for the pure modules (pyproject.toml's
  ``[tool.rudder-fast]``);
- ``tests-3.X`` for each other version: what is version-sensitive (``tests/unit``, ``tests/io``) and
  the end-to-end tests that run the console scripts (:data:`E2E_SELECTION`), in an environment of
  its own (``.nox/``) with the project and its ``test`` and ``bench`` extras.

Run one of them with ``-s`` (``nox -f scripts/noxfile.py -s tests-3.12``); arguments after ``--`` go
to pytest (``-s tests-3.10 -- tests/unit/test_events.py``).

The versions are pyproject.toml's ``Programming Language :: Python :: 3.X`` classifiers. Each
interpreter is looked up in ``$RUDDER_FAST_PYTHON3_X`` (a path to it), then as ``python3.X`` on
PATH, then in pyenv's ``versions/3.X.*`` (``$PYENV_ROOT``, else ``~/.pyenv``), and must report that
version. A missing one fails its session, saying where it looked: a version is never skipped. Nothing
is downloaded.

uv builds the environments: ``uv venv`` plus ``uv pip install`` of the extras takes a few seconds
with a warm cache, where venv and pip take about a minute each (see the report in the commit that
chose it).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
VERSIONS = nox.project.python_versions(PYPROJECT)
# The interpreter running nox runs the whole suite; the others, the version-sensitive part.
DEFAULT_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
# End-to-end tests through the console scripts: rudder-fast-sender (drain, daemon, a second sender,
# SIGTERM), rudder-fast status / inspect / replay / devserver, and the metrics endpoint.
E2E_SELECTION = ["tests/e2e/test_delivery.py", "tests/e2e/test_operations.py"]
VERSION_SENSITIVE = ["tests/unit", "tests/io", *E2E_SELECTION]
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]

nox.options.default_venv_backend = "uv"
nox.options.envdir = str(ROOT / ".nox")
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["suite", "coverage", *(f"tests-{v}" for v in VERSIONS if v != DEFAULT_VERSION)]


def _version_of(python: str) -> str | None:
    """``3.X`` as ``python`` reports it, or None if it does not run (a pyenv shim of a missing one)."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_python(version: str) -> tuple[str | None, list[str]]:
    """The interpreter for ``version`` (or None), and every place looked at, for the error message."""
    variable = "RUDDER_FAST_PYTHON" + version.replace(".", "_")
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates = [
        (f"${variable}", os.environ.get(variable)),
        (f"python{version} on PATH", shutil.which(f"python{version}")),
    ]
    pattern = f"{pyenv_root}/versions/{version}.*/bin/python{version}"
    patch = re.compile(rf"/{re.escape(version)}\.(\d+)/")
    for found in sorted(glob.glob(pattern), key=lambda p: -int(m[1]) if (m := patch.search(p)) else 0):
        candidates.append((pattern, found))
    looked: list[str] = []
    for where, path in candidates:
        if not path:
            looked.append(f"{where}: not found")
            continue
        got = _version_of(path)
        if got == version:
            return path, looked
        looked.append(f"{where}: {path} is {got or 'not runnable'}")
    if not any(where == pattern for where, _ in candidates):
        looked.append(f"{pattern}: not found")
    return None, looked


def _run_timed(session: nox.Session, what: str, *args: str) -> None:
    started = time.monotonic()
    session.run(*args)
    session.log(f"{what}: {time.monotonic() - started:.0f} s")


@nox.session(venv_backend="none")
def suite(session: nox.Session) -> None:
    """The whole suite on nox's own interpreter (.venv), under branch coverage."""
    session.chdir(ROOT)
    python = sys.executable
    session.run(python, "-m", "coverage", "erase")
    command = [python, "-m", "coverage", "run", *PYTEST, *session.posargs]
    _run_timed(session, f"suite on {DEFAULT_VERSION}", *command)


@nox.session(venv_backend="none")
def coverage(session: nox.Session) -> None:
    """The suite's branch coverage of the package, and the floor of the pure modules (run after suite,
    even when a test failed: the data is complete)."""
    session.chdir(ROOT)
    tool = PYPROJECT["tool"]["rudder-fast"]
    pure = ",".join(f"rudder_fast/{name}.py" for name in tool["pure-modules"])
    python = sys.executable
    session.run(python, "-m", "coverage", "report")
    session.log(f"branch coverage of the pure modules (floor {tool['pure-coverage-floor']} %):")
    session.run(
        python, "-m", "coverage", "report", f"--include={pure}", f"--fail-under={tool['pure-coverage-floor']}"
    )


def _compat(version: str, python: str) -> None:
    """Registers ``tests-<version>``: the version-sensitive part of the suite on that Python."""

    def session_func(session: nox.Session) -> None:
        session.chdir(ROOT)
        started = time.monotonic()
        session.install("-e", f"{ROOT}[test,bench]")
        session.log(f"install: {time.monotonic() - started:.0f} s")
        _run_timed(session, f"tests on {version}", "python", *PYTEST, *(session.posargs or VERSION_SENSITIVE))

    session_func.__doc__ = f"tests/unit, tests/io and the console scripts end to end on Python {version}."
    nox.session(name=f"tests-{version}", python=python, download_python="never")(session_func)


def _missing(version: str, looked: list[str]) -> None:
    """Registers ``tests-<version>`` as a session that fails, saying where the interpreter was looked for."""

    def session_func(session: nox.Session) -> None:
        session.error(
            f"Python {version} is declared in pyproject.toml but not found:\n  " + "\n  ".join(looked)
        )

    session_func.__doc__ = f"Python {version} was not found: this session fails."
    nox.session(name=f"tests-{version}", python=False)(session_func)


for _version in VERSIONS:
    if _version == DEFAULT_VERSION:
        continue
    _python, _looked = find_python(_version)
    if _python is None:
        _missing(_version, _looked)
    else:
        _compat(_version, _python)
