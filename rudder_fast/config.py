"""Configuration: every default with its reason, every environment variable, and how they are read.

The one place that knows a setting's name, default and meaning. Producers read their settings when the
first call is made (:func:`resolve_spool_dir`, :func:`resolve_quota_bytes`), the sender from its
command line and environment (:func:`sender_config`, over the table :data:`SENDER_OPTIONS`, from which
the command line and its help are built too). Nothing here reads the environment at import time, and
the functions take the environment as an argument: no setting travels between functions through
``os.environ``. Options win over environment variables, which win over the defaults.

Two settings share a word: ``on_full``. A producer's ``on_full`` (``drop`` or ``block``) is what one
call does when the spool is over its quota; the sender's ``--on-full`` (``drop`` or ``drop_oldest``) is
the quota's policy: producers drop new events, or the sender deletes the oldest.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from .batching import SERVER_MAX_BODY
from .errors import ConfigurationError

Environ = Mapping[str, str]
OnFull = Literal["drop", "block"]  # a producer's call at the quota
QuotaPolicy = Literal["drop", "drop_oldest"]  # the sender's policy at the quota

# -- the spool and producers ---------------------------------------------------------------------------

ENV_SPOOL_DIR: Final = "RUDDER_FAST_SPOOL_DIR"
ENV_QUOTA_BYTES: Final = "RUDDER_FAST_QUOTA_BYTES"
ENV_ON_FULL: Final = "RUDDER_FAST_ON_FULL"
ENV_ALLOW_NETWORK_FS: Final = "RUDDER_FAST_ALLOW_NETWORK_FS"

# Where the spool lives when neither an argument nor RUDDER_FAST_SPOOL_DIR says. Producers and the sender
# must run as the same user (the spool is 0700), so a per-user default is consistent: root gets the
# conventional system spool, everyone else a directory under their XDG state home.
SYSTEM_SPOOL_DIR: Final = "/var/spool/rudder-fast"

# A segment is sealed and a new one started once it reaches this size. The sender deletes whole
# segments once acknowledged, so this bounds how much acknowledged data lingers on disk per producer;
# 8 MiB is ~50k typical events, large enough that rotation (a few syscalls) is rare.
SEGMENT_MAX_BYTES: Final = 8 * 1024 * 1024

# ...or once it is this old (checked on a call, never by a timer): a busy-then-quiet producer does not
# pin an acknowledged file for long, and an idle producer creates no files at all.
SEGMENT_MAX_AGE_S: Final = 60.0

# A producer's call at the quota: drop at once (the request path never waits) unless told to block.
ON_FULL: Final[OnFull] = "drop"
# How long ``block`` waits for room before dropping: long enough for a sender to catch up after a
# short outage, short enough that a batch job notices a stuck pipeline.
BLOCK_TIMEOUT_S: Final = 5.0

# After a write fails (disk full, file too large, I/O error) the producer drops events without
# touching the disk for this long: a full disk must not cost the app a failing syscall per call.
DISK_ERROR_BACKOFF_S: Final = 0.05

# Operational warnings (drops, unusable spool) are logged at most once per this many seconds.
WARNING_INTERVAL_S: Final = 60.0

# While calls are being dropped, their counts are written to the spool at most this often.
DROP_REPORT_INTERVAL_NS: Final = 100_000_000

# How often a producer re-reads the quota state (the sender's control file, or its own measurement)...
QUOTA_CHECK_NS: Final = 1_000_000_000
# ...and how often while it is over quota, so that it writes again soon after the sender makes room.
OVER_QUOTA_RECHECK_NS: Final = 50_000_000

# A producer that has been writing for this long with no sender running on its spool says so once (a
# spool the sender does not read is the commonest first-deployment mistake), then at most this often.
NO_SENDER_WARNING_NS: Final = 60_000_000_000
NO_SENDER_REPEAT_NS: Final = 600_000_000_000


def default_spool_dir(environ: Environ) -> Path:
    if os.geteuid() == 0:
        return Path(SYSTEM_SPOOL_DIR)
    state = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "rudder-fast" / "spool"


def resolve_spool_dir(spool_dir: str | os.PathLike[str] | None, environ: Environ | None = None) -> Path:
    """The spool directory: the argument, else $RUDDER_FAST_SPOOL_DIR, else the default above."""
    environ = os.environ if environ is None else environ
    if spool_dir is not None:
        return Path(spool_dir)
    env = environ.get(ENV_SPOOL_DIR)
    if env:
        return Path(env)
    return default_spool_dir(environ)


def resolve_quota_bytes(value: int | str | None, environ: Environ | None = None) -> tuple[int, str | None]:
    """A producer's quota in bytes from an int, a size ("512M"), or $RUDDER_FAST_QUOTA_BYTES (0 = none),
    and a warning to log when the environment's value was unusable and ignored. Logs nothing itself:
    producers call this where a logging handler that emits must not re-enter."""
    environ = os.environ if environ is None else environ
    if value is None:
        env = environ.get(ENV_QUOTA_BYTES)
        if not env:
            return 0, None
        try:
            return parse_size(env), None
        except ValueError as exc:
            # A producer must not fail every call over a deployment's typo: no quota, said loudly.
            return 0, f"ignoring {ENV_QUOTA_BYTES}: {exc}"
    if isinstance(value, int):
        if value < 0:
            raise ConfigurationError("quota_bytes must be >= 0")
        return value, None
    try:
        return parse_size(value), None
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def allow_network_fs(environ: Environ | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return is_true(environ.get(ENV_ALLOW_NETWORK_FS, ""))


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGTkmgt]?)(i?[Bb])?\s*$")


def parse_size(text: str) -> int:
    """``"512M"`` → 536870912: a whole number with an optional K/M/G/T (x1024) suffix."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use a number with an optional K, M or G suffix)")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2).lower()]


