"""The deployment recipes of README's "Deploy" section, each run for real on this machine.

Every recipe file in ``scripts/deploy/`` is read by the test, and the recipe's own command and
environment are what runs, with only the host paths rewritten: the spool ``/var/spool/rudder-fast``
becomes a temporary directory, ``/opt/app/venv/bin/`` the running virtualenv, the service user ``app``
the current user. Everything listens on 127.0.0.1 only (the real ``rudder-fast devserver`` stands in for
the data plane) and every process started here is stopped here (SIGTERM, then SIGKILL of its whole
process group at a deadline). Waits are polls with deadlines, never fixed sleeps.

What is and is not tried:

* systemd: ``systemd-analyze verify`` on the unit (ExecStart pointed at the venv) when the tool exists;
  then, without systemd (PID 1 here is not systemd), the unit's ExecStartPre and ExecStart commands run
  with the unit's ``Environment=`` values plus an ``EnvironmentFile=`` in the documented format: the
  sender delivers a pre-filled spool, and the unit's ``KillSignal`` makes it exit 0 within
  ``TimeoutStopSec``. Not tried: ``User=``, the sandboxing directives, ``Restart=`` (they need systemd).
* supervisor: a real ``supervisord -n`` with the recipe's ``[program:...]`` section (plus the
  ``[supervisord]``/``[supervisorctl]`` plumbing a host's main supervisord.conf has): delivers,
  ``autorestart`` restarts a SIGKILLed sender, which then delivers new events, and
  ``supervisorctl stop`` → the sender exits 0 (``stopped: ... (exit status 0)`` in supervisord's log).
* container sidecar: no Docker engine here. ``compose.yaml`` is checked structurally (with PyYAML), and
  the sidecar is emulated by the app and the sender as two separate process groups (sessions) with
  separate working and temporary directories and separate environments, sharing only the spool
  directory, as two containers share a volume. Not tried: images, uids, the volume driver,
  ``spool-init``, ``docker compose`` itself.
* gunicorn: real gunicorn with a copy of ``gunicorn.conf.py`` (only the spool path rewritten, so its
  ``raw_env`` is what tells the workers where the spool is), ``--preload``, the Flask app of
  ``flask_app.py``, 200 requests over loopback HTTP; gunicorn stopped; ``--drain``: all delivered once.
* Celery: a real prefork worker (``-c 2``) of ``celery_app.py`` with kombu's filesystem transport
  (no broker server), 50 tasks, each emitting one event; worker stopped (SIGTERM); ``--drain``: all 50
  delivered exactly once.
* Flask: ``flask_app.py`` under Flask's test client, in its own process: one event per request,
  a blank user id refused with 400; delivered.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from tests.e2e.conftest import DevServer, Senders, fill_spool, sender_env, stop_process
from tests.support import BIN, inspect_spool, segment_files, wait_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "scripts" / "deploy"
UNIT = DEPLOY / "rudder-fast-sender.service"
SUPERVISOR_CONF = DEPLOY / "supervisor.conf"
COMPOSE = DEPLOY / "compose.yaml"
GUNICORN_CONF = DEPLOY / "gunicorn.conf.py"

# What the recipes say, and what the tests put in its place.
RECIPE_SPOOL = "/var/spool/rudder-fast"
RECIPE_BIN = "/opt/app/venv/bin/"
RECIPE_USER = "app"

DELIVERY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- helpers ----------------------------------------------------------------------------------------------


def host_paths(text: str, spool: Path) -> str:
    """A recipe's text with the host paths of the recipe replaced by this test's."""
    return text.replace(RECIPE_BIN, f"{BIN}/").replace(RECIPE_SPOOL, str(spool))


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any RUDDER_* variable (nothing leaks in by accident)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUDDER_")}
    env.update(extra)
    return env


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


def assert_spool_empty(spool: Path) -> None:
    pending, summary = inspect_spool(spool)
    assert pending == [], f"{len(pending)} events still pending: {summary}"
    assert segment_files(spool) == [], segment_files(spool)


def wait_received(devserver: DevServer, count: int, timeout: float = DELIVERY_TIMEOUT_S) -> None:
    wait_for(lambda: len(devserver.received()) >= count, timeout=timeout, interval=0.05)


@contextlib.contextmanager
def process_group(
    cmd: Sequence[str], *, env: dict[str, str], cwd: Path, log: Path, stdin: int | IO[Any] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd`` as the leader of a new session (its own process group), output to ``log``.

    On exit: SIGTERM to the leader, SIGKILL at the deadline, then SIGKILL to whatever is left of its
    group (forked workers): nothing it started outlives the test.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            start_new_session=True,
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


def pythonpath(*dirs: Path) -> str:
    return os.pathsep.join(str(d) for d in dirs)


def require_script(name: str, package: str) -> str:
    """The path of an optional tool's console script in the venv, or skip the test saying why."""
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN} (pip install {package}: the `test` extra)")
    return str(path)


