"""The deployment recipes as written, and ways to run them on this machine (the deploy tests' kit).

The recipes are read from where users read them: the files in ``scripts/deploy/`` and the fenced code
blocks of README.md's "Deploy" section, each of which follows a ``<!-- recipe: NAME -->`` marker. Only
host paths are ever rewritten (:func:`host_paths`). Processes run as leaders of their own process
group (:func:`tests.support.processes.process_group`), and servers that must listen where a recipe says
(``0.0.0.0:8000``, ``127.0.0.1:8000``) run in a network namespace of their own (:func:`netns_argv`):
nothing else on the machine can collide with them or reach them, and the namespace disappears with its
last process.
Also here: the systemd unit and Kubernetes manifest readers the recipe and image tests share.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.devserver import DevServer
from tests.support.processes import BIN, REPO_ROOT
from tests.support.spool import segment_files
from tests.support.waiting import wait_for

ROOT = REPO_ROOT
README = ROOT / "README.md"
DEPLOY = ROOT / "scripts" / "deploy"
K8S = DEPLOY / "k8s"
UNIT = DEPLOY / "rudder-fast-sender.service"
APP_UNIT = DEPLOY / "app.service"
TMPFILES = DEPLOY / "rudder-fast-tmpfiles.conf"
# The sender's container in the Kubernetes manifests.
SENDER = "rudder-fast-sender"

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


# -- waiting on delivery ----------------------------------------------------------------------------------


def wait_received(devserver: DevServer, count: int, timeout: float = DELIVERY_TIMEOUT_S) -> None:
    wait_for(lambda: len(devserver.received()) >= count, timeout=timeout, interval=0.05)


def wait_no_segments(spool: Path, timeout: float = 30.0) -> None:
    """Acknowledged segments are deleted by the sender: the spool ends with none."""
    wait_for(lambda: not segment_files(spool), timeout=timeout, interval=0.05)


# -- systemd units ------------------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (comments and blank lines skipped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def command_argv(value: str, spool: Path) -> list[str]:
    """An Exec*= line as argv: special prefixes (+ - @ : !) dropped, host paths and the user mapped."""
    argv = shlex.split(host_paths(value.lstrip("+-@:!"), spool))
    for i, word in enumerate(argv[:-1]):
        if word in ("-o", "-g") and argv[i + 1] == RECIPE_USER:
            argv[i + 1] = str(os.getuid() if word == "-o" else os.getgid())
    return argv


# -- Kubernetes manifests -----------------------------------------------------------------------------------


def documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a manifest (skips the test when PyYAML is missing)."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the `test` extra)")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (item,) = [i for i in items if i["name"] == name]
    return item


def mount_of(container: dict[str, Any], volume: str) -> str:
    (mount,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume]
    assert isinstance(mount, str)
    return mount
