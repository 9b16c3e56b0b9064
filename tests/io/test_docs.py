"""The documentation stays true where a machine can tell.

- README.md's options table lists exactly the options ``rudder-fast-sender --help`` knows, each with the
  environment variable the help names for it;
- every drop reason the code counts (a ``DROP_*`` string constant anywhere in the package) is in
  README.md and docs/spool-format.md;
- every repository path and ``rudder_fast`` name README.md and docs/ quote exists;
- the byte formats docs/spool-format.md and docs/wire.md quote are the code's own constants;
- nothing cites a design document the repository does not hold.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
from pathlib import Path

import pytest

from rudder_fast import batching, config, framing, quota, retry, transport
from tests.support.processes import REPO_ROOT, console_script

README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
PACKAGE = REPO_ROOT / "rudder_fast"
# What a quoted path may start with: the repository's top level.
TOP_LEVEL = ("rudder_fast/", "tests/", "bench/", "scripts/", "docs/", ".ci/")
TOP_FILES = ("README.md", "LICENSE", "pyproject.toml")

# Citations of design documents by names the repository does not hold (none: each is a file in docs/).
STALE_CITATIONS: dict[str, set[str]] = {}


def _sender_help() -> str:
    proc = subprocess.run(
        [console_script("rudder-fast-sender"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return proc.stdout


def help_options(text: str) -> dict[str, str | None]:
    """``{option: its environment variable or None}`` from ``--help``'s option blocks."""
    options: dict[str, str | None] = {}
    current: str | None = None
    for line in text.splitlines():
        start = re.match(r"^  (--[a-z][a-z-]*)", line)
        if start:
            current = start[1]
            options[current] = None
        if current is not None and (var := re.search(r"\[\$([A-Z_]+)\]", line)):
            options[current] = var[1]
    options.pop("--help", None)  # argparse's own, and the program's version: not settings
    options.pop("--version", None)
    return options


def readme_options() -> dict[str, str | None]:
    """``{option: environment variable or None}`` from the README's table of the sender's options."""
    section = README.read_text().split("\n## The sender\n", 1)[1].split("\n## ", 1)[0]
    options: dict[str, str | None] = {}
    for row in section.splitlines():
        if not row.startswith("| `--"):
            continue
        cells = [c.strip() for c in row.strip("|").split("|")]
        env = re.match(r"`([A-Z_]+)", cells[1])
        for option in re.findall(r"`(--[a-z][a-z-]*)`", cells[0]):
            options[option] = env[1] if env else None
    return options


def test_the_readme_lists_every_sender_option_and_no_other() -> None:
    documented = readme_options()
    known = help_options(_sender_help())
    assert known, "no option found in --help"
    assert sorted(documented) == sorted(known), "README.md's table of sender options and --help differ"
    for option, variable in known.items():
        if variable is not None:
            assert documented[option] == variable, f"{option}: the README says {documented[option]}"


def drop_reasons() -> set[str]:
    """Every string constant named ``DROP_*`` at the top level of a module of the package."""
    reasons: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            target, value = None, None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign):
                target, value = node.target, node.value
            if (
                isinstance(target, ast.Name)
                and target.id.startswith("DROP_")
                and isinstance(value, ast.Constant)
                and isinstance(value.value, str)
            ):
                reasons.add(value.value)
    return reasons


@pytest.mark.parametrize("doc", [README, REPO_ROOT / "docs" / "spool-format.md"], ids=lambda p: p.name)
def test_every_drop_reason_is_documented(doc: Path) -> None:
    reasons = drop_reasons()
    assert {"quota", "disk_error"} <= reasons, reasons  # the scan finds them
    text = doc.read_text()
    assert {r for r in reasons if f"`{r}`" not in text} == set()


def quoted(text: str) -> set[str]:
    return set(re.findall(r"`([^`\s]+)`", text))


