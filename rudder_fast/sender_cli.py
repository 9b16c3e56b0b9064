"""The ``rudder-fast-sender`` command: its options (made from :data:`rudder_fast.config.SENDER_OPTIONS`),
its log format, its exit codes, and the start-up checks that turn a misconfiguration into one clear
line and exit code 2 rather than a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__, config, gcpolicy, locate, metrics
from .errors import ConfigurationError, SpoolError
from .layout import check_parent
from .sender import EXIT_LOCKED, EXIT_OK, EXIT_USAGE, Sender

log = logging.getLogger("rudder_fast.sender")

DESCRIPTION = "Deliver a rudder_fast spool to a RudderStack data plane, at least once."
EPILOG = (
    "Every option also reads the environment variable shown in brackets; an option on the command line "
    "wins. Exit codes: 0 done, 2 bad usage or configuration, 3 the spool already has a sender, 4 a "
    "drain that could not finish."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rudder-fast-sender",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rudder-fast {__version__}")
    for option in config.SENDER_OPTIONS:
        text = option.help
        if option.env:
            text += f" [${option.env}]"
        if option.default not in (None, False, 0):
            text += f" (default: {option.default})"
        text = text.replace("%", "%%")  # argparse formats help strings with %
        if option.switch:
            parser.add_argument(option.flag, action="store_true", default=None, help=text)
        elif option.repeat:
            parser.add_argument(option.flag, action="append", default=None, help=text, metavar=option.metavar)
        else:
            parser.add_argument(option.flag, default=None, help=text, metavar=option.metavar)
    return parser


def _raise_fd_limit() -> None:
    """One descriptor per live segment: take the hard limit so thousands of producers fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else soft, hard)
            )
        except (ValueError, OSError):
            pass


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"rudder-fast-sender: {message}", file=sys.stderr)
    return code


def _warn_about_settings(cfg: config.SenderConfig) -> None:
    """Settings that work but are most likely mistakes: a write key file others may read, a quota so
    small that producers drop events at the first burst."""
    for warning in (config.key_file_warning(cfg.write_key_file), config.quota_warning(cfg.quota_bytes)):
        if warning:
            log.warning("%s", warning)


def _nothing_to_drain(spool_dir: Path) -> int:
    """``--drain`` of a spool that does not exist: nothing to deliver, and nothing is created. Most often
    it is not the app's spool (a typo, a relative path read from another directory, another user's
    default), so the drain says so rather than only "complete"."""
    where = os.path.abspath(spool_dir)
    if os.path.isdir(os.path.dirname(where)):
        try:
            check_parent(Path(where))  # a place where no spool may be is said as a sender would say it
        except (SpoolError, OSError) as exc:
            return _fail(str(exc))
    log.warning(
        "no spool at %s: nothing to drain. No producer has written there: is it the app's spool "
        "(its RUDDER_FAST_SPOOL_DIR, an absolute path)?",
        where,
    )
    for other in locate.other_spools(Path(where)):
        log.warning("%s (this drain looked in %s)", locate.describe(other), where)
    log.info("sender stopped (exit %d)", EXIT_OK)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config.sender_config(vars(args))
    except ConfigurationError as exc:
        logging.basicConfig(level=logging.INFO, format=_FORMAT, stream=sys.stderr)
        return _fail(str(exc))
    logging.basicConfig(level=getattr(logging, cfg.log_level), format=_FORMAT, stream=sys.stderr)
    _warn_about_settings(cfg)
    if cfg.drain and not os.path.lexists(cfg.spool_dir):
        return _nothing_to_drain(cfg.spool_dir)
    try:
        sender = Sender(cfg)
        locked = sender.acquire_lock()
    except OSError as exc:
        return _fail(str(exc))
    if not locked:
        return _fail(f"another sender is already running for {cfg.spool_dir}", EXIT_LOCKED)
    try:
        sender.open_spool()
    except OSError as exc:
        return _fail(str(exc))
    _raise_fd_limit()
    server = None
    if cfg.metrics_port is not None:
        try:
            server = metrics.MetricsServer(cfg.metrics_host, cfg.metrics_port, sender.metrics_bytes)
        except OSError as exc:
            return _fail(f"cannot serve metrics on {cfg.metrics_host}:{cfg.metrics_port}: {exc}")
        server.start()
        log.info("metrics at %s", server.url)
    signal.signal(signal.SIGTERM, sender.request_stop)
    signal.signal(signal.SIGINT, sender.request_stop)
    gcpolicy.tune()
    try:
        code = sender.run()
    finally:
        if server is not None:
            server.close()
    log.info("sender stopped (exit %d)", code)
    return code


# One prefix per line: the program, its pid, the level.
_FORMAT = "%(asctime)s rudder-fast-sender[%(process)d] %(levelname)s %(message)s"


if __name__ == "__main__":
    sys.exit(main())
