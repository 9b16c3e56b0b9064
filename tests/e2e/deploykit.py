"""What the deployment-recipe tests share: the recipes as written, and ways to run them on this machine.

The recipes are read from where users read them: the files in ``scripts/deploy/`` and the fenced code
blocks of README.md's "Deploy" section, each of which follows a ``<!-- recipe: NAME -->`` marker. Only
host paths are ever rewritten (:func:`host_paths`). Processes run as leaders of their own process group
(:func:`process_group`), and servers that must listen where a recipe says (``0.0.0.0:8000``,
``127.0.0.1:8000``) run in a network namespace of their own (:func:`netns_argv`): nothing else on the
machine can collide with them or reach them, and the namespace disappears with its last process.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from tests.e2e.conftest import DevServer, stop_process
from tests.support import BIN, segment_files, wait_for

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEPLOY = ROOT / "scripts" / "deploy"
K8S = DEPLOY / "k8s"

# What the recipes say, and what the tests put in its place.
RECIPE_SPOOL = "/var/spool/rudder-fast"
RECIPE_BIN = "/opt/app/venv/bin/"
RECIPE_USER = "app"
# The image's user (Dockerfile's USER, compose's user:, the manifests' runAsUser).
IMAGE_UID = 10001

DELIVERY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def host_paths(text: str, spool: Path, bin_dir: Path = BIN) -> str:
    """A recipe's text with the host paths of the recipe replaced by this test's."""
    return text.replace(RECIPE_BIN, f"{bin_dir}/").replace(RECIPE_SPOOL, str(spool))


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any RUDDER_* variable (nothing leaks in by accident)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUDDER_")}
    env.update(extra)
    return env


# -- README.md's recipes ---------------------------------------------------------------------------------


def readme_recipe(name: str) -> str:
    """The fenced code block that follows ``<!-- recipe: NAME -->`` in README.md (exactly one)."""
    text = README.read_text()
    pattern = re.compile(rf"<!-- recipe: {re.escape(name)} -->\n```[a-z]*\n(.*?)^```$", re.S | re.M)
    found = pattern.findall(text)
    assert len(found) == 1, f"README.md has {len(found)} blocks marked `recipe: {name}`"
    block: str = found[0]
    return block


def deploy_section() -> str:
    readme = README.read_text()
    return readme.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]


def copy_of_checkout(dest: Path, spool: Path, bin_dir: Path = BIN) -> Path:
    """``scripts/deploy/`` copied to ``dest/scripts/deploy`` with host paths rewritten; returns ``dest``.

    A README command that starts with ``cd scripts/deploy`` runs here exactly as written.
    """
    target = dest / "scripts" / "deploy"
    target.mkdir(parents=True)
    for path in DEPLOY.iterdir():
        if path.is_file():
            (target / path.name).write_text(host_paths(path.read_text(), spool, bin_dir))
    return dest


# -- processes --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def process_group(
    cmd: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log: Path,
    stdin: int | IO[Any] | None = None,
    user: int | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd`` as the leader of a new session (its own process group), output to ``log``.

    On exit: SIGTERM to the leader, SIGKILL at the deadline, then SIGKILL to whatever is left of its
    group (forked workers): nothing it started outlives the test. ``user``: run as this uid and gid.
    """
    ids: dict[str, Any] = {} if user is None else {"user": user, "group": user, "extra_groups": []}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            start_new_session=True,
            **ids,
        )
        try:
            yield proc
        finally:
            stop_process(proc, STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.stdin is not None:
                proc.stdin.close()


def wait_exit(proc: subprocess.Popen[Any], timeout: float, log: Path) -> int:
    """The exit code within ``timeout``, else fail (the finalizer kills it)."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{proc.args!r} still running after {timeout} s:\n{log.read_text(errors='replace')[-3000:]}"
        ) from None


def require_script(name: str, package: str) -> str:
    """The path of an optional tool's console script in the venv, or skip the test saying why."""
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN} (pip install {package}: the `test` extra)")
    return str(path)


# -- network namespaces -----------------------------------------------------------------------------------


def require_netns() -> None:
    """Skip unless this process may create network namespaces (root, with unshare, nsenter and ip)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install util-linux iproute2)")


def netns_argv(cmd: Sequence[str], *, user: int | None = None) -> list[str]:
    """``cmd`` in a new network namespace with only its loopback interface up, as ``user`` if given.

    The same pid throughout (``exec``), so signals sent to the process reach ``cmd`` itself.
    """
    drop = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]
    script = 'ip link set lo up && exec "$@"'
    return ["unshare", "--net", "--", "sh", "-c", script, "sh", *drop, *cmd]


HTTP_CLIENT = """\
import json, sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
out = []
for url, headers in json.loads(sys.argv[1]):
    req = urllib.request.Request(url, headers=headers)
    try:
        with opener.open(req, timeout=10) as resp:
            out.append([resp.status, json.loads(resp.read())])
    except urllib.error.HTTPError as exc:
        out.append([exc.code, exc.read().decode(errors="replace")])
    except OSError as exc:
        out.append([None, repr(exc)])
print(json.dumps(out))
"""


def http_in_netns(pid: int, requests: Sequence[tuple[str, dict[str, str]]]) -> list[tuple[int | None, Any]]:
    """GET each (url, headers) from inside the network namespace of process ``pid``, in order.

    Each answer: (status, parsed JSON body), or (None, the error) when no connection was made.
    """
    proc = subprocess.run(
        [
            "nsenter",
            f"--net=/proc/{pid}/ns/net",
            "--",
            sys.executable,
            "-c",
            HTTP_CLIENT,
            json.dumps([[url, headers] for url, headers in requests]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    return [(status, body) for status, body in json.loads(proc.stdout)]


def wait_listening(log: Path, timeout: float = 30.0) -> tuple[str, int, int]:
    """gunicorn's ``Listening at: http://HOST:PORT (PID)`` line: (host, port, master pid)."""
    pattern = re.compile(r"Listening at: http://([0-9.]+):(\d+) \((\d+)\)")
    match = wait_for(lambda: pattern.search(log.read_text(errors="replace")), timeout=timeout)
    return match[1], int(match[2]), int(match[3])


# -- delivery checks --------------------------------------------------------------------------------------


def delivered_once(devserver: DevServer, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every one of ``ids`` arrived exactly once and nothing else arrived; the received events."""
    received = devserver.received()
    counts = collections.Counter(e["messageId"] for e in received)
    missing = set(ids) - counts.keys()
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    unexpected = counts.keys() - set(ids)
    assert not unexpected, f"{len(unexpected)} unknown events, e.g. {sorted(unexpected)[:5]}"
    duplicates = {mid: n for mid, n in counts.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} duplicated, e.g. {list(duplicates.items())[:5]}"
    assert len(received) == len(set(ids)) == len(ids)
    return received


def wait_received(devserver: DevServer, count: int, timeout: float = DELIVERY_TIMEOUT_S) -> None:
    wait_for(lambda: len(devserver.received()) >= count, timeout=timeout, interval=0.05)


def wait_no_segments(spool: Path, timeout: float = 30.0) -> None:
    """Acknowledged segments are deleted by the sender: the spool ends with none."""
    wait_for(lambda: not segment_files(spool), timeout=timeout, interval=0.05)
