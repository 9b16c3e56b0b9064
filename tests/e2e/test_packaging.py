"""The sdist and the wheel, as the package index would get them.

``python -m build`` builds both from a copy of this checkout without its local byproducts (the sdist,
then the wheel from the unpacked sdist, each in an isolated environment whose build requirements pip
installs from the configured index), and
``twine check --strict`` checks them as an upload would. Then what is inside: the wheel has the whole
package with ``py.typed``, the compiled C extension and its stub, and the licence, and nothing else (no
C source, tests, benchmarks or deployment files); the sdist has the extension's source;
the metadata's version is ``rudder_fast.__version__`` (the one place it is written: pyproject.toml
declares it dynamic); the classifiers, licence expression and project URLs are there; the long
description is README.md, and rendered as the index renders it (``readme_renderer``, twine's own), it
has no relative link or image, which would break there: the README names repository files in code
font instead, and the benchmark charts live in ``bench/results/report.md``.
"""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from pathlib import Path

import pytest

from rudder_fast import __version__
from tests.support.deploy import README, ROOT
from tests.support.processes import BIN

# Per-test timeout above the default: the sdist and wheel are built in isolated environments.
pytestmark = pytest.mark.timeout(900)

PACKAGE = ROOT / "rudder_fast"
LOCAL_BYPRODUCTS = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")
REQUIRED_CLASSIFIERS = {
    "Operating System :: POSIX :: Linux",
    "Programming Language :: Python :: 3.10",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
    "Typing :: Typed",
}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build", reason="build is not installed (the `test` extra)")
    out = tmp_path_factory.mktemp("dist")
    # A copy of the checkout without local byproducts: the build leaves its own (egg-info) in the
    # source directory, and must not depend on any of this machine's.
    src = tmp_path_factory.mktemp("src") / "rudder-fast"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*LOCAL_BYPRODUCTS))
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def only(directory: Path, pattern: str) -> Path:
    (path,) = directory.glob(pattern)
    return path


def wheel_metadata(wheel: Path) -> tuple[list[str], Message]:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        return names, email.message_from_string(zf.read(meta).decode("utf-8"))


def test_twine_check_strict_passes(dist: Path) -> None:
    twine = BIN / "twine"
    if not twine.exists():
        pytest.skip("twine is not installed (the `test` extra)")
    files = [str(only(dist, "*.whl")), str(only(dist, "*.tar.gz"))]
    proc = subprocess.run(
        [str(twine), "check", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_wheel_has_the_package_typed_and_licensed_and_nothing_else(dist: Path) -> None:
    """The wheel of this machine, where the C extension compiles: tagged for this CPython and platform,
    with the compiled module and its type stub beside the Python modules, and not its C source."""
    wheel = only(dist, "*.whl")
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert re.fullmatch(rf"rudder_fast-{re.escape(__version__)}-{tag}-{tag}-linux_\w+\.whl", wheel.name), (
        wheel.name
    )
    names, _ = wheel_metadata(wheel)
    modules = {f"rudder_fast/{p.name}" for p in PACKAGE.glob("*.py")}
    package = {n for n in names if not n.startswith(f"rudder_fast-{__version__}.dist-info/")}
    compiled = {n for n in package if re.fullmatch(rf"rudder_fast/_speedups\.cpython-{tag[2:]}-.*\.so", n)}
    assert len(compiled) == 1, package
    assert package == modules | compiled | {"rudder_fast/py.typed", "rudder_fast/_speedups.pyi"}
    assert f"rudder_fast-{__version__}.dist-info/licenses/LICENSE" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "scripts/")) or "__pycache__" in n]
    with zipfile.ZipFile(wheel) as zf:
        entry_points = zf.read(f"rudder_fast-{__version__}.dist-info/entry_points.txt").decode()
    assert "rudder-fast-sender = rudder_fast.sender:main" in entry_points
    assert "rudder-fast = rudder_fast.cli:main" in entry_points


