"""The deployment recipes of README's "Deploy" section, each run for real on this machine.

Every recipe file in ``scripts/deploy/`` is read by the test, and README's commands are taken from its
fenced code blocks (each after a ``<!-- recipe: NAME -->`` marker) and run as written, with only the
host paths rewritten: the spool ``/var/spool/rudder-fast`` becomes a temporary directory,
``/opt/app/venv/bin/`` the running virtualenv, the service user ``app`` the current user. Servers that
must listen where a recipe says (gunicorn's ``127.0.0.1:8000``) run in a network namespace of their own;
everything else listens on 127.0.0.1 only (the real ``rudder-fast devserver`` stands in for the data
plane) and every process started here is stopped here (SIGTERM, then SIGKILL of its whole process
group at a deadline). Waits are polls with deadlines, never fixed sleeps.

What is and is not tried:

* systemd: ``systemd-analyze verify`` on the sender's and the app's units (ExecStart pointed at the
  venv) when the tool exists; ``systemd-tmpfiles --create --root=DIR`` on the tmpfiles.d entry (the
  spool is created with the service user's uid and gid, mode 0700); the exit codes the real sender
  gives for a bad configuration and for a spool that already has a sender are the unit's
  ``RestartPreventExitStatus=`` (and supervisor's ``exitcodes``), a SIGKILL's is not. Then, without
  systemd (PID 1 here is not systemd), the unit's ExecStartPre and ExecStart commands run with the
  unit's ``Environment=`` values plus an ``EnvironmentFile=`` in the documented format: the sender
  delivers a pre-filled spool, and the unit's ``KillSignal`` makes it exit 0 within ``TimeoutStopSec``.
  Not tried here: ``User=``, the sandboxing directives, ``Restart=`` and the ordering of units (they
  need systemd); ``tests/e2e/test_deploy_image.py`` runs the app unit as a non-root user after the
  tmpfiles entry, and shows the first event dropped without it.
* supervisor: a real ``supervisord -n`` with the recipe's ``[program:...]`` section (plus the
  ``[supervisord]``/``[supervisorctl]`` plumbing a host's main supervisord.conf has): delivers,
  ``autorestart`` restarts a SIGKILLed sender, which then delivers new events, and
  ``supervisorctl stop`` → the sender exits 0 (``stopped: ... (exit status 0)`` in supervisord's log).
  With another sender holding the spool, the program exits 3, is retried ``startretries`` times and
  left FATAL: no restart loop.
* container sidecar: no Docker engine here. ``compose.yaml`` is checked structurally (with PyYAML), and
  the sidecar is emulated by the app and the sender as two separate process groups (sessions) with
  separate working and temporary directories and separate environments, sharing only the spool
  directory, as two containers share a volume. The image, its user and its published port are tried
  in ``tests/e2e/test_deploy_image.py``. Not tried: the volume driver, ``docker compose`` itself.
* gunicorn: README's command block, run by bash exactly as written from a copy of the checkout's
  ``scripts/deploy`` (only the spool path rewritten, so ``gunicorn.conf.py``'s default is what
  tells the workers where the spool is; and again with the spool named by the environment, which
  wins over that default), in a network namespace where the default ``127.0.0.1:8000``
  is free; 200 requests over HTTP from inside that namespace, and one with a blank user id, which
  still gets 200 while the refusal is logged; gunicorn stopped (SIGTERM); ``--drain``: all delivered
  once.
* Celery: README's worker command, run by bash exactly as written (``cd scripts/deploy``, prefork,
  ``-c 4``) with kombu's filesystem transport named by ``CELERY_CONFIG_MODULE`` (no broker server),
  50 tasks, each emitting one event; worker stopped (SIGTERM); ``--drain``: all 50 delivered once.
* Flask: ``flask_app.py`` under Flask's test client, in its own process: one event per request; a
  blank user id is logged and the page is still 200; delivered.
"""

from __future__ import annotations