def is_true(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


# -- the sender ------------------------------------------------------------------------------------------

ENV_WRITE_KEY: Final = "RUDDER_WRITE_KEY"
ENV_WRITE_KEY_FILE: Final = "RUDDER_WRITE_KEY_FILE"
ENV_DATA_PLANE_URL: Final = "RUDDER_DATA_PLANE_URL"
ENV_PROXY: Final = "RUDDER_FAST_PROXY"

# Batch bound, in bytes of the body before compression. A quarter of the server's limit: large enough
# that the per-request cost (a round trip, a ledger commit) is spread over thousands of events, small
# enough that the requests in flight hold little memory, a retried batch resends little, and a batch
# never comes near the server's 10 s read deadline on a slow link.
MAX_BATCH_BYTES: Final = 1_000_000
MAX_BATCH_EVENTS: Final = 10_000  # bounds a batch of tiny events
# How long the first event of a partial batch may wait for company before the batch is sent anyway.
# Not at all once every writer is gone and all is read (Intake.flush_due): no company can come then.
LINGER_S: Final = 0.2
CONCURRENCY: Final = 4  # requests in flight: hides round-trip latency; the gateway scales out
CONNECT_TIMEOUT_S: Final = 5.0
# The gateway's own write timeout is 10 s; leave it room. A request with no complete answer by
# connect + read timeout from its start is abandoned and retried, however slowly bytes trickle in.
READ_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 5.0  # SIGTERM: wait this long for requests in flight, then abandon them
# A data plane answers a batch within a second when all is well: a request without an answer for this
# long is a stalled path or server, shown as the state `stalled` (well before the read timeout ends it).
STALLED_AFTER_S: Final = 3.0
# The sender fdatasyncs the live segments it tails (and segments/ after a new one appears) this often:
# a power cut loses at most about this much of what producers wrote, and producers never wait for it.
FSYNC_INTERVAL_S: Final = 1.0
# gzip level 1: on event JSON it already compresses ~5-8x, at several times the speed of the default
# level 6, and the sender's CPU, not the network, is what limits a host's throughput.
GZIP_LEVEL: Final = 1
REJECTED_MAX_BYTES: Final = 64 * 1024 * 1024  # bound on rejected/; beyond it refused events are counted
METRICS_HOST: Final = "127.0.0.1"  # loopback: exposing the metrics endpoint wider is an explicit choice
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

# The sender's loop.
POLL_MIN_S: Final = 0.005  # idle polling starts fast (new events are found within milliseconds)...
POLL_MAX_S: Final = 0.05  # ...and slows to this when nothing arrives
PROBE_INTERVAL_S: Final = 1.0  # how often an idle live segment's writer lock is probed
# Bytes read from a segment at a time. Below glibc's 128 KiB mmap threshold: a larger read buffer is a
# fresh mapping of zero-filled pages each time, which cost the sender ~0.2 us per event in page faults.
READ_CHUNK: Final = 64 * 1024
TMP_MAX_AGE_S: Final = 60.0  # a tmp/ entry this old whose creator is gone is debris: removed
TMP_SWEEP_S: Final = 30.0  # how often tmp/ is swept
COMMIT_RETRY_S: Final = 1.0  # a failing ledger commit (a full disk) is tried again this often
PRIVACY_CHECK_S: Final = 1.0  # how often the spool's directories are checked to still be private
STATUS_INTERVAL_S: Final = 1.0  # the status file and metrics snapshot are refreshed this often
DROPS_QUIET_S: Final = 30.0  # producers' drops are over once none has been reported for this long
# How often segments/ is listed (new files, and new bytes in idle ones): often while the spool is small,
# so events are picked up within milliseconds, less often as it grows, so thousands of segments cost
# little (the listing stats each file): 0.05 s + 0.5 ms per segment, at most 1 s.
RESCAN_BASE_S: Final = 0.05
RESCAN_PER_SEGMENT_S: Final = 0.0005
RESCAN_MAX_S: Final = 1.0


@dataclass(frozen=True)
class Option:
    """One option of ``rudder-fast-sender``: its flag, environment variable, parser and default (the
    command line, its help and the README's table are all made from these)."""

    flag: str
    env: str | None
    help: str
    default: Any = None
    parse: Callable[[str], Any] = str
    switch: bool = False  # a flag without a value (its variable is true with 1/true/yes/on)
    metavar: str | None = None
    repeat: bool = False  # may be given more than once (its variable: a comma-separated list)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def _float(text: str) -> float:
    return float(text)


SENDER_OPTIONS: Final[tuple[Option, ...]] = (
    Option("--spool-dir", ENV_SPOOL_DIR, "the spool to ship", metavar="DIR"),
    Option(
        "--write-key", ENV_WRITE_KEY,
        "the source's write key. A command-line argument is visible to every user of the host (ps, "
        "/proc): prefer the environment variable or --write-key-file", metavar="KEY",
    ),
    Option("--write-key-file", ENV_WRITE_KEY_FILE, "read the write key from this file (a mounted secret)",
           metavar="FILE"),
    Option("--data-plane-url", ENV_DATA_PLANE_URL, "the data plane, with or without /v1/batch; repeat it "
           "(or separate them with commas in the variable) for data planes to fail over to, in order of "
           "preference", metavar="URL", repeat=True),
    Option("--drain", None, "deliver everything present, then exit (4 if it cannot)", switch=True),
    Option("--drain-timeout", None, "give up draining after SECONDS (exit 4)", parse=_float,
           metavar="SECONDS"),
    Option("--drain-on-stop", "RUDDER_FAST_DRAIN_ON_STOP", "on SIGTERM or SIGINT, keep delivering for up "
           "to SECONDS: exit 0 once nothing is pending, 4 if time ran out (the rest stays in the spool); "
           "0 stops at once, leaving the backlog for the next start. For a spool that outlives no "
           "restart (a pod's emptyDir)", 0.0, _float, metavar="SECONDS"),
    Option("--no-gzip", "RUDDER_FAST_NO_GZIP", "send uncompressed bodies (data planes older than v1.4)",
           switch=True),
    Option("--max-batch-bytes", "RUDDER_FAST_MAX_BATCH_BYTES", "bound on a request body, before gzip",
           MAX_BATCH_BYTES, int, metavar="BYTES"),
    Option("--max-batch-events", "RUDDER_FAST_MAX_BATCH_EVENTS", "bound on the events of a request",
           MAX_BATCH_EVENTS, int, metavar="N"),
    Option("--linger", "RUDDER_FAST_LINGER", "seconds a partial batch waits for more events", LINGER_S,
           _float, metavar="SECONDS"),
    Option("--concurrency", "RUDDER_FAST_CONCURRENCY", "requests in flight", CONCURRENCY, int,
           metavar="N"),
    Option("--connect-timeout", "RUDDER_FAST_CONNECT_TIMEOUT", "seconds to connect", CONNECT_TIMEOUT_S,
           _float, metavar="SECONDS"),
    Option("--read-timeout", "RUDDER_FAST_READ_TIMEOUT", "seconds for the answer (the whole request: "
           "connect + read timeout)", READ_TIMEOUT_S, _float, metavar="SECONDS"),
    Option("--proxy", ENV_PROXY, "forward proxy for the data plane (http://[user:password@]host:port); "
           "without it, HTTPS_PROXY / HTTP_PROXY / NO_PROXY (either case) are honoured, as requests does",
           metavar="URL"),
    Option("--ca-bundle", "RUDDER_FAST_CA_BUNDLE", "CA certificates for an https data plane (TLS is "
           "always verified)", metavar="FILE"),
    Option("--fsync-interval", "RUDDER_FAST_FSYNC_INTERVAL", "fdatasync the segments being written (and "
           "the spool's directory after a new one) every SECONDS: what a power cut loses is bounded by it; "
           "0 turns it off", FSYNC_INTERVAL_S, _float, metavar="SECONDS"),
    Option("--quota-bytes", ENV_QUOTA_BYTES, "bound on the spool's unacknowledged bytes, e.g. 512M "
           "(K/M/G = x1024); producers resume below 90 %", 0, parse_size, metavar="SIZE"),
    Option("--on-full", ENV_ON_FULL, "at the quota: producers drop new events (drop), or the sender "
           "deletes the oldest (drop_oldest)", "drop", metavar="{drop,drop_oldest}"),
    Option("--metrics-port", "RUDDER_FAST_METRICS_PORT", "serve Prometheus metrics on this port",
           parse=int, metavar="PORT"),
    Option("--metrics-host", "RUDDER_FAST_METRICS_HOST", "address for --metrics-port", METRICS_HOST,
           metavar="HOST"),
    Option("--metrics-textfile", "RUDDER_FAST_METRICS_TEXTFILE", "write metrics to this file for "
           "node-exporter's textfile collector", metavar="FILE"),
    Option("--rejected-max-bytes", "RUDDER_FAST_REJECTED_MAX_BYTES", "bound on rejected/; refused "
           "events beyond it are counted, not kept", REJECTED_MAX_BYTES, parse_size, metavar="SIZE"),
    Option("--allow-network-fs", ENV_ALLOW_NETWORK_FS, "use a spool on NFS/CIFS anyway (unsafe: flock "
           "and appends are unreliable there)", switch=True),
    Option("--log-level", "RUDDER_FAST_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR", "INFO",
           metavar="LEVEL"),
)  # fmt: skip


@dataclass(frozen=True)
class SenderConfig:
    """Everything ``rudder-fast-sender`` runs with, checked. (``repr`` never shows the write key.)"""

    spool_dir: Path
    write_key: str = field(repr=False)
    data_plane_urls: tuple[str, ...]  # in order of preference
    gzip: bool = True
    max_batch_bytes: int = MAX_BATCH_BYTES
    max_batch_events: int = MAX_BATCH_EVENTS
    linger_s: float = LINGER_S
    concurrency: int = CONCURRENCY
    connect_timeout: float = CONNECT_TIMEOUT_S
    read_timeout: float = READ_TIMEOUT_S
    stop_timeout: float = STOP_TIMEOUT_S
    drain: bool = False
    drain_timeout: float | None = None
    drain_on_stop: float = 0.0  # seconds of delivery after SIGTERM/SIGINT; 0: stop at once
    ca_bundle: str | None = None
    # The proxy for each data plane, in the same order (None: direct). May hold a password.
    proxies: tuple[str | None, ...] = field(default=(), repr=False)
    fsync_interval: float = FSYNC_INTERVAL_S  # 0: off
    quota_bytes: int = 0  # 0: no quota
    on_full: QuotaPolicy = "drop"
    metrics_host: str = METRICS_HOST
    metrics_port: int | None = None
    metrics_textfile: Path | None = None
    rejected_max_bytes: int = REJECTED_MAX_BYTES
    allow_network_fs: bool = False
    log_level: str = "INFO"
    write_key_file: str | None = None  # where the key came from, if from a file

    @property
    def key_fingerprint(self) -> str:
        return write_key_fingerprint(self.write_key)

    @property
    def data_plane_url(self) -> str:
        """The preferred data plane."""
        return self.data_plane_urls[0]

    @property
    def proxy(self) -> str | None:
        """The preferred data plane's proxy."""
        return self.proxies[0] if self.proxies else None


def option_values(given: Mapping[str, Any], environ: Environ) -> dict[str, Any]:
    """Each option's value: given on the command line (not None), else its variable (parsed), else its
    default. A value that does not parse names where it came from."""
    values: dict[str, Any] = {}
    for option in SENDER_OPTIONS:
        value = given.get(option.dest)
        if option.switch:
            values[option.dest] = bool(value) or (
                option.env is not None and is_true(environ.get(option.env, ""))
            )
            continue
        source = option.flag
        if value is None and option.env is not None and environ.get(option.env):
            value, source = environ[option.env], option.env
            if option.repeat:
                value = [item for item in (part.strip() for part in value.split(",")) if item]
        if value is None:
            values[option.dest] = () if option.repeat else option.default
            continue
        try:
            if option.repeat:
                items = [value] if isinstance(value, str) else list(value)
                values[option.dest] = tuple(
                    option.parse(item) if isinstance(item, str) else item for item in items
                )
            else:
                values[option.dest] = option.parse(value) if isinstance(value, str) else value
        except ValueError as exc:
            raise ConfigurationError(f"{source}: {exc}") from None
    return values


def sender_config(given: Mapping[str, Any], environ: Environ | None = None) -> SenderConfig:
    """The sender's configuration from its command-line values (argparse's, by option ``dest``) and
    the environment, checked: a :class:`ConfigurationError` says what is wrong and how to fix it."""
    environ = os.environ if environ is None else environ
    v = option_values(given, environ)
    write_key = v["write_key"]
    if not write_key and v["write_key_file"]:
        write_key = read_write_key_file(Path(v["write_key_file"]))
    if not write_key:
        raise ConfigurationError(
            f"no write key: set {ENV_WRITE_KEY}, or pass --write-key-file (or --write-key, which every "
            f"user of the host can read in `ps`)"
        )
    _check(v)
    return SenderConfig(
        spool_dir=resolve_spool_dir(v["spool_dir"], environ),
        write_key=write_key,
        data_plane_urls=v["data_plane_url"],
        gzip=not v["no_gzip"],
        max_batch_bytes=v["max_batch_bytes"],
        max_batch_events=v["max_batch_events"],
        linger_s=v["linger"],
        concurrency=v["concurrency"],
        connect_timeout=v["connect_timeout"],
        read_timeout=v["read_timeout"],
        drain=v["drain"],
        drain_timeout=v["drain_timeout"],
        drain_on_stop=v["drain_on_stop"],
        ca_bundle=v["ca_bundle"],
        proxies=tuple(proxy_for(url, v["proxy"], environ) for url in v["data_plane_url"]),
        fsync_interval=v["fsync_interval"],
        quota_bytes=v["quota_bytes"],
        on_full=v["on_full"],
        metrics_host=v["metrics_host"],
        metrics_port=v["metrics_port"],
        metrics_textfile=Path(v["metrics_textfile"]) if v["metrics_textfile"] else None,
        rejected_max_bytes=v["rejected_max_bytes"],
        allow_network_fs=v["allow_network_fs"],
        log_level=str(v["log_level"]).upper(),
        write_key_file=None if v["write_key"] else v["write_key_file"],
    )


# (option, lowest, highest) of the numeric options with bounds.
_BOUNDS: Final = (
    ("max_batch_bytes", 1024, SERVER_MAX_BODY),
    ("max_batch_events", 1, 1_000_000),
    ("linger", 0.0, 3600.0),
    ("drain_on_stop", 0.0, 86400.0),
    ("concurrency", 1, 64),
    ("metrics_port", 0, 65535),
    ("connect_timeout", 0.001, 3600.0),
    ("read_timeout", 0.001, 3600.0),
    ("fsync_interval", 0.0, 3600.0),
)


def _check(v: Mapping[str, Any]) -> None:
    """Every value within its bounds, or a ConfigurationError that names the option."""
    urls = v["data_plane_url"]
    if not urls:
        raise ConfigurationError(f"no data plane URL: pass --data-plane-url or set {ENV_DATA_PLANE_URL}")
    for url in urls:
        _check_url(url)
    seen: set[str] = set()
    for url in urls:
        key = url.strip().rstrip("/").removesuffix("/v1/batch")
        if key in seen:
            raise ConfigurationError(f"the data plane URL {url} is given twice")
        seen.add(key)
    for dest, low, high in _BOUNDS:
        value = v[dest]
        if value is not None and not low <= value <= high:
            flag = "--" + dest.replace("_", "-")
            raise ConfigurationError(f"{flag} must be between {low:g} and {high:g}, not {value:g}")
    if v["on_full"] not in ("drop", "drop_oldest"):
        raise ConfigurationError(
            f"--on-full ({ENV_ON_FULL}) must be drop or drop_oldest, not {v['on_full']!r}"
        )
    if str(v["log_level"]).upper() not in LOG_LEVELS:
        raise ConfigurationError(
            f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {v['log_level']!r}"
        )


def proxy_for(url: str, explicit: str | None, environ: Environ) -> str | None:
    """The forward proxy to reach ``url`` through: ``explicit`` (--proxy, RUDDER_FAST_PROXY), else the
    scheme's HTTPS_PROXY / HTTP_PROXY variable (lower case first, either case, as requests and urllib
    read them). NO_PROXY (a list of host names, domain suffixes, IP addresses or networks, or ``*``)
    names the hosts reached directly, whichever way the proxy was given."""
    scheme, _, rest = url.strip().partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    host = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    proxy = explicit
    if not proxy:
        proxy = environ.get(f"{scheme}_proxy") or environ.get(f"{scheme.upper()}_PROXY")
    if not proxy:
        return None
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    if bypasses(host.lower(), no_proxy):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy  # as requests does: a bare host:port is an http proxy
    return proxy


def bypasses(host: str, no_proxy: str) -> bool:
    """Whether NO_PROXY names ``host``: ``*``, the host itself, a parent domain (``example.com`` and
    ``.example.com`` both cover ``a.example.com``), its IP address, or a network holding it."""
    import ipaddress

    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        entry = entry.lstrip(".").rsplit(":", 1)[0] if entry.count(":") == 1 else entry.lstrip(".")
        if host == entry or host.endswith("." + entry):
            return True
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def _check_url(url: str) -> None:
    if not url.strip().startswith(("http://", "https://")):
        raise ConfigurationError(f"the data plane URL must start with http:// or https://, not {url!r}")


# The data plane's single-event endpoints: a URL ending in one is a mistake (batches go to /v1/batch).
_EVENT_ENDPOINTS: Final = ("track", "identify", "page", "screen", "group", "alias", "import", "batch")


def url_path_warning(url: str, batch_url: str) -> str | None:
    """A warning for a data plane URL whose path is probably wrong, or None. The sender posts to
    ``<URL>/v1/batch`` (or to the URL itself if it already ends in /v1/batch), so a URL copied from an
    endpoint (``.../v1/track``) or with another path would be answered 404 on every request."""
    scheme, _, rest = url.strip().partition("://")
    path = "/" + rest.partition("/")[2].split("?", 1)[0].rstrip("/") if "/" in rest else ""
    if path in ("", "/") or path.endswith("/v1/batch"):
        return None
    last = path.rsplit("/", 1)[-1]
    if ("/v1/" in path + "/" and last in _EVENT_ENDPOINTS) or path.endswith("/v1"):
        base = scheme + "://" + rest.split("/", 1)[0] + path[: path.find("/v1")]
        return (
            f"the data plane URL {url} ends in an endpoint's path ({path}): batches would go to "
            f"{batch_url}, which the data plane answers 404. Give its base URL instead: {base}"
        )
    return (
        f"the data plane URL {url} has a path ({path}): batches go to {batch_url}. That is right only "
        "behind a proxy that serves the data plane under that prefix; the data plane itself answers "
        "404 there"
    )


def read_write_key_file(path: Path) -> str:
    """The write key kept in a file: its first line, stripped. Refused if others may write it (a
    warning, when others may read it, is the caller's to give: see :func:`key_file_warning`)."""
    try:
        st = os.stat(path)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the write key file {path}: {exc}") from None
    if st.st_mode & 0o022:
        raise ConfigurationError(f"the write key file {path} is writable by others: `chmod 600 {path}`")
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise ConfigurationError(f"the write key file {path} is empty")
    return key


# A quota below this is most likely a size without its suffix ("512" for "512M"): producers drop new
# events as soon as that much waits undelivered, which a moment of traffic or of outage reaches.
SMALL_QUOTA_BYTES: Final = 1024 * 1024


def quota_warning(quota_bytes: int) -> str | None:
    """A warning for a quota so small that producers would drop events at the first burst."""
    if 0 < quota_bytes < SMALL_QUOTA_BYTES:
        return (
            f"the quota is {quota_bytes:,} bytes: producers drop new events as soon as that much waits "
            "undelivered (a moment of traffic or of outage); a size takes a suffix: 512M, 2G"
        )
    return None


def key_file_warning(path: str | None) -> str | None:
    """A warning if the write key file may be read by every user."""
    if not path:
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & 0o004:
        return f"the write key file {path} is readable by every user: `chmod 600 {path}`"
    return None


def write_key_fingerprint(write_key: str) -> str:
    """A short one-way digest of a write key, published by the sender in ``<spool>/status``.

    Enough to tell whether an app and the sender use the same key, without either ever writing the key
    itself anywhere (a write key is a long random token: its digest does not lead back to it).
    """
    return "sha256:" + hashlib.sha256(write_key.encode()).hexdigest()[:16]
