"""``scripts/deploy/Dockerfile``'s image, built without Docker, and the recipes that run from it.

There is no Docker engine here, so ``docker build`` is impossible. Instead the Dockerfile is parsed
(PyPI ``dockerfile-parse``) and its steps are carried out in a temporary directory standing for the
image's root file system, as root, with every image path (``/opt``, ``/tmp``, ``/var``, ``/app``)
placed under that directory:

* ``FROM python:3.X-slim``: not pulled. The base layer is this machine's Debian ``/usr/bin/python3``,
  as ``python`` first on the PATH of the ``RUN`` steps (a Python in ``/usr``, readable by any user,
  like the image's ``/usr/local/bin/python``). A ``FROM ... AS NAME`` stage is built the same way in a
  file tree of its own, which ``COPY --from=NAME`` copies from and which is thrown away after the build.
* ``RUN apt-get ...`` (the build stage's compiler): not run, as it would change this machine's
  packages; each package it names must be installed here already (``./scripts/bootstrap`` installs
  them), and is recorded.
* ``RUN``: run for real by ``sh -c``, paths placed under the root: the virtualenv is created, and the
  build stage's ``pip wheel`` builds rudder-fast, its C extension compiled, from exactly what the
  ``COPY`` steps copied, and the image's ``pip install`` installs that wheel with gunicorn and Flask
  from the package index this machine's pip is configured with; the spool is created with
  ``install -d -o 10001 -g 10001 -m 0700``. Not run: ``groupadd``/``useradd``, which would change this
  machine's user database; their uid and gid are checked against ``USER`` instead, and the image's
  user is used by number (``setpriv``), as the Dockerfile's ``USER 10001:10001`` is.
* ``COPY``: the sources, relative to the build context (the checkout's top directory), copied as Docker
  would (a directory's contents, ``Dockerfile.dockerignore``'s patterns left out), owned by root. The
  app's two files (``flask_app.py``, ``gunicorn.conf.py``) get their image paths placed under the
  root as well: the spool path of its default is the only one.
* ``ENV``, ``WORKDIR``, ``USER``, ``EXPOSE``, ``VOLUME``, ``CMD``: recorded, and used below.

Then the image's ``CMD`` runs as uid 10001, in ``WORKDIR``, with the image's environment and
compose.yaml's ``app`` settings, in a network namespace of its own, as in a container: requests to the
published port arrive on an address other than 127.0.0.1 (here 127.0.0.2) and get 200, and the same
command without compose's ``APP_BIND`` (the host default, 127.0.0.1) is refused there, which is why
the image sets it. compose.yaml's sender service runs from the same image as the same uid and delivers
every event to the real devserver. The app's systemd unit (``app.service``) runs from the image's
virtualenv as the same non-root user after the tmpfiles.d entry created the spool: its first event is
accepted; without the entry it is dropped, which is what the ordering prevents. ``k8s/sidecar.yaml``'s
pod runs from the image with its containers' settings: an "emptyDir" made as kubelet makes one for an
``fsGroup`` (root's, that group's, mode 2777), which the sender refuses as a spool itself; the sidecar
starts first, the app answers on the pod's interfaces, the spool subdirectory is created 0700 by the
image's user; then the pod's deletion: SIGTERM to the app, which exits 0, then to the sidecar, which
exits 0 within the grace period, everything delivered (once the sender has ``--drain-on-stop``, without
waiting for delivery before its SIGTERM: the drain is what delivers).

Not tried: the real base image (its Python is 3.12, this machine's 3.11), layers, image metadata,
``docker run``/``compose``/Kubernetes themselves, the named volume's copy of the directory's owner,
mounts (paths are rewritten instead), the pod's shared network namespace.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.delivery import delivered_once
from tests.support.deploy import (
    DELIVERY_TIMEOUT_S,
    DEPLOY,
    IMAGE_UID,
    RECIPE_BIN,
    RECIPE_SPOOL,
    RECIPE_USER,
    ROOT,
    STOP_TIMEOUT_S,
    host_paths,
    http_in_netns,
    netns_argv,
    readme_recipe,
    require_netns,
    wait_listening,
    wait_no_segments,
    wait_received,
)
from tests.support.devserver import DevServer
from tests.support.processes import process_group, wait_exit
from tests.support.sender import Senders, sender_env
from tests.support.spool import segment_files

# Per-test timeout above the default: the image's virtualenv is built with pip (600 s a step).
pytestmark = pytest.mark.timeout(900)

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "compose.yaml"
BASE_PYTHON = "/usr/bin/python3"
# The python images' own environment (what ENV ... $PATH expands against).
BASE_ENV = {"PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
IMAGE_PATH = re.compile(r"(?<![\w.~/-])/(?=(?:opt|tmp|var|app)(?:/|\b))")
PIP_TIMEOUT_S = 600


@dataclass
class Image:
    """What building the Dockerfile in ``root`` produced."""

    root: Path
    base: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    cmd: list[str] = field(default_factory=list)
    expose: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    user_ids: tuple[int, int] | None = None  # from groupadd/useradd
    copied: list[str] = field(default_factory=list)  # from the build context, by every stage
    stages: dict[str, Image] = field(default_factory=dict)  # the earlier stages, by their AS name
    apt_packages: list[str] = field(default_factory=list)  # what apt-get would have installed

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def in_root(self, text: str) -> str:
        """Image paths in ``text`` placed under the root (``/opt/x`` → ``ROOT/opt/x``)."""
        return IMAGE_PATH.sub(f"{self.root}/", text)

    def run_env(self, **overrides: str) -> dict[str, str]:
        """The environment a container of this image starts with: the image's ENV (paths under the root)."""
        env = {k: self.in_root(v) for k, v in {**self.env, **overrides}.items()}
        env["HOME"] = str(self.path(self.workdir))
        return env


def expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m[1] or m[2], ""), value)


def ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch("/".join(parts[i:]), pattern[3:]) for i in range(len(parts))):
                return True
        elif fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(parts[0], pattern):
            return True
    return False


def copy_step(image: Image, words: list[str], patterns: list[str]) -> None:
    if words[0].startswith("--from="):
        copy_from_stage(image, image.stages[words[0].removeprefix("--from=")], words[1:])
        return
    assert not any(w.startswith("--") for w in words), f"COPY flags are not emulated: {words}"
    *sources, dest = words
    assert len(sources) == 1 or dest.endswith("/"), "several sources need a directory destination"
    target = image.path(dest if dest.startswith("/") else f"{image.workdir}/{dest}")
    for source in sources:
        src = ROOT / source
        assert src.exists(), f"COPY {source}: not in the build context"
        image.copied.append(source)
        if src.is_dir():
            for path in sorted(src.rglob("*")):
                rel = path.relative_to(ROOT).as_posix()
                if path.is_file() and not ignored(rel, patterns):
                    out = target / path.relative_to(src)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, out)
        else:
            out = target / src.name if dest.endswith("/") else target
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)
            if source.startswith("scripts/deploy/"):
                # The app's own files name image paths (gunicorn.conf.py's spool): under the root too.
                out.write_text(image.in_root(out.read_text()))


def copy_from_stage(image: Image, stage: Image, words: list[str]) -> None:
    """``COPY --from=STAGE SRC DEST``: a directory or file of an earlier stage's file tree."""
    source, dest = words
    src = stage.path(source)
    assert src.exists(), f"COPY --from: {source} is not in that stage"
    if src.is_dir():
        shutil.copytree(src, image.path(dest), dirs_exist_ok=True)
    else:
        image.path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, image.path(dest))


APT_INSTALL = re.compile(
    r"apt-get update && apt-get install -y --no-install-recommends ([\w.+ -]+?) "
    r"&& rm -rf /var/lib/apt/lists/\*"
)


def apt_step(image: Image, command: str) -> None:
    """Not run: it would change this machine's packages. Each package must be installed here already
    (``./scripts/bootstrap`` installs them), which is what the build relies on."""
    match = APT_INSTALL.fullmatch(" ".join(command.split()))
    assert match, (
        f"only `apt-get update && apt-get install -y --no-install-recommends ... && rm -rf ...`: {command}"
    )
    assert shutil.which("dpkg"), "the build stage's apt-get is checked against this machine's dpkg: none here"
    for package in match[1].split():
        probe = subprocess.run(["dpkg", "-s", package], capture_output=True, timeout=60, check=False)
        assert probe.returncode == 0, f"{package} is not installed here: the build stage needs it"
        image.apt_packages.append(package)