import collections
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.delivery import assert_spool_empty, delivered_once
from tests.support.deploy import (
    APP_UNIT,
    DELIVERY_TIMEOUT_S,
    DEPLOY,
    K8S,
    RECIPE_BIN,
    RECIPE_SPOOL,
    RECIPE_USER,
    ROOT,
    STOP_TIMEOUT_S,
    TMPFILES,
    UNIT,
    command_argv,
    copy_of_checkout,
    deploy_section,
    host_paths,
    http_in_netns,
    netns_argv,
    parse_unit,
    readme_recipe,
    require_netns,
    wait_listening,
    wait_received,
)
from tests.support.devserver import DevServer
from tests.support.processes import BIN, clean_env, process_group, require_script, wait_exit
from tests.support.producers import fill_spool
from tests.support.sender import Senders, sender_env
from tests.support.spool import inspect_spool, segment_files
from tests.support.waiting import wait_for

SUPERVISOR_CONF = DEPLOY / "supervisor.conf"
COMPOSE = DEPLOY / "compose.yaml"
GUNICORN_CONF = DEPLOY / "gunicorn.conf.py"

# rudder-fast-sender's exit codes (README: "Exit codes").
EXIT_USAGE, EXIT_LOCKED = 2, 3


def pythonpath(*dirs: Path) -> str:
    return os.pathsep.join(str(d) for d in dirs)


# -- systemd ----------------------------------------------------------------------------------------------


def parse_assignments(words: Sequence[str]) -> dict[str, str]:
    env = {}
    for word in words:
        key, sep, value = word.partition("=")
        assert sep, f"not an assignment: {word!r}"
        assert key, f"not an assignment: {word!r}"
        env[key] = value
    return env


