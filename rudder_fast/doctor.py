"""``rudder-fast doctor``: checks a setup end to end without sending an event, and says what to fix.

In order: the spool directory (which one, and why), its ownership and permissions, free space against
the quota, the sender (running, and its delivery state), other spools where events wait unread, the
write key, the data plane URL, the proxy, and the data plane itself. The last one posts an empty batch
(``{"batch": []}``): the gateway checks the write key and the source before it looks at the body, so
its ``400 empty batch payload`` proves the URL, the TLS setup, the proxy, the key and the source all
work, and stores nothing.

Each check gives a :class:`Finding`; the command exits 0 when none failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from . import __version__, config, locate, safefile
from .errors import ConfigurationError, SpoolError
from .layout import SpoolPaths, check_parent, check_private, parent_warning
from .quota import read_control, sender_running
from .transport import Transport, TransportError, batch_url, redact_url
from .wire import SPEEDUPS_MISSING, speedups_built

OK: Final = "ok"
WARN: Final = "warn"
FAIL: Final = "FAIL"
INFO: Final = "info"

# A reinstall of this version that builds rudder_fast._speedups: a C compiler and the headers of the
# Python that runs rudder-fast, then pip without its cache (which holds the wheel built without it).
_SPEEDUPS_FIX: Final = (
    "install gcc, libc6-dev and the headers of the Python that runs rudder-fast (Debian's python3: "
    "`apt-get install gcc libc6-dev python3-dev`; python.org's images and pyenv's have them), then "
    f"`pip install --force-reinstall --no-deps --no-cache-dir rudder-fast=={__version__}`"
)
WAIT_STEP_S: Final = 0.5  # --wait: between two checks
STATUS_STALE_S: Final = 10.0  # a running sender refreshes its status every second


@dataclass(frozen=True)
class Finding:
    check: str
    verdict: str  # OK, WARN, FAIL or INFO
    text: str
    fix: str | None = None


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"  # pragma: no cover


def spool_findings(spool: Path, origin: str) -> list[Finding]:
    """The directory, who owns it, who may use it, and the room left on its file system."""
    found = [Finding("spool", INFO, f"{spool} ({origin})")]
    try:
        st = os.lstat(spool)
    except (FileNotFoundError, NotADirectoryError):  # (a file where a parent directory should be)
        return [*found, _missing(spool)]
    except OSError as exc:
        return [*found, Finding("spool", FAIL, f"cannot look at {spool}: {exc.strerror}")]
    if stat.S_ISLNK(st.st_mode):
        return [
            *found,
            Finding(
                "spool", FAIL,
                f"{spool} is a symbolic link, which producers and the sender refuse: every call returns "
                "None (dropped as spool_unusable)",
                f"give the directory itself, on both sides: {config.ENV_SPOOL_DIR}={os.path.realpath(spool)}",
            ),
        ]  # fmt: skip
    if not stat.S_ISDIR(st.st_mode):
        return [*found, Finding("spool", FAIL, f"{spool} is not a directory")]
    found.append(_permissions(spool, st))
    found.append(_free_space(spool))
    return found


def _missing(spool: Path) -> Finding:
    """A spool that does not exist: the first call (or the sender) creates it, with its parents, where
    this user may; else every call is dropped."""
    fix = f"create it for the app's user: `sudo install -d -o APPUSER -m 700 {spool}`"
    dropped = "every call returns None (dropped as spool_unusable)"
    parent = spool.absolute().parent
    ancestor = parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():  # a file, or a symbolic link to nothing or to a file, in the way
        what = (
            "a symbolic link to nothing"
            if ancestor.is_symlink() and not ancestor.exists()
            else "not a directory"
        )
        return Finding(
            "spool",
            FAIL,
            f"{spool} does not exist and cannot be created: {ancestor} is {what}; {dropped}",
            fix,
        )
    if ancestor == parent:
        owner = os.stat(parent).st_uid
        if os.geteuid() == 0 and owner != 0:  # root looking at a place of the app user's, as it would
            return Finding(
                "spool", WARN,
                f"{spool} does not exist yet; its parent belongs to uid {owner}: the app and the sender "
                "must run as that user (the first call creates it)",
                f"check as that user: `sudo -u '#{owner}' rudder-fast doctor`",
            )  # fmt: skip
        try:
            check_parent(spool)
        except (SpoolError, OSError) as exc:
            return Finding("spool", FAIL, f"{spool} does not exist, and could not be used there: {exc}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return Finding(
            "spool", FAIL,
            f"{spool} does not exist, and this user (uid {os.geteuid()}) cannot create it in {ancestor}: "
            + dropped,
            f"{fix}, or start the sender once as that user (it creates it)",
        )  # fmt: skip
    return Finding(
        "spool", WARN,
        f"{spool} does not exist yet: the first call, or the sender, creates it, private to its user",
        f"if the app and the sender run as different users, {fix} first",
    )  # fmt: skip


def _permissions(spool: Path, st: os.stat_result) -> Finding:
    mode = stat.S_IMODE(st.st_mode)
    owner = f"owned by uid {st.st_uid}, mode {mode:04o}"
    if not os.access(spool, os.W_OK | os.X_OK):
        return Finding(
            "permissions", FAIL, f"{owner}: this user (uid {os.geteuid()}) cannot write to it",
            f"run the app and the sender as uid {st.st_uid}, or `sudo chown APPUSER {spool}`",
        )  # fmt: skip
    # Root looking at the app user's spool, as set up in the README, checks it as that user would; only
    # root's own calls (and a sender run as root) would refuse it.
    as_its_owner = st.st_uid if os.geteuid() == 0 and st.st_uid != 0 else None
    try:
        check_parent(spool, as_its_owner)
        check_private(SpoolPaths(spool), as_its_owner)
    except (SpoolError, OSError) as exc:
        return Finding("permissions", FAIL, str(exc), _permissions_fix(str(exc), spool))
    if as_its_owner is not None:
        return Finding(
            "permissions", WARN,
            f"{owner}: the app and the sender must run as uid {st.st_uid} (as root they would refuse it)",
            f"check as that user: `sudo -u '#{st.st_uid}' rudder-fast doctor`",
        )  # fmt: skip
    warning = parent_warning(spool)
    if warning:
        return Finding("permissions", WARN, f"{owner}; {warning}")
    return Finding("permissions", OK, owner)


def _permissions_fix(problem: str, spool: Path) -> str:
    if "parent directory" in problem:
        return "put the spool in a directory owned by root or by the app's user"
    if "owned by uid" in problem:
        return (
            f"run the app and the sender as its owner, or give it to their user: `chown -R APPUSER {spool}`"
        )
    return f"`chmod 700 {spool}` (and its subdirectories)"


def _free_space(spool: Path) -> Finding:
    free = shutil.disk_usage(spool).free
    control = read_control(SpoolPaths(spool).control)
    quota = control.quota_bytes if control is not None else 0
    if quota <= 0:
        return Finding(
            "free space", WARN if free < 256 * 2**20 else OK,
            f"{_size(free)} free; no quota: an outage can fill this file system",
            "bound the spool: `rudder-fast-sender --quota-bytes 512M`" if free < 256 * 2**20 else None,
        )  # fmt: skip
    small = config.quota_warning(quota)
    if small:
        return Finding(
            "free space", WARN, f"{_size(free)} free; {small}", "`rudder-fast-sender --quota-bytes 512M`"
        )
    room = quota - control.usage_bytes if control is not None else quota
    if free < room:
        return Finding(
            "free space", WARN, f"{_size(free)} free, less than the quota leaves room for ({_size(room)})",
            "free space, or lower --quota-bytes: the disk fills before the quota protects it",
        )  # fmt: skip
    return Finding("free space", OK, f"{_size(free)} free; quota {_size(quota)}")


def read_status(spool: Path) -> dict[str, Any]:
    raw = safefile.read_small(SpoolPaths(spool).status)
    if raw is None:
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _status_of_a_live_sender(status: dict[str, Any]) -> bool:
    """Whether ``status`` was written by a process that still runs (not one a sender that has just
    taken the lock will replace at its first turn)."""
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0 or not isinstance(status.get("updated_at"), (int, float)):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        pass
    return True


def loops_finding(status: dict[str, Any]) -> Finding:
    """Whether the sender's per-event loops run in C: the running sender's own word (its status), which
    may run from another install (a sidecar's image); else this install's, which a sender started from
    here would have."""
    loops = status.get("loops") if _status_of_a_live_sender(status) else None
    whose = f"the running sender (pid {status.get('pid')})" if loops else "a sender started from this install"
    if loops is None:
        loops = "C" if speedups_built() else "Python"
    if loops == "C":
        return Finding("C extension", OK, f"built: {whose} reads frames and writes events in C")
    return Finding("C extension", WARN, f"{whose}: {SPEEDUPS_MISSING}", _SPEEDUPS_FIX)


def sender_findings(spool: Path, status: dict[str, Any], now: float) -> list[Finding]:
    """Whether a sender runs on this spool, how delivery goes, and spools no sender reads."""
    found: list[Finding] = []
    if not sender_running(SpoolPaths(spool).sender_lock):
        found.append(
            Finding(
                "sender",
                FAIL,
                f"no rudder-fast-sender runs on {spool}: events written there wait",
                f"start it: `rudder-fast-sender --spool-dir {spool}` (see the README's deployment recipes)",
            )
        )
    elif not _status_of_a_live_sender(status):
        found.append(
            Finding(
                "sender", FAIL,
                "a sender holds the spool's lock but has not written its status yet: it is starting",
                "check again in a few seconds: `rudder-fast doctor --wait 10`",
            )
        )  # fmt: skip
    else:
        state = status.get("state", "unknown")
        age = now - float(status["updated_at"])
        text = f"running (pid {status.get('pid')}), {state}"
        if age > STATUS_STALE_S:
            found.append(Finding("sender", WARN, f"{text}, but its status is {age:.0f} s old: is it stuck?"))
        elif state in {"ok", "starting"}:
            found.append(Finding("sender", OK, text))
        elif state == "stalled":
            oldest = float(status.get("oldest_request_age_s") or 0.0)
            found.append(
                Finding(
                    "sender", WARN, f"{text}: a request has waited {oldest:.0f} s for its answer",
                    "the network path or the data plane hangs: see the reachability check below",
                )
            )  # fmt: skip
        else:
            error = status.get("last_error") or "?"
            found.append(
                Finding("sender", FAIL, f"{text}: {error}", "see the checks below and the sender's log")
            )
    for other in locate.other_spools(spool):
        if other.closed_to is not None:  # may be: this user cannot see inside
            found.append(
                Finding(
                    "other spool", WARN, locate.describe(other),
                    f"look as its owner: `sudo -u '#{other.closed_to}' rudder-fast status "
                    f"--spool-dir {other.spool_dir}`",
                )
            )  # fmt: skip
            continue
        found.append(
            Finding(
                "other spool",
                FAIL,
                locate.describe(other),
                f"set {config.ENV_SPOOL_DIR} to the same directory for the app and the sender",
            )
        )
    return found


@dataclass(frozen=True)
class Target:
    """What the data plane checks need, from the command line, the environment or the running sender."""

    urls: tuple[str, ...]  # in the sender's order of preference
    url_origin: str
    write_key: str | None
    key_origin: str
    proxies: tuple[str | None, ...]  # one per URL
    ca_bundle: str | None
    timeout: float


def target(args: argparse.Namespace, status: dict[str, Any], environ: config.Environ) -> Target:
    """The sender's own settings as far as this environment (and its status) tells them."""
    given = {
        "data_plane_url": args.data_plane_url,
        "write_key_file": args.write_key_file,
        "proxy": args.proxy,
    }
    values = config.option_values(given, environ)
    urls: tuple[str, ...] = values["data_plane_url"]
    url_origin = "from --data-plane-url or " + config.ENV_DATA_PLANE_URL
    if not urls:
        running = [dp.get("url") for dp in status.get("data_planes") or [] if isinstance(dp, dict)]
        urls = tuple(url for url in running if isinstance(url, str)) or (
            (status["data_plane_url"],) if status.get("data_plane_url") else ()
        )
        url_origin = "as the running sender reports it"
    key, key_origin = values["write_key"], f"from {config.ENV_WRITE_KEY}"
    if not key and values["write_key_file"]:
        key = config.read_write_key_file(Path(values["write_key_file"]))
        key_origin = f"from {values['write_key_file']}"
    proxies = tuple(config.proxy_for(url, values["proxy"], environ) for url in urls)
    return Target(urls, url_origin, key or None, key_origin, proxies, values["ca_bundle"], args.timeout)


def data_plane_findings(t: Target, status: dict[str, Any]) -> list[Finding]:
    """The write key, the URL, the proxy, and an empty batch posted to the data plane."""
    found: list[Finding] = []
    running_print = status.get("write_key_fingerprint")
    if t.write_key is None:
        found.append(
            Finding("write key", INFO if running_print else FAIL,
                    f"none in this environment{'; the running sender has one' if running_print else ''}",
                    None if running_print else f"set {config.ENV_WRITE_KEY} or pass --write-key-file")
        )  # fmt: skip
    else:
        mine = config.write_key_fingerprint(t.write_key)
        if running_print and running_print != mine:
            found.append(
                Finding("write key", WARN, f"{t.key_origin} (fingerprint {mine}) differs from the running "
                        f"sender's ({running_print})")
            )  # fmt: skip
        else:
            found.append(Finding("write key", OK, f"present, {t.key_origin} (fingerprint {mine})"))
    if not t.urls:
        found.append(
            Finding("data plane", FAIL, "no data plane URL",
                    f"pass --data-plane-url or set {config.ENV_DATA_PLANE_URL}")
        )  # fmt: skip
        return found
    for url, proxy in zip(t.urls, t.proxies, strict=True):
        found += _data_plane(t, url, proxy)
    return found


def _data_plane(t: Target, url: str, proxy: str | None) -> list[Finding]:
    """One data plane's URL, the proxy to it, and the empty batch posted to it."""
    try:
        full = batch_url(url)
    except ValueError as exc:
        return [Finding("data plane", FAIL, str(exc))]
    warning = config.url_path_warning(url, full)
    return [
        Finding("data plane URL", WARN if warning else OK, warning or f"{full} ({t.url_origin})"),
        Finding("proxy", INFO, f"through {redact_url(proxy)}" if proxy else "none: direct"),
        _probe(t, full, proxy),
    ]


def _probe(t: Target, full: str, proxy: str | None) -> Finding:
    """Post an empty batch: the gateway authenticates before it reads the body, and stores nothing."""
    transport = Transport(
        full, t.write_key or "", gzip=False, connect_timeout=t.timeout, read_timeout=t.timeout,
        pool_size=1, ca_bundle=t.ca_bundle, proxy=proxy,
    )  # fmt: skip
    try:
        answer = transport.post(b'{"batch":[]}')
    except TransportError as exc:
        return Finding("reachable", FAIL, f"POST {redact_url(full)}: {exc}", _reach_fix(str(exc), proxy))
    finally:
        transport.close()
    said = f"POST {redact_url(full)} answered {answer.status} {answer.body[:80]!r}"
    if answer.status in {200, 400}:
        return Finding("reachable", OK, f"{said}: the data plane accepts this write key and source")
    if answer.status == 401 and t.write_key is None:
        return Finding("reachable", OK, f"{said}: reachable (no write key here to check)")
    if answer.status == 401:
        return Finding(
            "reachable", FAIL, f"{said}: the write key is refused",
            "copy the source's write key from the RudderStack dashboard",
        )  # fmt: skip
    if answer.status == 404:
        return Finding(
            "reachable", FAIL, f"{said}: a wrong path or a disabled source",
            "give the data plane's base URL (without /v1/track and the like); check the source is enabled",
        )  # fmt: skip
    return Finding("reachable", WARN, f"{said}: the data plane is in trouble; the sender retries")


def _reach_fix(message: str, proxy: str | None) -> str:
    if message.startswith("TLS"):
        return "see the TLS message above; --ca-bundle FILE for a private CA"
    if "proxy" in message:
        return "check the proxy (--proxy, RUDDER_FAST_PROXY, HTTPS_PROXY/HTTP_PROXY, NO_PROXY)"
    return "check the URL, DNS, firewalls" + ("" if proxy else ", and whether this network needs a proxy")


def render(findings: list[Finding]) -> str:
    problems = sum(f.verdict == FAIL for f in findings)
    lines = []
    for f in findings:
        lines.append(f"{f.verdict:<5} {f.check:<15} {f.text}")
        if f.fix:
            lines.append(f"{'':<5} {'':<15} fix: {f.fix}")
    summary = "healthy: nothing to fix" if not problems else f"{problems} problem(s) to fix"
    return "\n".join([*lines, "", f"rudder-fast doctor: {summary}"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-plane-url",
        action="append",
        default=None,
        help=f"each data plane to check (repeat it for several); default: ${config.ENV_DATA_PLANE_URL}, "
        "else the running sender's",
    )
    parser.add_argument("--write-key-file", default=None, help=f"default: ${config.ENV_WRITE_KEY}")
    parser.add_argument(
        "--proxy", default=None, help=f"default: ${config.ENV_PROXY}, else HTTPS_PROXY/HTTP_PROXY"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds for the data plane's answer")
    parser.add_argument("--no-network", action="store_true", help="skip the data plane check")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="check again every half second until healthy, for up to SECONDS (a sender or data plane "
        "started just before may still be starting); the last report is printed",
    )


def run(args: argparse.Namespace, now: float) -> int:
    """Print the report; 0 when healthy, 1 otherwise. With ``--wait``, the report of the first healthy
    check, or of the last one when the time ran out."""
    deadline = time.monotonic() + max(0.0, args.wait)
    findings = check(args, now)
    while any(f.verdict == FAIL for f in findings) and time.monotonic() + WAIT_STEP_S <= deadline:
        time.sleep(WAIT_STEP_S)
        findings = check(args, time.time())
    print(render(findings), flush=True)
    return 1 if any(f.verdict == FAIL for f in findings) else 0


def check(args: argparse.Namespace, now: float) -> list[Finding]:
    """Every check, once."""
    environ = os.environ
    if args.spool_dir is not None:
        origin = "from --spool-dir"
    elif environ.get(config.ENV_SPOOL_DIR):
        origin = f"from ${config.ENV_SPOOL_DIR}"
    else:
        origin = f"the default for uid {os.geteuid()}: set {config.ENV_SPOOL_DIR} on both sides to choose"
    spool = config.resolve_spool_dir(args.spool_dir)
    findings = spool_findings(spool, origin)
    status = read_status(spool) if spool.is_dir() else {}
    findings.append(loops_finding(status))
    findings += sender_findings(spool, status, now)
    try:
        t = target(args, status, environ)
    except ConfigurationError as exc:
        findings.append(Finding("configuration", FAIL, str(exc)))
    else:
        if not args.no_network:
            findings += data_plane_findings(t, status)
    return findings
