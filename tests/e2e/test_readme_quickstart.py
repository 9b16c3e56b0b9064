"""The README's five-minute quick start, run as a newcomer runs it: its shell block, line by line, in one
bash session in an empty directory, with the project's own environment on ``PATH``.

What differs from the page, and why: the two install lines are skipped (this checkout is the installed
package; the name is not fetched from the index here); the port is a free one instead of 8080; and at
the end the session waits until the event is in ``received.jsonl``, then stops the background commands,
as the page says (``kill %1 %2``). The ``doctor`` line runs as written: its ``--wait`` covers the sender
and devserver started just before it (run once, without it, it used to fail while they came up).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import orjson

from tests.support.deploy import README
from tests.support.processes import BIN, clean_env, free_port

MARKER = "<!-- quickstart -->"


def quickstart_block() -> list[str]:
    text = README.read_text()
    assert MARKER in text, "the README lost its quick start marker"
    after = text.split(MARKER, 1)[1]
    match = re.match(r"\s*```\n(.*?)```", after, re.S)
    assert match, "no shell block right after the quick start marker"
    return [line for line in match[1].splitlines() if line.strip()]


def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    lines = quickstart_block()
    assert lines[0].startswith("python3 -m venv "), lines[0]
    assert lines[1] == "pip install rudder-fast", lines[1]
    port = str(free_port())
    script = [
        "set -euo pipefail",
        "trap 'kill $(jobs -p) 2>/dev/null || true; wait || true' EXIT",
    ]
    for line in lines[2:]:
        script.append(line.replace("8080", port))
    script += [
        "for _ in $(seq 300); do grep -q 'Signed Up' received.jsonl 2>/dev/null && break; sleep 0.1; done",
        "kill %1 %2",
    ]
    env = clean_env(PATH=f"{BIN}:/usr/bin:/bin", HOME=str(tmp_path))
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    message_id = re.search(r"^([0-9a-f]{16}-\d+)$", out, re.M)
    assert message_id, out
    assert "rudder-fast doctor: healthy: nothing to fix" in out, out
    assert re.search(r"^sender     (ok|starting) \(pid \d+\)", out, re.M), out
    received = [orjson.loads(line) for line in (tmp_path / "received.jsonl").read_text().splitlines()]
    assert [(e["messageId"], e["event"], e["userId"]) for e in received] == [
        (message_id[1], "Signed Up", "u1")
    ]
