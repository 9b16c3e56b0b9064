"""The Kubernetes manifests of ``scripts/deploy/k8s/``, checked offline.

No cluster here. What is tried:

* every manifest document validates against the Kubernetes API schemas that PyPI's
  ``kubernetes-validate`` bundles, in strict mode (an unknown or misspelt field fails), for 1.29 (the
  first release whose native sidecars are on by default) and for the newest release it knows; a copy
  with one misspelt field is refused, so the validation is live;
* the structure the schemas cannot see: the sender is a native sidecar (an ``initContainers`` entry with
  ``restartPolicy: Always``) sharing the app's ``emptyDir`` spool at the same path, as the image's uid
  with a matching ``fsGroup``; the spool is a subdirectory of the mount (the mount point itself is
  writable by others, which the spool refuses); every container has resources; the grace period
  outlasts the app's stop, the sender's drain and its stop; the write key comes from a Secret (the one
  README's ``kubectl create secret`` makes), never inline; the DaemonSet's ``hostPath`` is handed to
  that uid (0700) by an init container and mounted by the example app at the same path;
* every environment variable given to the sender is one of its real options, as its ``--help`` lists
  them (``RUDDER_FAST_DRAIN_ON_STOP`` once the sender has ``--drain-on-stop``: until then that check
  skips, saying so), and the sender started with the manifest's settings accepts them.

Not tried here: a cluster (admission, Pod Security, the image pull, the real kubelet).
``tests/e2e/test_deploy_image.py`` runs sidecar.yaml's pod from the Dockerfile's image, emulated.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploy import (
    DEPLOY,
    IMAGE_UID,
    K8S,
    RECIPE_SPOOL,
    SENDER,
    by_name,
    containers,
    documents,
    env_of,
    mount_of,
    pod_spec,
    readme_recipe,
)
from tests.support.devserver import DevServer
from tests.support.processes import BIN
from tests.support.sender import Senders, sender_env

SIDECAR = K8S / "sidecar.yaml"
DAEMONSET = K8S / "daemonset.yaml"
MANIFESTS = (SIDECAR, DAEMONSET)
# The sender's own time to finish or abandon the requests in flight after SIGTERM (README: "The sender").
SENDER_STOP_S = 5
# The first Kubernetes release with native sidecars on by default.
OLDEST = "1.29.0"

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the `test` extra)")


def uid_of(spec: dict[str, Any], container: dict[str, Any]) -> int:
    uid = container.get("securityContext", {}).get("runAsUser", spec["securityContext"].get("runAsUser"))
    assert isinstance(uid, int)
    return uid


def image_spool() -> str:
    """The spool the image's app uses: gunicorn.conf.py's default (the Dockerfile's ENV says the same)."""
    conf = (DEPLOY / "gunicorn.conf.py").read_text()
    (spool,) = re.findall(r'os.environ.get\("RUDDER_FAST_SPOOL_DIR"\) or "([^"]+)"', conf)
    assert f"RUDDER_FAST_SPOOL_DIR={spool}" in (DEPLOY / "Dockerfile").read_text()
    return str(spool)


def graceful_timeout() -> float:
    (value,) = re.findall(r"(?m)^graceful_timeout = (\d+)", (DEPLOY / "gunicorn.conf.py").read_text())
    return float(value)


# -- schemas ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kv() -> Any:
    return pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is not installed")


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schemas(kv: Any, manifest: Path) -> None:
    newest = kv.latest_version()
    docs = documents(manifest)
    assert docs
    for doc in docs:
        for version in (OLDEST, newest):
            kv.validate(doc, version, strict=True)  # raises ValidationError naming the field


def test_validation_refuses_a_misspelt_field(kv: Any) -> None:
    (doc,) = documents(SIDECAR)
    broken = copy.deepcopy(doc)
    sidecar = by_name(pod_spec(broken)["initContainers"], SENDER)
    sidecar["restartPolicyy"] = sidecar.pop("restartPolicy")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, OLDEST, strict=True)