def repository_paths(text: str) -> set[str]:
    """The code-font tokens of ``text`` that name a file or directory of the repository."""
    return {
        token.rstrip(".,:")
        for token in quoted(text)
        if (token.startswith(TOP_LEVEL) or token in TOP_FILES) and not re.search(r"[*<>{}]|YYYY", token)
    }


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_the_paths_a_document_names_exist(doc: Path) -> None:
    paths = repository_paths(doc.read_text())
    assert paths, f"{doc.name} names no repository path (the scan is broken)"
    assert {p for p in paths if not (REPO_ROOT / p).exists()} == set()


def resolves(name: str) -> bool:
    """Whether ``rudder_fast.a.b`` is a module, or an attribute reached from the longest module prefix."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_the_rudder_fast_names_a_document_quotes_exist(doc: Path) -> None:
    names = {
        t.rstrip(".,:()") for t in quoted(doc.read_text()) if re.fullmatch(r"rudder_fast(\.\w+)+\(?\)?", t)
    }
    assert {n for n in names if not resolves(n)} == set()


def test_the_spool_format_document_quotes_the_codes_constants() -> None:
    text = (REPO_ROOT / "docs" / "spool-format.md").read_text()
    facts = [
        framing.MAGIC.decode().replace("\0", "\\0"),
        f"### Header ({framing.HEADER_SIZE} bytes)",
        framing.HEADER.format,
        framing.FRAME_HEAD.format,
        f"{framing.SYNC:#010x}",
        f"{framing.MAX_PAYLOAD:,}",
        f"| {framing.FRAME_EVENT} | event",
        f"| {framing.FRAME_DROPS} | drop marker",
        f"| {framing.FRAME_SEAL} | seal",
        quota.CONTROL.format,
        quota.CONTROL_MAGIC.decode(),
        f"{quota.CONTROL_SIZE} bytes",
        f"{int(quota.RESUME_FRACTION * 100)} %",
        f"within {quota.STALE_NS // 1_000_000_000} s",
        "rudder-fast-ledger 1 ",
    ]
    assert [fact for fact in facts if fact not in text] == []


def test_the_wire_document_quotes_the_codes_constants() -> None:
    text = (REPO_ROOT / "docs" / "wire.md").read_text()
    facts = [
        f"{batching.SERVER_MAX_BODY:,} bytes",
        f"`--max-batch-bytes` ({config.MAX_BATCH_BYTES:,}",
        f"`--max-batch-events` ({config.MAX_BATCH_EVENTS:,})",
        f"`--linger` ({config.LINGER_S:g} s)",
        f"level {transport.GZIP_LEVEL}",
        f"{retry.BACKOFF_BASE_S:g} s doubling to {retry.BACKOFF_CAP_S:g} s",
        f"every {retry.HALT_RETRY_S:g} s",
        f"every {retry.DISABLED_RETRY_S:g} s",
        f"up to {retry.RETRY_AFTER_MAX_S:g} s",
        f"`{transport.BATCH_PATH}`",
    ]
    assert [fact for fact in facts if fact not in text] == []


def test_nothing_cites_a_design_document_the_repository_does_not_hold() -> None:
    cited: dict[str, set[str]] = {}
    for path in [*PACKAGE.glob("*.py"), *(REPO_ROOT / "tests").rglob("*.py"), README, *DOCS]:
        rel = str(path.relative_to(REPO_ROOT))
        names = set(re.findall(r"\b([A-Z]+\.md)\b", path.read_text())) - {"README.md"}
        if names:
            cited[rel] = names
    cited.pop("tests/io/test_docs.py", None)  # this file names them to find them
    assert cited == STALE_CITATIONS


def test_the_modules_the_design_document_describes_exist() -> None:
    text = (REPO_ROOT / "docs" / "design.md").read_text()
    modules = {t for t in quoted(text) if re.fullmatch(r"\w+\.py", t)}
    assert len(modules) > 10, modules
    assert {m for m in modules if not (PACKAGE / m).is_file()} == set()