def parse_env_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= format (the subset the recipe documents): KEY=VALUE lines."""
    lines = [ln.strip() for ln in text.splitlines()]
    return parse_assignments([w for ln in lines if ln and ln[0] not in "#;" for w in shlex.split(ln)])


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert match, f"unsupported time span {value!r}"
    return float(match[1]) * (60 if match[2] == "min" else 1)


def tmpfiles_entries() -> list[list[str]]:
    return [ln.split() for ln in TMPFILES.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def restart_prevented(service: dict[str, list[str]]) -> set[int]:
    return {int(code) for value in service.get("RestartPreventExitStatus", []) for code in value.split()}


def test_systemd_units_say_what_readme_promises() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]
    # Restarted after a crash or a kill, never on the exits a restart cannot fix (no restart loop).
    assert service["Restart"] == ["on-failure"]
    assert {EXIT_USAGE, EXIT_LOCKED} <= restart_prevented(service)
    assert service["User"] == [RECIPE_USER]
    assert service["Group"] == [RECIPE_USER]
    env = parse_assignments([w for v in service["Environment"] for w in shlex.split(v)])
    assert env == {"RUDDER_FAST_SPOOL_DIR": RECIPE_SPOOL}
    assert service["EnvironmentFile"] == ["/etc/rudder-fast/sender.env"]
    assert service["ExecStart"] == [f"{RECIPE_BIN}rudder-fast-sender"]
    assert RECIPE_SPOOL in service["ReadWritePaths"][0].split()
    assert service["KillSignal"] == ["SIGTERM"]
    assert seconds(service["TimeoutStopSec"][0]) >= 10  # the sender needs up to 5 s after SIGTERM
    assert "network-online.target" in unit["Unit"]["Wants"][0]

    # The spool exists at boot, for the service user, private to it.
    assert tmpfiles_entries() == [["d", RECIPE_SPOOL, "0700", RECIPE_USER, RECIPE_USER, "-"]]

    # The app: same user and spool, started after the sender (whose ExecStartPre made the spool), and
    # not stopped with it (Wants=, not Requires=: analytics never takes the app down).
    app = parse_unit(APP_UNIT.read_text())
    assert UNIT.name in app["Unit"]["Wants"][0].split()
    assert UNIT.name in app["Unit"]["After"][0].split()
    assert "Requires" not in app["Unit"]
    assert "BindsTo" not in app["Unit"]
    app_service = app["Service"]
    assert app_service["User"] == service["User"]
    assert app_service["Group"] == service["Group"]
    assert app_service["Environment"] == service["Environment"]
    gunicorn_command = readme_recipe("gunicorn-run").splitlines()[-1]
    assert app_service["ExecStart"] == [f"{RECIPE_BIN}{gunicorn_command}"], "README's gunicorn command"
    assert seconds(app_service["TimeoutStopSec"][0]) > 15, "longer than gunicorn's graceful_timeout"


def code_lines(text: str, comment: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(comment)]


def subset(shown: Any, full: Any, where: str) -> None:
    """Every key shown is in ``full`` with the same value (``full`` may have more)."""
    if isinstance(shown, dict):
        assert isinstance(full, dict), where
        for key, value in shown.items():
            assert key in full, f"{where}.{key} is not in the file"
            subset(value, full[key], f"{where}.{key}")
    else:
        assert shown == full, f"{where}: README {shown!r} != file {full!r}"


def test_readme_deploy_snippets_are_the_files() -> None:
    # systemd, supervisor, tmpfiles.d: the same directives with the same values (comments aside).
    assert parse_unit(readme_recipe("systemd-sender-unit")) == parse_unit(UNIT.read_text())
    subset(parse_unit(readme_recipe("systemd-app-unit")), parse_unit(APP_UNIT.read_text()), "app.service")
    assert code_lines(readme_recipe("supervisor"), ";") == code_lines(SUPERVISOR_CONF.read_text(), ";")
    assert code_lines(readme_recipe("tmpfiles"), "#") == code_lines(TMPFILES.read_text(), "#")
    # gunicorn, Flask, Celery: the snippet appears verbatim in the file.
    for name, recipe in (
        ("gunicorn-conf", GUNICORN_CONF),
        ("flask", DEPLOY / "flask_app.py"),
        ("celery", DEPLOY / "celery_app.py"),
    ):
        assert readme_recipe(name) in recipe.read_text(), recipe.name
    # compose: every key shown is in the file with the same value (the file has more).
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: compose.yaml not parsed")
    subset(yaml.safe_load(readme_recipe("compose")), yaml.safe_load(COMPOSE.read_text()), "compose")


def test_readme_deploy_commands_name_files_that_exist() -> None:
    """Every ``scripts/deploy/...`` path in README's Deploy section, commands included, is a real file."""
    named = set(re.findall(r"scripts/deploy/[\w./-]+", deploy_section()))
    assert named, "the Deploy section names its files"
    missing = [p for p in named if not (ROOT / p.rstrip(".")).is_file() and not (ROOT / p).is_dir()]
    assert not missing, missing
    # And every recipe file is shown or named there.
    shown = {Path(path.rstrip(".")).name for path in named}
    for path in [*DEPLOY.iterdir(), *K8S.iterdir()]:
        if path.is_file() and path.suffix not in (".pyc",) and path.name != "Dockerfile.dockerignore":
            assert path.name in shown or f"`{path.name}`" in deploy_section(), f"{path.name} is not in README"
    install = readme_recipe("systemd-install")
    assert f"cp scripts/deploy/{TMPFILES.name} /etc/tmpfiles.d/" in install
    assert f"cp scripts/deploy/{UNIT.name} scripts/deploy/{APP_UNIT.name} /etc/systemd/system/" in install


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    units = []
    for source in (UNIT, APP_UNIT):
        unit = tmp_path / source.name
        # Only the ExecStart paths change (verify checks that they exist and are executable).
        unit.write_text(source.read_text().replace(RECIPE_BIN, f"{BIN}/"))
        units.append(str(unit))
    proc = subprocess.run(
        [tool, "verify", *units], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # verify exits 0 even on an unknown directive or a bad value: it only warns, naming the file.
    assert UNIT.name not in output, output
    assert APP_UNIT.name not in output, output


def test_tmpfiles_entry_creates_the_spool_for_the_service_user(tmp_path: Path) -> None:
    tool = shutil.which("systemd-tmpfiles")
    if tool is None:
        pytest.skip("systemd-tmpfiles is not installed (apt-get install systemd)")
    if os.geteuid() != 0:
        pytest.skip("creating a directory for another user needs root")
    # --root: the entry applied to a directory tree of its own, whose /etc/passwd names the user.
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    uid, gid = 4242, 4343
    (root / "etc" / "passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\n{RECIPE_USER}:x:{uid}:{gid}::/:/bin/sh\n"
    )
    (root / "etc" / "group").write_text(f"root:x:0:\n{RECIPE_USER}:x:{gid}:\n")
    proc = subprocess.run(
        [tool, "--create", f"--root={root}", str(TMPFILES)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    spool = root / RECIPE_SPOOL.lstrip("/")
    st = spool.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, 0o700)


def test_exit_codes_a_restart_cannot_fix_are_not_restarted(
    tmp_path: Path, spool_dir: Path, devserver: DevServer, senders: Senders
) -> None:
    """The real sender's exit codes for a bad configuration and a held spool stop the restarts."""
    prevented = restart_prevented(parse_unit(UNIT.read_text())["Service"])
    program = SUPERVISOR_CONF.read_text()
    (exitcodes,) = re.findall(r"(?m)^exitcodes=(.*)$", program)
    expected = {int(code) for code in exitcodes.split(",")}
    assert re.search(r"(?m)^autorestart=unexpected$", program), "exitcodes decide the restarts"

    no_key = senders.run([], env=sender_env(spool_dir, devserver.url, write_key=None), timeout=30)
    assert "write key" in no_key.stderr, no_key
    assert no_key.returncode in prevented & expected, no_key

    holder = senders.start([], env=sender_env(spool_dir, devserver.url))
    wait_for(lambda: sender_running(spool_dir), timeout=30, interval=0.1)
    second = senders.run([], env=sender_env(spool_dir, devserver.url), timeout=30)
    assert "already running" in second.stderr, second
    assert second.returncode in prevented & expected, second

    # A crash or a kill is restarted: its status is none of those.
    holder.proc.send_signal(signal.SIGKILL)
    assert holder.wait(10) == -signal.SIGKILL
    assert 0 in expected, "a sender asked to stop (exit 0) is not restarted by supervisor"


def sender_running(spool: Path) -> bool:
    """A sender holds the spool (its lock is taken: a second sender would exit 3)."""
    proc = subprocess.run(
        [str(BIN / "rudder-fast"), "status", "--json", "--spool-dir", str(spool)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        return False
    return bool(json.loads(proc.stdout).get("sender", {}).get("pid"))


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
    assert spool_dir.is_dir()
    assert spool_dir.stat().st_mode & 0o777 == 0o700
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


def supervisorctl(conf: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_script("supervisorctl", "supervisor"), "-c", str(conf), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=STOP_TIMEOUT_S + 15,
        stdin=subprocess.DEVNULL,
    )


def test_supervisor_program_delivers_restarts_and_stops_with_exit_0(
    tmp_path: Path, spool_dir: Path, devserver: DevServer
) -> None:
    supervisord = require_script("supervisord", "supervisor")
    conf = supervisor_conf(tmp_path, spool_dir)
    first = fill_spool(spool_dir, 2, 500)
    # supervisord expands %(ENV_RUDDER_WRITE_KEY)s and %(ENV_RUDDER_DATA_PLANE_URL)s from its own
    # environment; no RUDDER_FAST_SPOOL_DIR: the recipe's --spool-dir must be what counts.
    env = clean_env(RUDDER_WRITE_KEY="supervisor-key", RUDDER_DATA_PLANE_URL=devserver.url)
    log = tmp_path / "supervisord.log"

    def running_pid() -> int:
        status = supervisorctl(conf, env, "status", "rudder-fast-sender").stdout
        match = re.search(r"RUNNING\s+pid (\d+)", status)
        return int(match[1]) if match else 0

    cmd = [supervisord, "-n", "-c", str(conf)]
    with process_group(cmd, env=env, cwd=tmp_path, log=tmp_path / "supervisord.out") as proc:
        wait_received(devserver, len(first.ids))
        pid = wait_for(running_pid, timeout=30, interval=0.1)
        # Everything acknowledged and the ledger committed: a SIGKILL now cannot cause a resend.
        wait_for(lambda: not inspect_spool(spool_dir)[0], timeout=DELIVERY_TIMEOUT_S, interval=0.2)

        # autorestart: a killed sender comes back (after startsecs), and delivers what is new.
        os.kill(pid, signal.SIGKILL)
        new_pid = wait_for(lambda: (p := running_pid()) != pid and p, timeout=30, interval=0.1)
        second = fill_spool(spool_dir, 1, 300)
        wait_received(devserver, len(first.ids) + len(second.ids))

        stop = supervisorctl(conf, env, "stop", "rudder-fast-sender")
        assert stop.returncode == 0, stop
        assert "rudder-fast-sender: stopped" in stop.stdout, stop
        wait_for(lambda: "stopped: rudder-fast-sender (exit status 0)" in log.read_text(), timeout=10)
        with pytest.raises(ProcessLookupError):
            os.kill(new_pid, 0)  # gone and reaped by supervisord
        assert "rudder-fast-sender" in supervisorctl(conf, env, "status").stdout

        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, STOP_TIMEOUT_S, log) == 0
    text = log.read_text()
    assert "exited: rudder-fast-sender (terminated by SIGKILL" in text, text
    delivered_once(devserver, first.ids + second.ids)
    assert_spool_empty(spool_dir)


def test_supervisor_gives_up_on_a_spool_that_already_has_a_sender(
    tmp_path: Path, spool_dir: Path, devserver: DevServer, senders: Senders
) -> None:
    """Exit 3 is not a reason to restart forever, whenever it comes.

    Within ``startsecs`` it counts as a failed start: retried ``startretries`` times (3), then FATAL;
    after it (a slow start on a busy machine), 3 is one of ``exitcodes``: EXITED, not restarted.
    """
    supervisord = require_script("supervisord", "supervisor")
    holder = senders.start([], env=sender_env(spool_dir, devserver.url))
    wait_for(lambda: sender_running(spool_dir), timeout=30, interval=0.1)
    conf = supervisor_conf(tmp_path, spool_dir)
    env = clean_env(RUDDER_WRITE_KEY="supervisor-key", RUDDER_DATA_PLANE_URL=devserver.url)
    log = tmp_path / "supervisord.log"

    def settled() -> str | None:
        status = supervisorctl(conf, env, "status", "rudder-fast-sender").stdout
        match = re.search(r"rudder-fast-sender\s+(FATAL|EXITED)", status)
        return match[1] if match else None

    cmd = [supervisord, "-n", "-c", str(conf)]
    with process_group(cmd, env=env, cwd=tmp_path, log=log.with_suffix(".out")):
        state = wait_for(settled, timeout=60, interval=0.2)
        text = log.read_text()
    exits = re.findall(r"exited: rudder-fast-sender \(exit status (\d+)", text)
    assert exits, text
    assert set(exits) == {str(EXIT_LOCKED)}, text
    assert len(exits) <= 4, f"{len(exits)} starts: startretries (3) + 1 at most"  # supervisor's default
    if state == "EXITED":
        assert "exit status 3; expected" in text, text
    assert holder.proc.poll() is None, "the sender that holds the spool is untouched"


# -- container sidecar -----------------------------------------------------------------------------------


def test_compose_file_shares_the_spool_volume_and_uid() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: compose.yaml not parsed")
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    app, sender = services["app"], services["rudder-fast-sender"]
    assert app["image"] == sender["image"], "the sender is the app's own rudder-fast version"
    for service in services.values():
        # Built from the Dockerfile beside compose.yaml, with the checkout as the context.
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"

    def spool_mounts(service: dict[str, Any]) -> list[str]:
        return [m for m in service["volumes"] if m.split(":")[1] == RECIPE_SPOOL]

    (app_mount,), (sender_mount,) = spool_mounts(app), spool_mounts(sender)
    volume = app_mount.split(":")[0]
    assert app_mount == sender_mount, "one named volume, at the same path in both"
    assert volume in doc["volumes"], "a named volume, not a bind"
    assert not volume.startswith(("/", ".")), "a named volume, not a bind"
    assert app["user"] == sender["user"]
    assert app["user"].split(":")[0] not in ("0", "root")
    assert app["environment"]["RUDDER_FAST_SPOOL_DIR"] == RECIPE_SPOOL
    # The published port reaches only an app listening on the container's own interfaces.
    (published,) = app["ports"]
    container_port = published.split(":")[-1]
    assert app["environment"]["APP_BIND"] == f"0.0.0.0:{container_port}"
    env = sender["environment"]
    assert env["RUDDER_FAST_SPOOL_DIR"] == RECIPE_SPOOL
    assert env["RUDDER_WRITE_KEY"].startswith("${RUDDER_WRITE_KEY"), "the key comes from outside"
    assert env["RUDDER_DATA_PLANE_URL"].startswith("${RUDDER_DATA_PLANE_URL")
    assert sender["command"][0] == "rudder-fast-sender"
    assert sender["stop_signal"] == "SIGTERM"
    assert seconds(sender["stop_grace_period"]) >= 10
    # A volume made earlier may belong to root: a one-shot service hands it to the app's uid first.
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


@pytest.mark.parametrize("named_by", ["the conf's default", "the environment"])
def test_readme_gunicorn_command_as_written_delivers_every_request(
    tmp_path: Path, spool_dir: Path, devserver: DevServer, senders: Senders, named_by: str
) -> None:
    require_script("gunicorn", "gunicorn")
    require_netns()
    pytest.importorskip("flask", reason="Flask is not installed (the `test` extra)")
    command = readme_recipe("gunicorn-run")
    assert command.startswith("cd scripts/deploy\n"), command
    default = (
        f'os.environ["RUDDER_FAST_SPOOL_DIR"] = os.environ.get("RUDDER_FAST_SPOOL_DIR") or "{RECIPE_SPOOL}"'
    )
    assert default in GUNICORN_CONF.read_text()
    # The conf's spool path is the only change: to this test's spool, or to a decoy the environment
    # overrides (gunicorn's raw_env used to win over the environment).
    decoy = tmp_path / "decoy-spool"
    checkout = copy_of_checkout(
        tmp_path / "checkout", spool_dir if named_by == "the conf's default" else decoy
    )
    log = tmp_path / "gunicorn.log"
    # No APP_BIND: the default bind is what counts. The venv's bin first on PATH, as in an activated
    # virtualenv.
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("APP_BIND", None)
    env.pop("RUDDER_FAST_SPOOL_DIR", None)
    if named_by == "the environment":
        env["RUDDER_FAST_SPOOL_DIR"] = str(spool_dir)
    requests = 200
    with process_group(netns_argv(["bash", "-euc", command]), env=env, cwd=checkout, log=log) as proc:
        host, port, master = wait_listening(log)
        assert (host, port) == ("127.0.0.1", 8000), "gunicorn.conf.py's default bind"
        base = f"http://{host}:{port}/items"
        answers = http_in_netns(
            proc.pid,
            [(f"{base}/{i}", {"X-User-Id": f"user-{i}"}) for i in range(requests)]
            # No user id and an empty anonymous id: the call is refused (HTTP strips a blank value's
            # spaces, so the empty header is what reaches the app).
            + [(f"{base}/blank", {"X-Anonymous-Id": ""})],
        )
        *ok, blank = answers
        ids = []
        for i, (status, body) in enumerate(ok):
            assert status == 200, body
            assert body["item_id"] == str(i), body
            assert body["messageId"], body
            ids.append(body["messageId"])
        # Analytics never fails the page: the refused event is logged, the visitor gets a 200.
        assert blank == (200, {"item_id": "blank", "messageId": None}), blank
        wait_for(lambda: "analytics event not recorded: " in log.read_text(), timeout=10)
        os.kill(master, signal.SIGTERM)
        wait_for(lambda: "Shutting down: Master" in log.read_text(), timeout=STOP_TIMEOUT_S)
        assert wait_exit(proc, STOP_TIMEOUT_S, log) == 0, log.read_text()
    writers = {seg.name.split("-")[1] for seg in segment_files(spool_dir)}  # <nonce>-<pid>-<n>.seg
    assert writers, f"the workers did not write to the spool named by {named_by}"
    assert not decoy.exists()

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
blank = client.get("/items/x", headers={"X-User-Id": "   "})
print(json.dumps({"ids": ids, "blank": [blank.status_code, blank.get_json()]}))
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
    # A blank user id: nothing recorded, the refusal logged with the field, the page still served.
    assert report["blank"] == [200, {"item_id": "x", "messageId": None}], report["blank"]
    assert "analytics event not recorded: user_id" in proc.stderr, proc.stderr

    result = senders.run(["--drain"], env=sender_env(spool_dir, devserver.url), timeout=60)
    assert result.returncode == 0, result.stderr
    received = delivered_once(devserver, report["ids"])
    anonymous = [e for e in received if "userId" not in e or not e["userId"]]
    assert len(anonymous) == 5
    assert all(e["anonymousId"] == "anonymous" for e in anonymous)
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


def test_readme_celery_command_as_written_delivers_exactly_once(
    tmp_path: Path, spool_dir: Path, devserver: DevServer, senders: Senders
) -> None:
    require_script("celery", "celery")
    command = readme_recipe("celery-run")
    assert command.startswith("cd scripts/deploy\n"), command
    tasks = 50
    folder = tmp_path / "broker"
    folder.mkdir()
    settings_dir = tmp_path / "settings"
    settings_dir.mkdir()
    (settings_dir / "celeryconfig_e2e.py").write_text(CELERY_SETTINGS.format(folder=str(folder)))
    checkout = copy_of_checkout(tmp_path / "checkout", spool_dir)
    # The broker settings come from CELERY_CONFIG_MODULE, as celery_app.py documents; the command line
    # (README's, with the spool path rewritten) is run by bash as written.
    env = clean_env(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=pythonpath(settings_dir),
        CELERY_CONFIG_MODULE="celeryconfig_e2e",
    )
    env.pop("CELERY_BROKER_URL", None)
    log = tmp_path / "celery-worker.log"
    with process_group(
        ["bash", "-euc", host_paths(command, spool_dir)], env=env, cwd=checkout, log=log
    ) as shell:
        enqueue = subprocess.run(
            [sys.executable, "-c", ENQUEUE_SCRIPT.replace("range(N)", f"range({tasks})")],
            env={**env, "PYTHONPATH": pythonpath(settings_dir, checkout / "scripts" / "deploy")},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert enqueue.returncode == 0, enqueue.stderr
        wait_for(
            lambda: spool_dir.is_dir() and len(inspect_spool(spool_dir)[0]) >= tasks,
            timeout=60,
            interval=0.25,
        )
        # SIGTERM (a warm shutdown) to celery's main process: bash itself, if it exec'd the last
        # command, else its child; bash then exits with the worker's status.
        leader = psutil.Process(shell.pid)

        def is_celery(p: psutil.Process) -> bool:
            return "celery" in " ".join(p.cmdline()[:2])

        (worker,) = [leader] if is_celery(leader) else [p for p in leader.children() if is_celery(p)]
        worker.send_signal(signal.SIGTERM)
        assert wait_exit(shell, STOP_TIMEOUT_S, log) == 0, log.read_text()[-3000:]
    pending, _ = inspect_spool(spool_dir)
    assert len(pending) == tasks

    result = senders.run(["--drain"], env=sender_env(spool_dir, devserver.url), timeout=60)
    assert result.returncode == 0, result.stderr
    received = delivered_once(devserver, [e["messageId"] for e in pending])
    orders = collections.Counter(e["properties"]["order_id"] for e in received)
    assert orders == collections.Counter(f"order-{i}" for i in range(tasks))
    assert all(e["event"] == "Order Completed" for e in received)
    producers = {e["messageId"].rsplit("-", 1)[0] for e in received}
    assert 1 <= len(producers) <= 4, producers  # the prefork children wrote, one segment family each
    assert_spool_empty(spool_dir)
