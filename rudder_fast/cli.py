"""``rudder-fast``: the toolbox (status, inspect, doctor, replay, devserver, demo)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from . import __version__, config, demo, devserver, doctor, ledger, status
from .reading import scan_pending
from .schema import CALLS, TRAITS_IN_CONTEXT, WIRE_TO_KEYWORD

DESCRIPTION = (
    "The rudder_fast toolbox: look at a spool, check a setup, replay refused events, try it locally."
)
EPILOG = f"""\
commands:
  status     backlog, producers, sender state and delivery counters
  inspect    every pending event as a JSON line, as the sender would post it
  doctor     check the setup end to end (spool, sender, write key, proxy, data plane) and say what to fix
  replay     re-enter events from rejected/*.jsonl into the spool
  devserver  a local stand-in for the RudderStack data plane
  demo       devserver + sender + producers on this machine, with a summary

The spool is --spool-dir, else ${config.ENV_SPOOL_DIR}, else /var/spool/rudder-fast for root and
~/.local/state/rudder-fast/spool for other users. `rudder-fast COMMAND --help` shows a command's options.
Exit codes: 0 done (doctor: healthy), 1 problems found (doctor) or events not replayed (replay),
2 bad usage, no spool, or a spool this user cannot read."""


class CommandError(Exception):
    """A one-line message for the user; the command exits 2."""


def existing_spool(spool_dir: Path | None) -> Path:
    """The spool the command works on; it must exist (a typo must not read as an empty spool)."""
    spool = config.resolve_spool_dir(spool_dir)
    origin = (
        "--spool-dir" if spool_dir is not None
        else f"${config.ENV_SPOOL_DIR}" if os.environ.get(config.ENV_SPOOL_DIR)
        else "the default for this user; set --spool-dir or " + config.ENV_SPOOL_DIR
    )  # fmt: skip
    if spool.is_symlink():
        # Producers and the sender refuse it (layout.ensure_spool): read through the link, the spool
        # would look healthy while every call made with this path is dropped as spool_unusable.
        raise CommandError(
            f"spool path {spool} ({origin}) is a symbolic link, which producers and the sender refuse: "
            f"every call made with it is dropped. Use the directory itself: {os.path.realpath(spool)}"
        )
    if not spool.is_dir():
        raise CommandError(f"no spool at {spool} ({origin})")
    return spool


def _ledger_state(spool: Path) -> ledger.LedgerState:
    """The sender's committed ledger (read-only: never sets a corrupt ledger aside)."""
    return ledger.read(spool / "ledger") or ledger.LedgerState()


def _cmd_inspect(args: argparse.Namespace) -> int:
    spool = existing_spool(args.spool_dir)
    out = sys.stdout.buffer
    state = _ledger_state(spool)
    summary = scan_pending(
        spool, on_event=lambda line: out.write(line + b"\n"), acked=state.offsets, ahead=state.ahead
    )
    out.flush()
    print(
        f"{summary.events} events pending in {summary.segments} segments; "
        f"{summary.skipped_bytes} bytes skipped as torn or corrupt; "
        f"dropped by producers: {summary.dropped or 'none'}",
        file=sys.stderr,
    )
    for note in status.notes(spool, status.sender_running_on(spool)):
        print(f"note: {note}", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    spool = existing_spool(args.spool_dir)
    if not args.watch:
        _print_status(spool, args.json, redraw=False, stamp=False)
        return 0
    # Redrawn in place on a terminal, like top; into a pipe or a file, one plain report after another.
    redraw = sys.stdout.isatty()
    try:
        while True:
            _print_status(spool, args.json, redraw=redraw, stamp=not redraw)
            time.sleep(args.interval)
    except KeyboardInterrupt:  # Ctrl-C ends --watch, whether it came during a wait or a report
        return 0


def _print_status(spool: Path, as_json: bool, *, redraw: bool, stamp: bool) -> None:
    doc = status.collect(spool)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.buffer.flush()
        return
    text = status.render(doc)
    if redraw:
        text = "\x1b[H\x1b[2J" + text  # home and clear
    elif stamp:
        text = time.strftime("-- %Y-%m-%d %H:%M:%S --\n") + text
    print(text, flush=True)


# Every field of every call, by its wire name, but the two replay treats itself: the context (the
# library's own part and identify's copy of the traits are not the caller's) and the timestamp.
_REPLAY_FIELDS = {wire: kw for wire, kw in WIRE_TO_KEYWORD.items() if wire not in ("context", "timestamp")}


def replay_kwargs(event: dict[str, object]) -> tuple[str, dict[str, object]]:
    """The emit call that re-creates a wire event: (method name, keyword arguments)."""
    kind = event.get("type")
    if kind not in CALLS:
        raise ValueError(f"not a rudder event type: {kind!r}")
    kwargs = {kw: event[key] for key, kw in _REPLAY_FIELDS.items() if key in event}
    context = event.get("context")
    if isinstance(context, dict):
        context = {k: v for k, v in context.items() if k != "library"}
        if kind in TRAITS_IN_CONTEXT:
            context.pop("traits", None)  # re-added from the event's traits
        if context:
            kwargs["context"] = context
    # Keep the event's time: the original timestamp if it had one, else when it was first tracked.
    when = event.get("timestamp") or event.get("originalTimestamp")
    if isinstance(when, str):
        kwargs["timestamp"] = when
    return str(kind), kwargs


def _cmd_replay(args: argparse.Namespace) -> int:
    from .emitter import Emitter
    from .errors import InvalidEventError

    emitter = Emitter(existing_spool(args.spool_dir))
    replayed = failed = 0
    for path in args.files:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = orjson.loads(line)
                    event = doc.get("event", doc) if isinstance(doc, dict) else None
                    if not isinstance(event, dict):
                        raise ValueError("no event object on this line")
                    method, kwargs = replay_kwargs(event)
                    if getattr(emitter, method)(**kwargs) is None:
                        raise ValueError("dropped (spool over quota or unwritable)")
                    replayed += 1
                except (ValueError, InvalidEventError, orjson.JSONDecodeError) as exc:
                    failed += 1
                    print(f"{path}:{number}: not replayed: {exc}", file=sys.stderr)
    emitter.close()
    print(f"replayed {replayed} events into {emitter.spool_dir}; {failed} not replayed", file=sys.stderr)
    return 0 if failed == 0 else 1


def _cmd_doctor(args: argparse.Namespace) -> int:
    return doctor.run(args, time.time())


_SPOOL_HELP = f"the spool (default: ${config.ENV_SPOOL_DIR}, else this user's default)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rudder-fast",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rudder-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )  # fmt: skip

    st = command("status", "backlog, producers, sender state and delivery counters")
    st.add_argument("--spool-dir", type=Path, default=None, help=_SPOOL_HELP)
    st.add_argument("--json", action="store_true", help="one JSON document (per refresh)")
    st.add_argument("--watch", action="store_true", help="refresh until interrupted (in place on a terminal)")
    st.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (--watch)")
    st.set_defaults(func=_cmd_status)
    inspect = command("inspect", "print every pending event as a JSON line, as the sender would post it")
    inspect.add_argument("--spool-dir", type=Path, default=None, help=_SPOOL_HELP)
    inspect.set_defaults(func=_cmd_inspect)
    doc = command("doctor", "check a setup end to end without sending an event, and say what to fix")
    doc.add_argument("--spool-dir", type=Path, default=None, help=_SPOOL_HELP)
    doctor.add_arguments(doc)
    doc.set_defaults(func=_cmd_doctor)
    rep = command("replay", "re-enter events from rejected/*.jsonl (after fixing the cause) into the spool")
    rep.add_argument("files", nargs="+", type=Path, help="rejected/*.jsonl files (or JSON lines of events)")
    rep.add_argument("--spool-dir", type=Path, default=None, help=_SPOOL_HELP)
    rep.set_defaults(func=_cmd_replay)
    dev = command("devserver", "a local stand-in for the RudderStack data plane")
    devserver.add_arguments(dev)
    dev.set_defaults(func=devserver.run)
    dem = command("demo", "devserver + sender + producers on this machine, with a summary")
    demo.add_arguments(dem)
    dem.set_defaults(func=demo.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (``rudder-fast inspect | head``): not an error. Point stdout at
        # /dev/null so that the interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except CommandError as exc:
        print(f"rudder-fast: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"rudder-fast: {_permission_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a spool removed meanwhile, a damaged spool file
        where = f": {exc.filename}" if exc.filename else ""
        print(f"rudder-fast: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    return code


def _permission_message(exc: PermissionError) -> str:
    """Whose file it is, and how to read it."""
    path = exc.filename
    if not path:
        return f"permission denied: {exc}"
    try:
        owner = f"the spool's owner (uid {os.stat(path).st_uid})"
    except OSError:  # not even its directory may be looked into
        owner = "the spool's owner"
    return f"permission denied reading {path} as uid {os.geteuid()}: run this as {owner} or as root"


if __name__ == "__main__":
    sys.exit(main())