# -- the native sidecar -----------------------------------------------------------------------------------


def test_sidecar_shares_an_emptydir_spool_with_the_app_as_the_same_user() -> None:
    (doc,) = documents(SIDECAR)
    spec = pod_spec(doc)
    sender = by_name(spec["initContainers"], SENDER)
    (app,) = spec["containers"]
    # Native: an init container that keeps running (Kubernetes starts it first and stops it last).
    assert sender["restartPolicy"] == "Always"
    assert sender["command"] == [SENDER]
    assert sender["image"] == app["image"], "the sender is the app's own rudder-fast version"

    # One emptyDir, at the same path in both; the spool is a directory inside it, the image's.
    volume = by_name(spec["volumes"], "spool")
    assert volume["emptyDir"] == {}
    mount = mount_of(sender, "spool")
    assert mount_of(app, "spool") == mount
    spool = env_of(sender)["RUDDER_FAST_SPOOL_DIR"]["value"]
    assert env_of(app)["RUDDER_FAST_SPOOL_DIR"]["value"] == spool == image_spool() == RECIPE_SPOOL
    assert spool.startswith(mount.rstrip("/") + "/"), "a subdirectory: the mount point is not private"

    # The same non-root uid (the image's), and the emptyDir's group.
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True
    assert uid_of(spec, sender) == uid_of(spec, app) == IMAGE_UID == security["fsGroup"]
    for container in containers(spec):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys()
        assert "memory" in resources["limits"]

    # Deleting the pod deletes the emptyDir: the grace period covers the app's stop, then the sender's
    # drain of what is left, then its stop.
    drain = float(env_of(sender)["RUDDER_FAST_DRAIN_ON_STOP"]["value"])
    assert drain > 0
    assert spec["terminationGracePeriodSeconds"] > graceful_timeout() + drain + SENDER_STOP_S
    # Published: the app listens on the pod's interfaces.
    assert env_of(app)["APP_BIND"]["value"] == f"0.0.0.0:{app['ports'][0]['containerPort']}"


def test_write_key_comes_from_the_secret_readme_creates() -> None:
    command = readme_recipe("kubectl").splitlines()[0]
    words = shlex.split(command)
    assert words[:4] == ["kubectl", "create", "secret", "generic"], command
    secret = words[4]
    (literal,) = [w for w in words if w.startswith("--from-literal=")]
    key = literal.removeprefix("--from-literal=").split("=", 1)[0]
    applied = re.findall(r"kubectl apply -f (\S+)", readme_recipe("kubectl"))
    assert applied == [str(SIDECAR.relative_to(DEPLOY.parents[1]))]
    for manifest in MANIFESTS:
        assert manifest.relative_to(DEPLOY.parents[1]).as_posix() in readme_recipe("kubectl")
        for doc in documents(manifest):
            for container in containers(pod_spec(doc)):
                env = env_of(container)
                if "RUDDER_WRITE_KEY" in env:
                    assert "value" not in env["RUDDER_WRITE_KEY"], "never inline"
                    ref = env["RUDDER_WRITE_KEY"]["valueFrom"]["secretKeyRef"]
                    assert (ref["name"], ref["key"]) == (secret, key)
    assert "RUDDER_WRITE_KEY: " not in SIDECAR.read_text() + DAEMONSET.read_text()


# -- the DaemonSet ----------------------------------------------------------------------------------------