def test_sdist_builds_from_what_it_contains(dist: Path) -> None:
    """The wheel was built from the unpacked sdist (build's default): here, what the sdist holds."""
    sdist = only(dist, "*.tar.gz")
    prefix = f"rudder_fast-{__version__}/"
    with tarfile.open(sdist) as tf:
        names = {m.name.removeprefix(prefix) for m in tf.getmembers()}
    assert {"LICENSE", "README.md", "pyproject.toml", "PKG-INFO", "rudder_fast/py.typed"} <= names
    assert {"rudder_fast/_speedups.c", "rudder_fast/_speedups.pyi"} <= names  # the extension's source
    assert not [n for n in names if n.endswith(".so")], names
    assert {f"rudder_fast/{p.name}" for p in PACKAGE.glob("*.py")} <= names


def test_metadata_version_is_written_once_and_the_index_facts_are_there(dist: Path) -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project, "one place: __version__"
    assert "version" in project["dynamic"], "one place: __version__"
    _, meta = wheel_metadata(only(dist, "*.whl"))
    assert meta["Version"] == __version__
    assert meta["License-Expression"] == "MIT"
    assert meta["License-File"] == "LICENSE"
    assert "MIT License" in (ROOT / "LICENSE").read_text().splitlines()[0]
    assert "The rudder_fast authors" in (ROOT / "LICENSE").read_text()
    assert set(meta.get_all("Classifier") or []) >= REQUIRED_CLASSIFIERS
    assert meta["Requires-Python"] == ">=3.10"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert urls, urls
    assert all(url.startswith("https://") for url in urls.values()), urls
    assert meta["Description-Content-Type"] == "text/markdown"
    description = meta.get_payload()
    assert isinstance(description, str)
    assert description.strip() == README.read_text().strip()


def test_long_description_renders_without_relative_links_or_images(dist: Path) -> None:
    renderer = pytest.importorskip("readme_renderer.markdown", reason="readme_renderer comes with twine")
    _, meta = wheel_metadata(only(dist, "*.whl"))
    html = renderer.render(meta.get_payload())
    assert html, "the long description renders"
    targets = re.findall(r'(?:href|src)="([^"]*)"', html)
    # Same-page anchors (the renderer's own, on headings) work there; any other relative target does not.
    relative = [t for t in targets if not t.startswith(("https://", "http://", "mailto:", "#"))]
    assert not relative, f"links or images that break on the package index: {relative}"
    assert "<img" not in html, "no images: the charts are in bench/results/report.md"


def test_the_wheels_types_let_mypy_catch_a_misspelt_argument(dist: Path, tmp_path: Path) -> None:
    """``emit`` is an ``Emitter`` and its calls have real signatures: a user's type checker, given the
    installed wheel (``py.typed``), catches ``propertes=`` before it runs; a correct call passes."""
    site = tmp_path / "site"
    with zipfile.ZipFile(only(dist, "*.whl")) as zf:
        zf.extractall(site)  # noqa: S202 - the wheel this test just built
    app = tmp_path / "app"
    app.mkdir()
    (app / "good.py").write_text(
        "from rudder_fast import emit\n"
        'mid: str | None = emit.track(user_id="u", event="Signed Up", properties={"plan": "pro"})\n'
    )
    (app / "typo.py").write_text(
        "from rudder_fast import emit\n"
        'emit.track(user_id="u", event="Signed Up", propertes={"plan": "pro"})\n'
    )

    def mypy(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent", name],
            capture_output=True, text=True, timeout=300, cwd=app, stdin=subprocess.DEVNULL, check=False,
            env={"MYPYPATH": str(site), "PATH": "/usr/bin"},
        )  # fmt: skip

    good = mypy("good.py")
    assert good.returncode == 0, good.stdout
    typo = mypy("typo.py")
    assert typo.returncode == 1, typo.stdout
    assert 'Unexpected keyword argument "propertes" for "track" of "Emitter"' in typo.stdout, typo.stdout


def test_help_shows_the_calls_signatures_and_docstrings() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from rudder_fast import emit; help(emit.track); help(emit.identify)"],
        capture_output=True, text=True, timeout=60, check=False, env={"PAGER": "cat", "PATH": "/usr/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (
        "track(message: 'Mapping[str, Any] | None' = None, /, *, user_id: 'str | None' = None" in proc.stdout
    )
    assert "Record that a user did something." in proc.stdout
    assert "traits: 'Mapping[str, Any] | None' = None" in proc.stdout