# -- systemd ----------------------------------------------------------------------------------------------


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


def parse_assignments(words: Sequence[str]) -> dict[str, str]:
    env = {}
    for word in words:
        key, sep, value = word.partition("=")
        assert sep and key, f"not an assignment: {word!r}"
        env[key] = value
    return env


def parse_env_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= format (the subset the recipe documents): KEY=VALUE lines."""
    lines = [ln.strip() for ln in text.splitlines()]
    return parse_assignments([w for ln in lines if ln and ln[0] not in "#;" for w in shlex.split(ln)])


def command_argv(value: str, spool: Path) -> list[str]:
    """An Exec*= line as argv: special prefixes (+ - @ : !) dropped, host paths and the user mapped."""
    argv = shlex.split(host_paths(value.lstrip("+-@:!"), spool))
    for i, word in enumerate(argv[:-1]):
        if word in ("-o", "-g") and argv[i + 1] == RECIPE_USER:
            argv[i + 1] = str(os.getuid() if word == "-o" else os.getgid())
    return argv


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert match, f"unsupported time span {value!r}"
    return float(match[1]) * (60 if match[2] == "min" else 1)


def test_systemd_unit_says_what_readme_promises() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]
    assert service["Restart"] == ["always"]
    assert service["User"] == [RECIPE_USER] and service["Group"] == [RECIPE_USER]
    env = parse_assignments([w for v in service["Environment"] for w in shlex.split(v)])
    assert env == {"RUDDER_FAST_SPOOL_DIR": RECIPE_SPOOL}
    assert service["EnvironmentFile"] == ["/etc/rudder-fast/sender.env"]
    assert service["ExecStart"] == [f"{RECIPE_BIN}rudder-fast-sender"]
    assert RECIPE_SPOOL in service["ReadWritePaths"][0].split()
    assert service["KillSignal"] == ["SIGTERM"]
    assert seconds(service["TimeoutStopSec"][0]) >= 10  # the sender needs up to 5 s after SIGTERM
    assert "network-online.target" in unit["Unit"]["Wants"][0]


def readme_block(recipe: Path, lang: str) -> str:
    """The first ```lang block of README's "Deploy" section after the recipe's file name."""
    readme = (ROOT / "README.md").read_text()
    deploy = readme.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    after = deploy.split(f"`scripts/deploy/{recipe.name}`", 1)[1]
    return after.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def code_lines(text: str, comment: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(comment)]


def test_readme_deploy_snippets_are_the_files() -> None:
    # systemd, supervisor: the same directives with the same values (comments aside).
    assert parse_unit(readme_block(UNIT, "ini")) == parse_unit(UNIT.read_text())
    assert code_lines(readme_block(SUPERVISOR_CONF, "ini"), ";") == code_lines(
        SUPERVISOR_CONF.read_text(), ";"
    )
    # gunicorn, Flask, Celery: the snippet appears verbatim in the file.
    for recipe in (GUNICORN_CONF, DEPLOY / "flask_app.py", DEPLOY / "celery_app.py"):
        assert readme_block(recipe, "python") in recipe.read_text(), recipe.name
    # compose: every key shown is in the file with the same value (the file has more).
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: compose.yaml not parsed")

    def subset(shown: Any, full: Any, where: str) -> None:
        if isinstance(shown, dict):
            assert isinstance(full, dict), where
            for key, value in shown.items():
                assert key in full, f"{where}.{key} is not in compose.yaml"
                subset(value, full[key], f"{where}.{key}")
        else:
            assert shown == full, f"{where}: README {shown!r} != compose.yaml {full!r}"

    subset(yaml.safe_load(readme_block(COMPOSE, "yaml")), yaml.safe_load(COMPOSE.read_text()), "compose")


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = tmp_path / UNIT.name
    # Only ExecStart's path is changed (verify checks that it exists and is executable).
    unit.write_text(UNIT.read_text().replace(RECIPE_BIN, f"{BIN}/"))
    proc = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # verify exits 0 even on an unknown directive or a bad value: it only warns, naming the file.
    assert UNIT.name not in output, output


def test_systemd_exec_start_delivers_and_kill_signal_exits_0(
    tmp_path: Path, spool_dir: Path, devserver: DevServer
) -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    env = clean_env()
    for value in service["Environment"]:
        env.update(parse_assignments(shlex.split(host_paths(value, spool_dir))))
    assert env["RUDDER_FAST_SPOOL_DIR"] == str(spool_dir)
    # The EnvironmentFile, in the format the unit's comments document.
    env_file = tmp_path / "sender.env"
    env_file.write_text(f"RUDDER_WRITE_KEY=systemd-key\nRUDDER_DATA_PLANE_URL={devserver.url}\n")
    env_file.chmod(0o600)
    env.update(parse_env_file(env_file.read_text()))

    # ExecStartPre creates the spool (owned by the service user, 0700); the app then writes into it.
    for value in service.get("ExecStartPre", []):
        subprocess.run(command_argv(value, spool_dir), env=env, check=True, timeout=30)
    assert spool_dir.is_dir() and spool_dir.stat().st_mode & 0o777 == 0o700
    produced = fill_spool(spool_dir, 2, 500)

    (exec_start,) = service["ExecStart"]
    log = tmp_path / "systemd-sender.log"
    with process_group(command_argv(exec_start, spool_dir), env=env, cwd=tmp_path, log=log) as proc:
        wait_received(devserver, len(produced.ids))
        wait_for(lambda: not inspect_spool(spool_dir)[0], timeout=DELIVERY_TIMEOUT_S, interval=0.2)
        kill_signal = signal.Signals[service["KillSignal"][0]]
        started = time.monotonic()
        proc.send_signal(kill_signal)
        assert wait_exit(proc, seconds(service["TimeoutStopSec"][0]), log) == 0, log.read_text()
        stopped_in = time.monotonic() - started
    delivered_once(devserver, produced.ids)
    assert_spool_empty(spool_dir)
    assert stopped_in < seconds(service["TimeoutStopSec"][0])


# -- supervisor -------------------------------------------------------------------------------------------


def supervisor_conf(tmp_path: Path, spool: Path) -> Path:
    """A complete supervisord.conf: what a host's main file has, plus the recipe's program section."""
    program = host_paths(SUPERVISOR_CONF.read_text(), spool)
    user = pwd.getpwuid(os.getuid()).pw_name
    program, n = re.subn(rf"(?m)^user={RECIPE_USER}$", f"user={user}", program)
    assert n == 1, "the recipe names its user"
    (tmp_path / "childlogs").mkdir()
    main = textwrap.dedent(
        f"""\
        [unix_http_server]
        file={tmp_path}/supervisor.sock
        chmod=0700

        [supervisord]
        logfile={tmp_path}/supervisord.log
        pidfile={tmp_path}/supervisord.pid
        childlogdir={tmp_path}/childlogs
        loglevel=info

        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

        [supervisorctl]
        serverurl=unix://{tmp_path}/supervisor.sock

        """
    )
    conf = tmp_path / "supervisord.conf"
    conf.write_text(main + program)
    return conf


def test_supervisor_program_delivers_restarts_and_stops_with_exit_0(
    tmp_path: Path, spool_dir: Path, devserver: DevServer
) -> None:
    supervisord = require_script("supervisord", "supervisor")
    supervisorctl = require_script("supervisorctl", "supervisor")
    conf = supervisor_conf(tmp_path, spool_dir)
    first = fill_spool(spool_dir, 2, 500)
    # supervisord expands %(ENV_RUDDER_WRITE_KEY)s and %(ENV_RUDDER_DATA_PLANE_URL)s from its own
    # environment; no RUDDER_FAST_SPOOL_DIR: the recipe's --spool-dir must be what counts.
    env = clean_env(RUDDER_WRITE_KEY="supervisor-key", RUDDER_DATA_PLANE_URL=devserver.url)
    log = tmp_path / "supervisord.log"

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [supervisorctl, "-c", str(conf), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=STOP_TIMEOUT_S + 15,
            stdin=subprocess.DEVNULL,
        )

    def running_pid() -> int:
        status = ctl("status", "rudder-fast-sender").stdout
        match = re.search(r"RUNNING\s+pid (\d+)", status)
        return int(match[1]) if match else 0

    cmd = [supervisord, "-n", "-c", str(conf)]
    with process_group(cmd, env=env, cwd=tmp_path, log=tmp_path / "supervisord.out") as proc:
        wait_received(devserver, len(first.ids))
        pid = wait_for(running_pid, timeout=30, interval=0.1)
        # Everything acknowledged and the ledger committed: a SIGKILL now cannot cause a resend.
        wait_for(lambda: not inspect_spool(spool_dir)[0], timeout=DELIVERY_TIMEOUT_S, interval=0.2)

        # autorestart=true: a killed sender comes back (after startsecs), and delivers what is new.
        os.kill(pid, signal.SIGKILL)
        new_pid = wait_for(lambda: (p := running_pid()) != pid and p, timeout=30, interval=0.1)
        second = fill_spool(spool_dir, 1, 300)
        wait_received(devserver, len(first.ids) + len(second.ids))

        stop = ctl("stop", "rudder-fast-sender")
        assert stop.returncode == 0 and "rudder-fast-sender: stopped" in stop.stdout, stop
        wait_for(lambda: "stopped: rudder-fast-sender (exit status 0)" in log.read_text(), timeout=10)
        with pytest.raises(ProcessLookupError):
            os.kill(new_pid, 0)  # gone and reaped by supervisord
        assert "rudder-fast-sender" in ctl("status").stdout

        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, STOP_TIMEOUT_S, log) == 0
    text = log.read_text()
    assert "exited: rudder-fast-sender (terminated by SIGKILL" in text, text
    delivered_once(devserver, first.ids + second.ids)
    assert_spool_empty(spool_dir)


# -- container sidecar -----------------------------------------------------------------------------------


def test_compose_file_shares_the_spool_volume_and_uid() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: compose.yaml not parsed")
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    app, sender = services["app"], services["rudder-fast-sender"]
    assert app["image"] == sender["image"], "the sender is the app's own rudder-fast version"

    def spool_mounts(service: dict[str, Any]) -> list[str]:
        return [m for m in service["volumes"] if m.split(":")[1] == RECIPE_SPOOL]

    (app_mount,), (sender_mount,) = spool_mounts(app), spool_mounts(sender)
    volume = app_mount.split(":")[0]
    assert app_mount == sender_mount, "one named volume, at the same path in both"
    assert volume in doc["volumes"] and not volume.startswith(("/", ".")), "a named volume, not a bind"
    assert app["user"] == sender["user"] and app["user"].split(":")[0] not in ("0", "root")
    assert app["environment"]["RUDDER_FAST_SPOOL_DIR"] == RECIPE_SPOOL
    env = sender["environment"]
    assert env["RUDDER_FAST_SPOOL_DIR"] == RECIPE_SPOOL
    assert env["RUDDER_WRITE_KEY"].startswith("${RUDDER_WRITE_KEY"), "the key comes from outside"
    assert env["RUDDER_DATA_PLANE_URL"].startswith("${RUDDER_DATA_PLANE_URL")
    assert sender["command"][0] == "rudder-fast-sender"
    assert sender["stop_signal"] == "SIGTERM" and seconds(sender["stop_grace_period"]) >= 10
    # A fresh named volume belongs to root: a one-shot service hands it to the app's uid first.
    init = services["spool-init"]
    assert spool_mounts(init) == [app_mount]
    assert f"chown {app['user']} {RECIPE_SPOOL}" in init["command"][-1]
    assert f"chmod 0700 {RECIPE_SPOOL}" in init["command"][-1]
    for service in (app, sender):
        assert service["depends_on"]["spool-init"]["condition"] == "service_completed_successfully"


APP_SCRIPT = """\
import json, os, sys
from rudder_fast import emit

ids = [emit.track(user_id=f"user-{i}", event="Sidecar Event", properties={"n": i}) for i in range(N)]
with open("ids.tmp", "w") as f:
    json.dump(ids, f)
os.replace("ids.tmp", "ids.json")
sys.stdin.read()  # keep running (holding its segment's writer lock) until the test closes stdin
"""


def test_sidecar_emulated_as_two_process_groups_sharing_only_the_spool(
    tmp_path: Path, devserver: DevServer
) -> None:
    """No Docker engine here: two sessions, separate dirs and environments, one shared spool dir."""
    volume = tmp_path / "volume"  # the named volume, mounted at RECIPE_SPOOL in both "containers"
    app_root, sender_root = tmp_path / "app", tmp_path / "sender"
    for root in (app_root, sender_root):
        (root / "tmp").mkdir(parents=True)
    base = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
    spool_env = {"RUDDER_FAST_SPOOL_DIR": str(volume)}
    sender_cmd = [str(BIN / "rudder-fast-sender")]
    sender_env_ = {
        **base,
        **spool_env,
        "HOME": str(sender_root),
        "TMPDIR": str(sender_root / "tmp"),
        "RUDDER_WRITE_KEY": "sidecar-key",
        "RUDDER_DATA_PLANE_URL": devserver.url,
    }
    app_env = {**base, **spool_env, "HOME": str(app_root), "TMPDIR": str(app_root / "tmp")}
    count = 2_000
    sender_log = tmp_path / "sender-container.log"
    with process_group(sender_cmd, env=sender_env_, cwd=sender_root, log=sender_log) as sender:
        app_cmd = [sys.executable, "-c", APP_SCRIPT.replace("range(N)", f"range({count})")]
        with process_group(
            app_cmd, env=app_env, cwd=app_root, log=tmp_path / "app-container.log", stdin=subprocess.PIPE
        ) as app:
            ids_file = app_root / "ids.json"
            wait_for(ids_file.exists, timeout=60)
            ids = json.loads(ids_file.read_text())
            # Delivered while the app still runs: the sender tails the live segment through the volume.
            wait_received(devserver, count)
            assert app.poll() is None
            assert app.stdin is not None
            app.stdin.close()  # "docker stop app"
            assert wait_exit(app, STOP_TIMEOUT_S, tmp_path / "app-container.log") == 0
        # The app's writer is gone: the sender sees it through the volume and deletes the finished file.
        wait_for(lambda: not segment_files(volume), timeout=30, interval=0.05)
        sender.send_signal(signal.SIGTERM)  # compose's stop_signal
        assert wait_exit(sender, 15, sender_log) == 0
    assert None not in ids
    delivered_once(devserver, ids)
    assert_spool_empty(volume)


# -- gunicorn + Flask -------------------------------------------------------------------------------------


def get_json(url: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with _OPENER.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_gunicorn_conf_preload_flask_app_delivers_every_request(
    tmp_path: Path, spool_dir: Path, devserver: DevServer, senders: Senders
) -> None:
    gunicorn = require_script("gunicorn", "gunicorn")
    pytest.importorskip("flask", reason="Flask is not installed (the `test` extra)")
    conf_text = GUNICORN_CONF.read_text()
    assert f'raw_env = ["RUDDER_FAST_SPOOL_DIR={RECIPE_SPOOL}"]' in conf_text
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(host_paths(conf_text, spool_dir))  # the spool path is the only change
    log = tmp_path / "gunicorn.log"
    cmd = [
        gunicorn,
        "-c",
        str(conf),
        "--preload",
        "--bind",
        "127.0.0.1:0",
        "--chdir",
        str(DEPLOY),
        "flask_app:app",
    ]
    requests = 200
    ids = []
    # No RUDDER_FAST_SPOOL_DIR in gunicorn's environment: raw_env is what the workers see.
    with process_group(cmd, env=clean_env(), cwd=tmp_path, log=log) as proc:
        pattern = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
        port = int(wait_for(lambda: pattern.search(log.read_text()), timeout=30)[1])
        for i in range(requests):
            status, body = get_json(f"http://127.0.0.1:{port}/items/{i}", {"X-User-Id": f"user-{i}"})
            assert status == 200, body
            assert body["item_id"] == str(i) and body["messageId"], body
            ids.append(body["messageId"])
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, STOP_TIMEOUT_S, log) == 0, log.read_text()
    writers = {seg.name.split("-")[1] for seg in segment_files(spool_dir)}  # <nonce>-<pid>-<n>.seg
    assert writers, "the workers wrote to the spool named by raw_env"

    result = senders.run(["--drain"], env=sender_env(spool_dir, devserver.url), timeout=60)
    assert result.returncode == 0, result.stderr
    received = delivered_once(devserver, ids)
    by_item = {e["properties"]["item_id"]: e for e in received}
    assert set(by_item) == {str(i) for i in range(requests)}
    assert all(by_item[str(i)]["userId"] == f"user-{i}" for i in range(requests))
    assert all(e["event"] == "Item Viewed" for e in received)
    assert_spool_empty(spool_dir)


FLASK_CLIENT_SCRIPT = """\
import json
from flask_app import app

client = app.test_client()
ids = []
for i in range(20):
    resp = client.get(f"/items/sku-{i}", headers={"X-User-Id": f"user-{i}"} if i % 4 else {})
    assert resp.status_code == 200, resp.get_data()
    ids.append(resp.get_json()["messageId"])
refused = client.get("/items/x", headers={"X-User-Id": "   "})
print(json.dumps({"ids": ids, "refused": [refused.status_code, refused.get_json()]}))
"""


def test_flask_app_under_test_client_emits_per_request(
    tmp_path: Path, spool_dir: Path, devserver: DevServer, senders: Senders
) -> None:
    """In its own process: the default emitter of the pytest process is never touched."""
    pytest.importorskip("flask", reason="Flask is not installed (the `test` extra)")
    env = clean_env(RUDDER_FAST_SPOOL_DIR=str(spool_dir), PYTHONPATH=pythonpath(DEPLOY))
    proc = subprocess.run(
        [sys.executable, "-c", FLASK_CLIENT_SCRIPT],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    status, body = report["refused"]
    assert status == 400 and body["field"] == "user_id", report["refused"]

    result = senders.run(["--drain"], env=sender_env(spool_dir, devserver.url), timeout=60)
    assert result.returncode == 0, result.stderr
    received = delivered_once(devserver, report["ids"])
    anonymous = [e for e in received if "userId" not in e or not e["userId"]]
    assert len(anonymous) == 5 and all(e["anonymousId"] == "anonymous" for e in anonymous)
    assert_spool_empty(spool_dir)


# -- Celery prefork workers -------------------------------------------------------------------------------

CELERY_SETTINGS = """\
broker_url = "filesystem://"
broker_transport_options = {{
    "data_folder_in": {folder!r},
    "data_folder_out": {folder!r},
    "control_folder": {folder!r},  # else kombu writes a control/ folder into the working directory
}}
broker_connection_retry_on_startup = True
worker_enable_remote_control = False  # no fanout/pidbox: the filesystem transport is point-to-point
task_ignore_result = True
"""

ENQUEUE_SCRIPT = """\
from celery_app import order_completed

for i in range(N):
    order_completed.delay(f"user-{i}", f"order-{i}", 10.0 + i)
"""


def test_celery_prefork_worker_tasks_deliver_exactly_once(
    tmp_path: Path, spool_dir: Path, devserver: DevServer, senders: Senders
) -> None:
    celery = require_script("celery", "celery")
    tasks = 50
    folder = tmp_path / "broker"
    folder.mkdir()
    settings_dir = tmp_path / "settings"
    settings_dir.mkdir()
    (settings_dir / "celeryconfig_e2e.py").write_text(CELERY_SETTINGS.format(folder=str(folder)))
    env = clean_env(
        RUDDER_FAST_SPOOL_DIR=str(spool_dir),
        PYTHONPATH=pythonpath(DEPLOY, settings_dir),
        CELERY_CONFIG_MODULE="celeryconfig_e2e",
    )
    env.pop("CELERY_BROKER_URL", None)
    cmd = [celery, "-A", "celery_app", "worker", "--pool", "prefork", "-c", "2", "--loglevel", "INFO"]
    cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    log = tmp_path / "celery-worker.log"
    with process_group(cmd, env=env, cwd=tmp_path, log=log) as worker:
        enqueue = subprocess.run(
            [sys.executable, "-c", ENQUEUE_SCRIPT.replace("range(N)", f"range({tasks})")],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert enqueue.returncode == 0, enqueue.stderr
        wait_for(lambda: len(inspect_spool(spool_dir)[0]) >= tasks, timeout=60, interval=0.25)
        worker.send_signal(signal.SIGTERM)  # warm shutdown; the finalizer SIGKILLs the group at a deadline
        assert wait_exit(worker, STOP_TIMEOUT_S, log) == 0, log.read_text()[-3000:]
    pending, _ = inspect_spool(spool_dir)
    worker_log = log.read_text()
    assert worker_log.count("succeeded in") == tasks, worker_log[-3000:]
    assert "ForkPoolWorker-" in worker_log

    result = senders.run(["--drain"], env=sender_env(spool_dir, devserver.url), timeout=60)
    assert result.returncode == 0, result.stderr
    received = delivered_once(devserver, [e["messageId"] for e in pending])
    orders = collections.Counter(e["properties"]["order_id"] for e in received)
    assert orders == collections.Counter(f"order-{i}" for i in range(tasks))
    assert all(e["event"] == "Order Completed" for e in received)
    producers = {e["messageId"].rsplit("-", 1)[0] for e in received}
    assert 1 <= len(producers) <= 2, producers  # the prefork children wrote, one segment family each
    assert_spool_empty(spool_dir)