def test_daemonset_sender_and_apps_on_the_node_share_a_hostpath_spool_as_the_same_user() -> None:
    daemonset, app_deployment = documents(DAEMONSET)
    assert daemonset["kind"] == "DaemonSet"
    assert app_deployment["kind"] == "Deployment"
    spec = pod_spec(daemonset)
    sender = by_name(spec["containers"], SENDER)
    init = by_name(spec["initContainers"], "spool-init")
    assert "restartPolicy" not in init, "a one-shot init container, before the sender"
    host_volume = by_name(spec["volumes"], "spool")["hostPath"]
    assert host_volume == {"path": RECIPE_SPOOL, "type": "DirectoryOrCreate"}
    spool = env_of(sender)["RUDDER_FAST_SPOOL_DIR"]["value"]
    assert spool == mount_of(sender, "spool") == mount_of(init, "spool") == image_spool()

    # A new hostPath directory is root's: the init container (the only root one) hands it over.
    assert uid_of(spec, init) == 0
    assert init["securityContext"]["capabilities"]["add"] == ["CHOWN", "FOWNER"]
    script = init["command"][-1]
    assert f"chown {IMAGE_UID}:{IMAGE_UID} {spool}" in script
    assert f"chmod 0700 {spool}" in script
    assert uid_of(spec, sender) == IMAGE_UID
    assert spec["securityContext"]["runAsNonRoot"] is True

    drain = float(env_of(sender)["RUDDER_FAST_DRAIN_ON_STOP"]["value"])
    assert spec["terminationGracePeriodSeconds"] > drain + SENDER_STOP_S

    # The apps on the node: the same hostPath (which must already exist), path and uid; no sender.
    app_spec = pod_spec(app_deployment)
    (app,) = app_spec["containers"]
    assert by_name(app_spec["volumes"], "spool")["hostPath"] == {"path": RECIPE_SPOOL, "type": "Directory"}
    assert mount_of(app, "spool") == spool == env_of(app)["RUDDER_FAST_SPOOL_DIR"]["value"]
    assert uid_of(app_spec, app) == IMAGE_UID
    assert app["image"] == sender["image"]
    assert SENDER not in {c["name"] for c in containers(app_spec)}
    for pod in (spec, app_spec):
        for container in containers(pod):
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys()
            assert "memory" in resources["limits"]


# -- the sender's settings --------------------------------------------------------------------------------


def sender_envs() -> dict[str, dict[str, Any]]:
    """Every variable given to the sender in the manifests: name → one of its definitions."""
    found: dict[str, dict[str, Any]] = {}
    for manifest in MANIFESTS:
        for doc in documents(manifest):
            for container in containers(pod_spec(doc)):
                if container.get("command") == [SENDER]:
                    found.update(env_of(container))
    return found


@pytest.fixture(scope="module")
def sender_help() -> str:
    proc = subprocess.run(
        [str(BIN / SENDER), "--help"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# Promised by the public interface; another change adds it to the sender.
DRAIN_ON_STOP = "RUDDER_FAST_DRAIN_ON_STOP"


def test_sender_variables_in_the_manifests_are_real_options(sender_help: str) -> None:
    names = set(sender_envs()) - {DRAIN_ON_STOP}
    assert {"RUDDER_FAST_SPOOL_DIR", "RUDDER_WRITE_KEY", "RUDDER_DATA_PLANE_URL"} <= names
    unknown = [name for name in names if f"${name}" not in sender_help]
    assert not unknown, f"not options of rudder-fast-sender: {unknown}"


def test_drain_on_stop_is_a_real_option_and_the_sender_accepts_the_manifests_settings(
    sender_help: str, spool_dir: Path, devserver: DevServer, senders: Senders
) -> None:
    if "--drain-on-stop" not in sender_help:
        pytest.skip(f"this rudder-fast-sender has no --drain-on-stop yet: {DRAIN_ON_STOP} is not checked")
    assert f"${DRAIN_ON_STOP}" in sender_help
    plain = {
        name: definition["value"]
        for name, definition in sender_envs().items()
        if "value" in definition and name not in ("RUDDER_FAST_SPOOL_DIR", "RUDDER_DATA_PLANE_URL")
    }
    assert DRAIN_ON_STOP in plain
    # The manifest's values, against the devserver: accepted (not exit 2), and a drain of nothing is done.
    result = senders.run(["--drain"], env=sender_env(spool_dir, devserver.url, **plain), timeout=60)
    assert result.returncode == 0, result.stderr
