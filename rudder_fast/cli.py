"""``rudder-fast``: the toolbox (inspect, status, devserver, demo)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from . import config, demo, devserver, ledger, status
from .reading import scan_pending


def _acked_offsets(spool: Path) -> dict[str, int]:
    """The sender's acknowledged offsets (read-only: never sets a corrupt ledger aside)."""
    try:
        state = ledger.decode((spool / "ledger").read_bytes())
    except FileNotFoundError:
        return {}
    return state.offsets if state is not None else {}


def _cmd_inspect(args: argparse.Namespace) -> int:
    spool = config.resolve_spool_dir(args.spool_dir)
    out = sys.stdout.buffer
    summary = scan_pending(spool, on_event=lambda line: out.write(line + b"\n"), acked=_acked_offsets(spool))
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
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
