"""``rudder-fast``: the toolbox (inspect, status, devserver, demo)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from . import config, demo, devserver, ledger, status
from .reading import scan_pending
from .schema import CALLS, TRAITS_IN_CONTEXT, WIRE_TO_KEYWORD


def _ledger_state(spool: Path) -> ledger.LedgerState:
    """The sender's committed ledger (read-only: never sets a corrupt ledger aside)."""
    return ledger.read(spool / "ledger") or ledger.LedgerState()


def _cmd_inspect(args: argparse.Namespace) -> int:
    spool = config.resolve_spool_dir(args.spool_dir)
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
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    spool = config.resolve_spool_dir(args.spool_dir)
    if not spool.is_dir():
        print(f"rudder-fast: no spool at {spool}", file=sys.stderr)
        return 2
    while True:
        doc = status.collect(spool)
        if args.json:
            sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        else:
            text = status.render(doc)
            if args.watch:
                text = "\x1b[H\x1b[2J" + text  # home and clear, like top
            print(text, flush=True)
        if not args.watch:
            return 0
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


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

    emitter = Emitter(args.spool_dir)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rudder-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser(
        "inspect", help="print every pending event as a JSON line, as the sender would post it"
    )
    inspect.add_argument("--spool-dir", type=Path, default=None)
    inspect.set_defaults(func=_cmd_inspect)
    st = sub.add_parser("status", help="backlog, producers, sender state and delivery counters")
    st.add_argument("--spool-dir", type=Path, default=None)
    st.add_argument("--json", action="store_true", help="machine-readable")
    st.add_argument("--watch", action="store_true", help="refresh in place until interrupted")
    st.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (--watch)")
    st.set_defaults(func=_cmd_status)
    rep = sub.add_parser(
        "replay", help="re-enter events from rejected/*.jsonl (after fixing the cause) into the spool"
    )
    rep.add_argument("files", nargs="+", type=Path)
    rep.add_argument("--spool-dir", type=Path, default=None)
    rep.set_defaults(func=_cmd_replay)
    dev = sub.add_parser("devserver", help="a local stand-in for the RudderStack data plane")
    devserver.add_arguments(dev)
    dev.set_defaults(func=devserver.run)
    dem = sub.add_parser("demo", help="devserver + sender + producers on this machine, with a summary")
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
    except OSError as exc:  # a missing spool, a permission denied, a damaged spool file
        print(f"rudder-fast: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