def run_step(image: Image, command: str, log: list[str]) -> None:
    words = shlex.split(command)
    if words[0] == "apt-get":
        apt_step(image, command)
        return
    if words[0] in ("groupadd", "useradd"):
        # Not run: it would change this machine's users. The ids it gives are checked against USER.
        uids = re.findall(r"--uid (\d+)", command)
        gids = re.findall(r"--gid (\d+)", command)
        assert uids, command
        assert gids, command
        assert len(set(gids)) == 1, command
        image.user_ids = (int(uids[0]), int(gids[0]))
        return
    env = {
        **{k: image.in_root(expand(v, BASE_ENV)) for k, v in image.env.items() if k != "PATH"},
        "PATH": f"{image.root}/usr/local/bin:{os.environ['PATH']}",
        "HOME": str(image.root / "root"),
    }
    proc = subprocess.run(
        ["sh", "-c", image.in_root(command)],
        env=env,
        cwd=image.path(image.workdir),
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    log.append(f"$ {command}\n{proc.stdout}{proc.stderr}")
    assert proc.returncode == 0, f"RUN {command}\n{proc.stdout}\n{proc.stderr}"


@dataclass
class _BuildContext:
    log: list[str]
    patterns: list[str]  # the .dockerignore's


def _env_step(image: Image, value: str, _: _BuildContext) -> None:
    for word in shlex.split(value):
        key, sep, val = word.partition("=")
        assert sep, f"ENV {word!r}: only the KEY=VALUE form is emulated"
        image.env[key] = expand(val, {**BASE_ENV, **image.env})


def _workdir_step(image: Image, value: str, _: _BuildContext) -> None:
    image.workdir = value
    image.path(value).mkdir(parents=True, exist_ok=True)


def _volume_step(image: Image, value: str, _: _BuildContext) -> None:
    image.volumes += json.loads(value) if value.startswith("[") else value.split()


def _set(attribute: str, parse: Callable[[str], Any] = str) -> Callable[[Image, str, _BuildContext], None]:
    def step(image: Image, value: str, _: _BuildContext) -> None:
        setattr(image, attribute, parse(value))

    return step


def _expose_step(image: Image, value: str, _: _BuildContext) -> None:
    image.expose += value.split()


# How each Dockerfile instruction the recipe uses is emulated on the image's file tree.
_STEPS: dict[str, Callable[[Image, str, _BuildContext], None]] = {
    "ENV": _env_step,
    "RUN": lambda image, value, ctx: run_step(image, value, ctx.log),
    "COPY": lambda image, value, ctx: copy_step(image, shlex.split(value), ctx.patterns),
    "WORKDIR": _workdir_step,
    "USER": _set("user"),
    "EXPOSE": _expose_step,
    "VOLUME": _volume_step,
    "CMD": _set("cmd", json.loads),
}


def build(root: Path) -> Image:
    from dockerfile_parse import DockerfileParser

    patterns = [
        ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    parser = DockerfileParser(path=str(DOCKERFILE))
    steps = [
        (step["instruction"], step["value"]) for step in parser.structure if step["instruction"] != "COMMENT"
    ]
    starts = [i for i, (kind, _) in enumerate(steps) if kind == "FROM"]
    assert starts, "the Dockerfile has a FROM"
    assert starts[0] == 0, "the Dockerfile starts with FROM"
    log: list[str] = []
    stages: dict[str, Image] = {}
    copied: list[str] = []
    try:
        for begin, end in zip(starts, [*starts[1:], len(steps)], strict=True):
            base, _, name = steps[begin][1].partition(" AS ")
            final = end == len(steps)
            # A build stage gets a root of its own, thrown away once the image is built.
            stage_root = root if final else Path(tempfile.mkdtemp(prefix=f"rudder-fast-stage-{name}-"))
            image = _stage(stage_root, base.strip(), stages, copied)
            for kind, value in steps[begin + 1 : end]:
                apply = _STEPS.get(kind)
                assert apply is not None, f"{kind} is not emulated: extend the build in this test"
                apply(image, value, _BuildContext(log, patterns))
            if not final:
                assert name, "a build stage is named (FROM ... AS NAME): the image copies from it"
                stages[name.strip()] = image
    finally:
        for stage in stages.values():
            shutil.rmtree(stage.root, ignore_errors=True)
    (root / "build.log").write_text("\n".join(log))
    return image


def _stage(root: Path, base: str, stages: dict[str, Image], copied: list[str]) -> Image:
    """A stage's file tree: the base layer, a Python as /usr/local/bin/python."""
    image = Image(root, base=base, stages=dict(stages), copied=copied)
    (root / "usr" / "local" / "bin").mkdir(parents=True)
    (root / "usr" / "local" / "bin" / "python").symlink_to(BASE_PYTHON)
    (root / "root").mkdir()
    root.chmod(0o755)
    return image


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    """The Dockerfile built in a temporary root (readable by the image's non-root user)."""
    if os.geteuid() != 0:
        pytest.skip("building the image's file tree (owners, setuid to its user) needs root")
    pytest.importorskip("dockerfile_parse", reason="dockerfile-parse is not installed (the `test` extra)")
    probe = subprocess.run([BASE_PYTHON, "-c", "import venv, ensurepip"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"{BASE_PYTHON} with venv and ensurepip is needed (apt-get install python3-venv)")
    root = Path(tempfile.mkdtemp(prefix="rudder-fast-image-"))
    try:
        root.chmod(0o755)  # the image's user must reach its files
        yield build(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def numeric_user(image: Image) -> int:
    uid, _, gid = image.user.partition(":")
    assert uid.isdigit(), "a numeric USER: runAsNonRoot can check it"
    assert gid.isdigit(), "a numeric USER: runAsNonRoot can check it"
    assert uid == gid
    return int(uid)


# -- the image's facts ------------------------------------------------------------------------------------


def test_image_runs_as_a_non_root_user_that_owns_the_spool(image: Image) -> None:
    match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", image.base)
    assert match, image.base
    assert 10 <= int(match[1]) <= 13, image.base
    uid = numeric_user(image)
    assert uid == IMAGE_UID != 0, "USER is the user created"
    assert image.user_ids == (uid, uid), "USER is the user created"
    assert image.env["RUDDER_FAST_SPOOL_DIR"] == RECIPE_SPOOL
    assert RECIPE_SPOOL in image.volumes
    st = image.path(RECIPE_SPOOL).stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, uid, 0o700)
    # The code is root's: the app's user can run it, not change it.
    for path in [image.path("/opt/app/venv"), *image.path("/opt/app/venv").rglob("*")]:
        st = path.lstat()
        assert st.st_uid == 0, path
        assert not (st.st_mode & 0o022 and not stat.S_ISLNK(st.st_mode)), path
    # The sources were copied into the build stage only.
    assert not image.path("/tmp/rudder-fast").exists()  # noqa: S108 - a path inside the image


def test_image_has_this_checkout_installed_and_its_command_is_the_readmes(image: Image) -> None:
    venv_bin = image.path(RECIPE_BIN)
    for script in ("rudder-fast-sender", "rudder-fast", "gunicorn"):
        assert (venv_bin / script).is_file(), script
    probe = subprocess.run(
        [
            str(venv_bin / "python"),
            "-c",
            "import json, rudder_fast, rudder_fast.wire as w; "
            "print(json.dumps([rudder_fast.__version__, rudder_fast.__file__, w.speedups_built()]))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        stdin=subprocess.DEVNULL,
    )
    assert probe.returncode == 0, probe.stderr
    version, location, speedups = json.loads(probe.stdout)
    from rudder_fast import __version__

    # The C extension was compiled in the build stage, which alone installs a compiler.
    assert speedups, "the image's rudder-fast runs the sender's loops in Python"
    assert image.stages["build"].apt_packages == ["gcc", "libc6-dev"]
    assert image.apt_packages == [], "no compiler in the image itself"
    assert not image.path("/tmp/wheels").exists()  # noqa: S108 - a path inside the image
    assert version == __version__
    assert location.startswith(str(image.path("/opt/app/venv"))), "installed in the image, not this checkout"
    # Only the package, the metadata and the app's two files were copied: no tests, no benchmarks.
    assert sorted(image.copied) == sorted(
        [
            "pyproject.toml",
            "README.md",
            "LICENSE",
            "rudder_fast",
            "scripts/deploy/flask_app.py",
            "scripts/deploy/gunicorn.conf.py",
        ]
    )
    app_dir = image.path(image.workdir)
    assert sorted(p.name for p in app_dir.iterdir()) == ["flask_app.py", "gunicorn.conf.py"]
    # README's gunicorn command, run from the directory holding the two files (WORKDIR).
    assert image.cmd == shlex.split(readme_recipe("gunicorn-run").splitlines()[-1])
    assert image.env["APP_BIND"] == "0.0.0.0:8000"
    assert image.expose == ["8000"]
    assert image.env["PATH"].startswith(RECIPE_BIN.rstrip("/") + ":")


# -- the image's command, as compose runs it --------------------------------------------------------------


def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: compose.yaml not parsed")
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def container_env(image: Image, service: dict[str, Any], **substitutions: str) -> dict[str, str]:
    """The image's environment, compose's ``environment`` over it (``${VAR...}`` substituted)."""
    env = dict(image.env)
    for key, value in service.get("environment", {}).items():
        match = re.fullmatch(r"\$\{(\w+)[^}]*\}", str(value))
        env[key] = substitutions[match[1]] if match else str(value)
    return image.run_env(**env)


def test_compose_app_from_the_image_answers_on_the_published_port_and_the_sender_delivers(
    image: Image, tmp_path: Path, devserver: DevServer
) -> None:
    require_netns()
    services = compose()["services"]
    app, sender = services["app"], services["rudder-fast-sender"]
    uid = numeric_user(image)
    assert app["user"] == sender["user"] == image.user
    published = int(app["ports"][0].split(":")[-1])
    spool = image.path(RECIPE_SPOOL)
    log = tmp_path / "app-container.log"
    cwd = image.path(image.workdir)
    cmd = netns_argv(image.cmd, user=uid)
    count = 50
    with process_group(cmd, env=container_env(image, app), cwd=cwd, log=log) as proc:
        host, port, master = wait_listening(log)
        assert (host, port) == ("0.0.0.0", published)  # noqa: S104 - the image binds all, in a netns
        # A published port's traffic arrives on the container's own interface, never on its 127.0.0.1.
        url = f"http://127.0.0.2:{published}/items"
        answers = http_in_netns(proc.pid, [(f"{url}/{i}", {"X-User-Id": f"user-{i}"}) for i in range(count)])
        assert all(status == 200 for status, _ in answers), answers[:3]
        ids = [body["messageId"] for _, body in answers]
        assert None not in ids
        os.kill(master, signal.SIGTERM)
        assert wait_exit(proc, STOP_TIMEOUT_S, log) == 0, log.read_text()[-3000:]
    writers = segment_files(spool)
    assert writers, "written by the image's user"
    assert {p.stat().st_uid for p in writers} == {uid}, "written by the image's user"

    # The same command with the host's default bind (no APP_BIND): nothing answers there.
    env = container_env(image, app)
    del env["APP_BIND"]
    control_log = tmp_path / "app-loopback.log"
    with process_group(netns_argv(image.cmd, user=uid), env=env, cwd=cwd, log=control_log) as proc:
        host, port, master = wait_listening(control_log)
        assert host == "127.0.0.1"
        ((status, error),) = http_in_netns(proc.pid, [(f"http://127.0.0.2:{port}/items/x", {})])
        assert status is None, (status, error)
        assert "Connection refused" in error, (status, error)

    # compose's sender service: the image's rudder-fast-sender, the same user, the same volume.
    sender_env = container_env(
        image, sender, RUDDER_WRITE_KEY="compose-key", RUDDER_DATA_PLANE_URL=devserver.url
    )
    sender_log = tmp_path / "sender-container.log"
    sender_cmd = [str(image.path(RECIPE_BIN) / sender["command"][0]), *sender["command"][1:]]
    with process_group(sender_cmd, env=sender_env, cwd=cwd, log=sender_log, user=uid) as proc:
        wait_received(devserver, count, timeout=DELIVERY_TIMEOUT_S)
        wait_no_segments(spool)
        proc.send_signal(signal.Signals[sender["stop_signal"]])
        assert wait_exit(proc, 15, sender_log) == 0, sender_log.read_text()[-3000:]
    assert "rudder_fast._speedups is not built" not in sender_log.read_text()
    received = delivered_once(devserver, ids)
    assert {e["userId"] for e in received} == {f"user-{i}" for i in range(count)}


# -- systemd: the app after the spool exists --------------------------------------------------------------


def test_systemd_app_unit_as_non_root_user_gets_its_first_event_in_after_tmpfiles(
    image: Image, tmp_path: Path
) -> None:
    """Without the tmpfiles.d entry (or the sender's ExecStartPre) the app's first event is dropped."""
    require_netns()
    tmpfiles = shutil.which("systemd-tmpfiles")
    if tmpfiles is None:
        pytest.skip("systemd-tmpfiles is not installed (apt-get install systemd)")
    from tests.support.deploy import APP_UNIT, TMPFILES, command_argv, parse_unit

    uid = numeric_user(image)
    # The host: a root file system whose /var/spool belongs to root, and whose user "app" is uid 10001.
    host = Path(tempfile.mkdtemp(prefix="rudder-fast-host-", dir=image.root))
    host.chmod(0o755)
    (host / "etc").mkdir()
    (host / "etc" / "passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\n{RECIPE_USER}:x:{uid}:{uid}::/:/bin/sh\n"
    )
    (host / "etc" / "group").write_text(f"root:x:0:\n{RECIPE_USER}:x:{uid}:\n")
    (host / "var" / "spool").mkdir(parents=True, mode=0o755)
    spool = host / RECIPE_SPOOL.lstrip("/")

    service = parse_unit(APP_UNIT.read_text())["Service"]
    assert service["User"] == [RECIPE_USER]
    workdir = host / service["WorkingDirectory"][0].lstrip("/")
    workdir.mkdir(parents=True)
    for name in ("flask_app.py", "gunicorn.conf.py"):  # the app's files, as the unit's comments say
        (workdir / name).write_text(host_paths((DEPLOY / name).read_text(), spool))
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": str(workdir)}
    for value in service["Environment"]:
        key, _, val = host_paths(value, spool).partition("=")
        env[key] = val
    (exec_start,) = service["ExecStart"]
    argv = [a.replace(f"{RECIPE_BIN}", f"{image.path(RECIPE_BIN)}/") for a in command_argv(exec_start, spool)]

    def first_event(tag: str) -> Any:
        log = tmp_path / f"app-{tag}.log"
        with process_group(netns_argv(argv, user=uid), env=env, cwd=workdir, log=log) as proc:
            host_, port, master = wait_listening(log)
            ((status, body),) = http_in_netns(
                proc.pid, [(f"http://{host_}:{port}/items/1", {"X-User-Id": "u1"})]
            )
            assert status == 200, body
            os.kill(master, signal.SIGTERM)
            assert wait_exit(proc, STOP_TIMEOUT_S, log) == 0
        return body["messageId"], log.read_text()

    message_id, log_text = first_event("before-tmpfiles")
    assert message_id is None, "no spool, and /var/spool is root's: dropped"
    assert f"cannot use spool directory {spool}" in log_text, log_text[-2000:]
    proc = subprocess.run(
        [tmpfiles, "--create", f"--root={host}", str(TMPFILES)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    message_id, log_text = first_event("after-tmpfiles")
    assert message_id is not None, log_text[-2000:]
    assert {p.stat().st_uid for p in segment_files(spool)} == {uid}


def test_dockerignore_keeps_local_byproducts_out() -> None:
    patterns = [
        ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    assert ignored("rudder_fast/__pycache__/emitter.cpython-311.pyc", patterns)
    assert ignored(".venv/bin/python", patterns)
    assert not ignored("rudder_fast/emitter.py", patterns)
    assert not ignored("rudder_fast/py.typed", patterns)


# -- Kubernetes: the native sidecar's pod -----------------------------------------------------------------


def test_k8s_sidecar_pod_from_the_image_shares_an_emptydir_spool_and_stops_clean(
    image: Image, tmp_path: Path, devserver: DevServer, senders: Senders
) -> None:
    """sidecar.yaml's pod, emulated: its containers' settings, the image's files, a kubelet-like emptyDir."""
    require_netns()
    from tests.support.deploy import SENDER, by_name, documents, env_of, mount_of, pod_spec

    (doc,) = documents(DEPLOY / "k8s" / "sidecar.yaml")
    spec = pod_spec(doc)
    sidecar, (app,) = by_name(spec["initContainers"], SENDER), spec["containers"]
    uid, fs_group = spec["securityContext"]["runAsUser"], spec["securityContext"]["fsGroup"]
    # The emptyDir as kubelet makes it with an fsGroup: root's, the group's, writable by all, setgid.
    empty_dir = Path(tempfile.mkdtemp(prefix="emptydir-", dir=image.root))
    os.chown(empty_dir, 0, fs_group)
    empty_dir.chmod(0o2777)
    mount = mount_of(app, "spool")

    def in_pod(value: str) -> str:
        return value.replace(mount, str(empty_dir), 1) if value.startswith(mount) else value

    # The mount point itself would be refused as a spool (another user's, writable by others): that is
    # why the manifests put the spool in a subdirectory.
    refused = senders.run(["--drain"], env=sender_env(empty_dir, devserver.url))
    assert refused.returncode == 2, refused
    assert str(empty_dir) in refused.stderr, refused

    def container_env(container: dict[str, Any], **values: str) -> dict[str, str]:
        env = image.run_env()
        for name, definition in env_of(container).items():
            env[name] = values.get(name, in_pod(str(definition.get("value", ""))))
        return env

    spool = Path(container_env(app)["RUDDER_FAST_SPOOL_DIR"])
    assert spool.parent == empty_dir
    # The app's files, as in the image's WORKDIR; the pod's /var/spool is the emptyDir.
    app_dir = Path(tempfile.mkdtemp(prefix="app-", dir=image.root))
    app_dir.chmod(0o755)
    for name in ("flask_app.py", "gunicorn.conf.py"):
        (app_dir / name).write_text((DEPLOY / name).read_text().replace(RECIPE_SPOOL, str(spool)))

    sender_cmd = [str(image.path(RECIPE_BIN) / sidecar["command"][0])]
    sender_env_ = container_env(
        sidecar, RUDDER_WRITE_KEY="from-the-secret", RUDDER_DATA_PLANE_URL=devserver.url
    )
    sender_log, app_log = tmp_path / "sidecar.log", tmp_path / "app.log"
    usage = subprocess.run(
        [sender_cmd[0], "--help"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    drains = "--drain-on-stop" in usage.stdout
    count = 30
    # Init containers (the sidecar) start first, the app after.
    with process_group(sender_cmd, env=sender_env_, cwd=app_dir, log=sender_log, user=uid) as sender_proc:
        with process_group(
            netns_argv(image.cmd, user=uid), env=container_env(app), cwd=app_dir, log=app_log
        ) as app_proc:
            host, port, master = wait_listening(app_log)
            assert f"{host}:{port}" == env_of(app)["APP_BIND"]["value"], "the pod's interfaces"
            answers = http_in_netns(
                app_proc.pid,
                [(f"http://127.0.0.2:{port}/items/{i}", {"X-User-Id": f"u{i}"}) for i in range(count)],
            )
            ids = [body["messageId"] for status, body in answers if status == 200]
            assert len(ids) == count, answers[:3]
            assert None not in ids, answers[:3]
            # Pod deletion: the app gets SIGTERM first, the sidecar once the app has stopped, all within
            # the grace period.
            grace = float(spec["terminationGracePeriodSeconds"])
            started = time.monotonic()
            os.kill(master, signal.SIGTERM)
            assert wait_exit(app_proc, grace, app_log) == 0
        if not drains:
            # Without --drain-on-stop, only what was delivered before SIGTERM is safe from the emptyDir's end.
            wait_received(devserver, count)
        sender_proc.send_signal(signal.SIGTERM)
        assert wait_exit(sender_proc, grace - (time.monotonic() - started), sender_log) == 0
    delivered_once(devserver, ids)
    st = spool.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, fs_group, 0o700)
    # What the README says the sender logs about the emptyDir's mode: once, at start.
    told = [line for line in sender_log.read_text().splitlines() if "is writable by everyone" in line]
    assert len(told) == 1, told
    assert f"the spool's parent directory {empty_dir} is writable by everyone (mode 2777" in told[0], told
