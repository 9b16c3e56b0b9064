"""The benchmark report: runs the three benchmarks, then writes ``bench/results/report.md`` and its charts.

It runs ``bench/emit.py`` (what a call costs the caller), ``bench/send.py`` (what the sender delivers)
and ``bench/faults.py`` (what is lost under faults), each as a subprocess with ``--json`` into a
temporary directory (``--quick`` passed through), their own tables printed as they go. From their figures
it writes, into ``bench/results/``:

* ``report.md``: the key figures and ratios, rudder_fast vs rudder-sdk-python, then each benchmark's
  details, with the machine, the date and the load average;
* ``latency.png``: the per-call latency distribution of rudder_fast, rudder-sdk-python and the floor;
* ``throughput.png``: delivered events/s by number of producer processes;
* ``faults.png``: events lost under each fault, side by side.

``--json-dir DIR`` keeps the three JSON files there; with ``--no-run`` the report is made from the files
already in that directory (to redraw without measuring again). ``--readme`` prints the block that goes
in README.md's "Performance" section. Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, no display

import matplotlib.pyplot as plt
import orjson
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FAST, SDK  # a sibling module: bench/ is not a package

BENCH_DIR: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH_DIR.parent
RESULTS: Final = BENCH_DIR / "results"
BENCHES: Final = ("emit", "send", "faults")
COMMAND: Final = ".venv/bin/python bench/report.py"

FLOOR: Final = "floor"
COLORS: Final = {FAST: "#1f6fb4", SDK: "#d0432b", FLOOR: "#8c8c8c"}
DPI: Final = 100

Doc = dict[str, Any]


@dataclass(frozen=True)
class Figures:
    emit: Doc
    send: Doc
    faults: Doc
    machine: Doc


# -- running the benchmarks ------------------------------------------------------------------------


def run_benchmarks(json_dir: Path, quick: bool) -> list[str]:
    """Each benchmark in turn, its output passed through; the names of those that failed."""
    failed: list[str] = []
    for name in BENCHES:
        cmd = [sys.executable, str(BENCH_DIR / f"{name}.py"), "--json", str(json_dir / f"{name}.json")]
        if quick:
            cmd.append("--quick")
        print(f"\n== {' '.join([Path(cmd[0]).name, *cmd[1:]])}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.run(cmd, cwd=ROOT, check=False).returncode
        print(f"== {name}: exit {code} after {time.perf_counter() - t0:.0f} s", flush=True)
        if code != 0 or not (json_dir / f"{name}.json").exists():
            failed.append(name)
    return failed


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except (OSError, ValueError):
        pass
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(load_start: Sequence[float], load_end: Sequence[float], quick: bool) -> Doc:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu_model(),
        "cpus": os.cpu_count() or 1,
        "memory_gib": memory_gib(),
        "python": platform.python_version(),
        "commit": git_commit(),
        "load_start": list(load_start),
        "load_end": list(load_end),
        "mode": "quick" if quick else "full",
    }


# -- figures out of the JSON -----------------------------------------------------------------------


def us(ns: float) -> str:
    return f"{ns / 1000:.2f} µs"


def rate(x: float) -> str:
    return f"{x:,.0f}"


def times(x: float) -> str:
    return f"{x:.1f}x" if x < 100 else f"{x:,.0f}x"


def load(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def best_e2e(send: Doc) -> dict[int, dict[str, Doc]]:
    """The best run per (producers, library), as send.py compares them."""
    out: dict[int, dict[str, Doc]] = {}
    for run in send["e2e"]:
        slot = out.setdefault(int(run["producers"]), {})
        if run["kind"] not in slot or run["rate"] > slot[run["kind"]]["rate"]:
            slot[run["kind"]] = run
    return dict(sorted(out.items()))


def fault_cell(result: Doc) -> str:
    tracked, lost = int(result["tracked"]), int(result["lost"])
    if not tracked:
        return "n/a"
    return f"{lost:,} of {tracked:,} ({100 * lost / tracked:.0f}%)"


def fault_edge(results: Doc) -> str:
    fast, sdk = int(results[FAST]["lost"]), int(results[SDK]["lost"])
    if fast == sdk:
        return "same"
    return f"{sdk - fast:,} fewer lost" if fast < sdk else f"{fast - sdk:,} more lost"


def last_delivery(result: Doc) -> str:
    """The slowest run's time from the fault to its last event, or "never" if some run fell short."""
    done = [float(t) for t in result["complete_s"] if t is not None]
    if not result["tracked"]:
        return "n/a"
    if len(done) < len(result["complete_s"]):
        return "never"
    return f"{max(done):.1f} s"


def best_drain(send: Doc) -> Doc:
    """The drain round with the least sender CPU per event (the least disturbed by other work)."""
    return min(send["drain"], key=lambda d: d["sender_cpu_us_per_event"] or float("inf"))


def sender_rows(s: Doc) -> list[tuple[str, str, str, str]]:
    """The sender's CPU per event against zlib level 1 over the same JSON, and its drain rate."""
    zlib_us = s["reference"]["zlib1_us_per_event"]
    drain = best_drain(s)
    rows = [
        (
            f"sender CPU per event draining a {drain['backlog']:,}-event backlog",
            f"{drain['sender_cpu_us_per_event']:.2f} µs = {s['cpu_vs_zlib1']['drain']:.1f}x zlib level 1 "
            f"over the same JSON ({zlib_us:.2f} µs)",
            "n/a (no daemon)",
            "",
        )
    ]
    steady = best_e2e(s).get(4, {}).get(FAST)
    if steady is not None:
        rows.append(
            (
                "sender CPU per event, steady state with 4 producers",
                f"{steady['sender_cpu_us_per_event']:.2f} µs = "
                f"{s['cpu_vs_zlib1']['steady']:.1f}x zlib level 1",
                "n/a (a thread in each producer)",
                "",
            )
        )
    rows.append(
        (
            f"sender drain of a {drain['backlog']:,}-event backlog, events/s",
            rate(drain["rate"]),
            "n/a (no daemon)",
            "",
        )
    )
    return rows


def key_table(f: Figures) -> list[str]:
    """The headline table: every row rudder_fast vs rudder-sdk-python, measured in the same run."""
    e, s, x = f.emit, f.send, f.faults
    single = e["single"]
    rows: list[tuple[str, str, str, str]] = []
    fast, sdk, floor = single[FAST], single[SDK], single[FLOOR]
    rows.append(
        (
            "`track()` call, median",
            us(fast["median_ns"]),
            us(sdk["median_ns"]),
            f"{times(sdk['median_ns'] / fast['median_ns'])} faster",
        )
    )
    rows.append(
        (
            "`track()` call, p99",
            us(fast["p99_ns"]),
            us(sdk["p99_ns"]),
            f"{times(sdk['p99_ns'] / fast['p99_ns'])} faster",
        )
    )
    rows.append(
        (
            f"`track()` median vs the durable-append floor ({us(floor['median_ns'])})",
            f"{fast['median_ns'] / floor['median_ns']:.2f}x the floor",
            "",
            "",
        )
    )
    for n, runs in best_e2e(s).items():
        if FAST in runs and SDK in runs:
            a, b = runs[FAST]["rate"], runs[SDK]["rate"]
            rows.append(
                (
                    f"delivered events/s, {n} producer process{'es' if n > 1 else ''}",
                    rate(a),
                    rate(b),
                    f"{times(a / b)} more" if b else "",
                )
            )
    rows += sender_rows(s)
    mem = s["memory"][-1]
    rows.append(
        (
            f"sender peak RSS draining {mem['backlog']:,} events",
            f"{mem['sender_max_rss_kb'] / 1024:.1f} MiB (one per host)",
            "n/a (a queue + thread in each producer)",
            "",
        )
    )
    for fault in x["faults"]:
        r = fault["results"]
        what = fault["title"].split(" ", 1)[1]
        rows.append((f"events lost: {what}", fault_cell(r[FAST]), fault_cell(r[SDK]), fault_edge(r)))
    lines = [
        f"| measure | {FAST} | {SDK} | {FAST} advantage |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return lines


def machine_line(f: Figures) -> str:
    m = f.machine
    mem = f", {m['memory_gib']:.0f} GiB" if m["memory_gib"] else ""
    return (
        f"{m['date']}, `{f.emit['plan']}` run, commit {m['commit']}; {m['system']}, {m['cpus']} CPU(s) "
        f"({m['cpu']}){mem}, Python {m['python']}; load average (1/5/15 min) {load(m['load_start'])} at "
        f"the start, {load(m['load_end'])} at the end"
    )


def charts_md(prefix: str) -> list[str]:
    return [
        f"![Per-call latency of track(): rudder_fast, rudder-sdk-python and the floor]({prefix}latency.png)",
        f"![Delivered events/s by number of producer processes]({prefix}throughput.png)",
        f"![Events lost under each fault]({prefix}faults.png)",
    ]


def readme_block(f: Figures) -> str:
    lines = [*key_table(f), ""]
    lines.append(
        f"Measured {machine_line(f)}. Every figure is from one run with both libraries side by side; the "
        "machine is shared, so compare the ratios rather than the absolute times. Details, how each "
        "figure is measured, and the charts: `bench/results/report.md`."
    )
    # No links or images: README.md is also the package index's description, where relative ones break.
    lines.append("")
    lines.append(
        f"Made by `{COMMAND}` (the full run; `--quick` for the short one), which runs `bench/emit.py`, "
        "`bench/send.py` and `bench/faults.py` and writes `bench/results/`."
    )
    return "\n".join(lines)


def details(f: Figures) -> list[str]:
    e, s, x = f.emit, f.send, f.faults
    out: list[str] = []
    single = e["single"]
    out += [
        "## Per-call cost (`bench/emit.py`)",
        "",
        f"One process; the same `track('Order Completed', 7 properties)` call timed call by call with "
        f"`perf_counter_ns`, {single[FAST]['calls']:,} calls per variant in interleaved blocks. The floor is "
        "the least a durable per-call append can do (msgpack + crc32 + one `os.write` to an `O_APPEND` "
        "file); rudder-sdk-python is timed on the call only, its thread flushed between blocks, untimed. "
        f"Every figure includes {e['timer_ns']:.0f} ns of timer overhead.",
        "",
        "| variant | median | p90 | p99 |",
        "|---|---:|---:|---:|",
    ]
    for name in (FLOOR, FAST, SDK):
        v = single[name]
        out.append(f"| {e['labels'][name]} | {us(v['median_ns'])} | {us(v['p90_ns'])} | {us(v['p99_ns'])} |")
    r = e["ratios"]
    out += [
        "",
        f"rudder_fast / floor: median {r['fast_vs_floor_median']:.2f}x, p99 {r['fast_vs_floor_p99']:.2f}x "
        f"(target ≤ {e['targets']['fast_vs_floor_max']}x); rudder-sdk-python / rudder_fast: median "
        f"{r['sdk_vs_fast_median']:.1f}x, p99 {r['sdk_vs_fast_p99']:.1f}x "
        f"(target ≥ {e['targets']['sdk_vs_fast_min']:.0f}x).",
        "",
        "N forked processes emitting into the same spool at once (per-process median, averaged):",
        "",
        "| processes | rudder_fast median | p99 | calls/s, all processes | floor median | calls/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in e["multi"]:
        if row["errors"] or not row["median_ns"]:
            out.append(f"| {row['processes']} | failed: {'; '.join(row['errors'])} | | | | |")
            continue
        m, p, c = row["median_ns"], row["p99_ns"], row["calls_per_s"]
        out.append(
            f"| {row['processes']} | {us(m[FAST])} | {us(p[FAST])} | {rate(c[FAST])} | {us(m[FLOOR])} | "
            f"{rate(c[FLOOR])} |"
        )
    out += ["", f"Checks: spool {'OK' if e['checks']['spool_ok'] else 'MISMATCH'}, "
            f"rudder-sdk-python delivery {'OK' if e['checks']['sdk_ok'] else 'MISMATCH'}.", ""]  # fmt: skip

    out += [
        "## Delivery (`bench/send.py`)",
        "",
        f"Against the stand-in data plane (`rudder-fast devserver`, a fresh one per measurement) on "
        f"{s['filesystem']}. Drain: a running `rudder-fast-sender` is handed a backlog of "
        f"{s['fill']['events']:,} events at once (start-up excluded); its CPU (user + system, every "
        "thread) and the time until the data plane holds every event. The reference: the same events "
        "batched by the sender's own intake, each body gzipped by zlib at level 1; the sender gzips with "
        f"{s['gzip']}.",
        "",
        "| drain round | events/s | sender CPU per event | vs zlib level 1 |",
        "|---:|---:|---:|---:|",
        *[
            f"| {i} | {rate(d['rate'])} | {d['sender_cpu_us_per_event']:.2f} µs | "
            f"{d['sender_cpu_us_per_event'] / s['reference']['zlib1_us_per_event']:.1f}x |"
            for i, d in enumerate(s["drain"], 1)
        ],
        "",
        f"zlib level 1 over the same JSON: {s['reference']['zlib1_us_per_event']:.3f} µs per event "
        f"({s['reference']['body_bytes'] / s['reference']['events']:.0f} bytes of JSON each); the sender's "
        f"gzip: {s['reference']['sender_gzip_us_per_event']:.3f} µs.",
        "",
        "End to end: N forked producers each emit as fast as they can while events are delivered "
        "(rudder_fast: a running sender; the SDK: its own thread in each producer, then `flush` + "
        "`shutdown`); timed until the data plane holds every event.",
        "",
        "| producers | library | events | emit s | delivered s | delivered events/s | sender CPU per event |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for run in s["e2e"]:
        cpu = run.get("sender_cpu_us_per_event")
        out.append(
            f"| {run['producers']} | {run['kind']} | {run['delivered']:,} of {run['sent']:,} | "
            f"{run['emit_s']:.2f} | {run['delivered_s']:.2f} | {rate(run['rate'])} | "
            f"{f'{cpu:.2f} µs' if cpu else ''} |"
        )
    out += [
        "",
        "Sender memory, peak RSS (VmHWM) by backlog:",
        "",
        "| backlog | drain s | peak RSS |",
        "|---:|---:|---:|",
    ]
    for m in s["memory"]:
        out.append(f"| {m['backlog']:,} | {m['wall_s']:.2f} | {m['sender_max_rss_kb'] / 1024:.1f} MiB |")
    v = s["verdicts"]
    out += [
        "",
        f"Targets: sender CPU ≤ {s['targets']['cpu_vs_zlib1']}x zlib level 1 "
        f"{'MET' if v['cpu'] else 'NOT MET'}; ≥ {s['targets']['vs_sdk']:.0f}x the SDK's "
        f"delivered events/s with 4 producers {'MET' if v['vs_sdk'] else 'NOT MET'}; sender memory flat "
        f"{'MET' if v['memory_flat'] else 'NOT MET'}. Checks {'OK' if s['checks_ok'] else 'MISMATCH'}.",
        "",
    ]

    out += [
        "## Faults (`bench/faults.py`)",
        "",
        f"Real processes, a loopback devserver per library, a running `rudder-fast-sender`; the SDK with its "
        f"defaults. {x['runs']} run(s) of {x['events']:,} `track` calls per library per fault, totals below. "
        '"tracked" counts the calls that accepted their event; delivered events are identified one by one in '
        "the data plane's `--out` file. Outage: the data plane's port closed for "
        f"{x['outage_s']:.0f} s while the events are tracked, the producers alive throughout, then "
        f'{x["window_s"]:.0f} s allowed for delivery. "all in after": from the fault (the outage: from '
        "the data plane's return) to the last event's arrival, the slowest run.",
        "",
        f"| fault | {FAST} delivered | lost | all in after | {SDK} delivered | lost | all in after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fault in x["faults"]:
        a, b = fault["results"][FAST], fault["results"][SDK]
        out.append(
            f"| {fault['title']} | {a['delivered']:,} of {a['tracked']:,} | {a['lost']:,} | "
            f"{last_delivery(a)} | {b['delivered']:,} of {b['tracked']:,} | {b['lost']:,} | "
            f"{last_delivery(b)} |"
        )
    notes = [
        f"- {fault['title']}, {lib}: {note}"
        for fault in x["faults"]
        for lib in (FAST, SDK)
        for note in dict.fromkeys(fault["results"][lib]["notes"])
    ]
    dups = [
        f"- {fault['title']}, {lib}: {fault['results'][lib]['duplicates']} duplicate deliveries"
        for fault in x["faults"]
        for lib in (FAST, SDK)
        if fault["results"][lib]["duplicates"]
    ]
    if notes or dups:
        out += ["", "Notes:", "", *dups, *notes]
    out.append("")
    return out


def report_md(f: Figures) -> str:
    lines = [
        "# Benchmark report: rudder_fast vs rudder-sdk-python",
        "",
        f"Generated by `{COMMAND}{' --quick' if f.emit['plan'] == 'quick' else ''}`: {machine_line(f)}.",
        "",
        "The machine may be shared with other work: each benchmark measures both libraries in the same run "
        "(interleaved where it can), so the ratios are more reliable than the absolute figures.",
        "",
        "## Key figures",
        "",
        *key_table(f),
        "",
        *charts_md(""),
        "",
        *details(f),
    ]
    return "\n".join(lines)


# -- charts ----------------------------------------------------------------------------------------


def new_figure(width: float, height: float) -> Figure:
    fig = plt.figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def style(ax: Axes) -> None:
    ax.grid(True, which="major", alpha=0.35)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def us_formatter(x: float, _pos: int) -> str:
    return f"{x:g}"


def chart_latency(e: Doc, path: Path) -> None:
    single = e["single"]
    fig = new_figure(11, 4.6)
    cdf_ax, tail_ax = fig.subplots(1, 2)
    for name in (FLOOR, FAST, SDK):
        v = single[name]
        q = [float(p[0]) for p in v["quantiles_ns"]]
        x = [float(p[1]) / 1000 for p in v["quantiles_ns"]]
        label = f"{e['labels'][name]}\nmedian {us(v['median_ns'])}, p99 {us(v['p99_ns'])}"
        cdf_ax.plot(x, [100 * y for y in q], color=COLORS[name], lw=2, label=label)
        # Beyond 1/calls the sample says nothing more: the tail stops at the slowest call.
        tail = [(xi, 1 - qi) for xi, qi in zip(x, q, strict=True) if 1 - qi >= 1 / v["calls"] - 1e-12]
        tail_ax.plot([t[0] for t in tail], [t[1] for t in tail], color=COLORS[name], lw=2, label=name)
    for ax in (cdf_ax, tail_ax):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(us_formatter))
        ax.set_xlabel("time per track() call, µs (log scale)")
        style(ax)
    for y in (50, 99):
        cdf_ax.axhline(y, color="black", lw=0.8, ls=":", alpha=0.6)
        cdf_ax.annotate(f"p{y}", (0.01, y), xycoords=("axes fraction", "data"), ha="left", va="bottom")
    cdf_ax.set_ylabel("calls at most this long, %")
    cdf_ax.set_ylim(0, 100.5)
    cdf_ax.set_title("Distribution (CDF)")
    cdf_ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    tail_ax.set_yscale("log")
    tail_ax.set_ylabel("share of calls slower than this (log scale)")
    tail_ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _p: f"{100 * y:g}%"))
    tail_ax.set_title("The tail")
    tail_ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    calls = single[FAST]["calls"]
    fig.suptitle(
        f"Per-call latency of track(), one process, {calls:,} timed calls per variant "
        f"(timer overhead {e['timer_ns']:.0f} ns included)",
        fontsize=12,
    )
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def bar_labels(ax: Axes, xs: Sequence[float], heights: Sequence[float], texts: Sequence[str]) -> None:
    top = max([*heights, 1.0])
    for x, h, t in zip(xs, heights, texts, strict=True):
        ax.text(x, h + top * 0.015, t, ha="center", va="bottom", fontsize=9)


def chart_throughput(s: Doc, path: Path) -> None:
    best = best_e2e(s)
    counts = list(best)
    fig = new_figure(8, 4.8)
    ax = fig.subplots()
    width = 0.38
    for k, lib in enumerate((FAST, SDK)):
        xs = [i + (k - 0.5) * width for i in range(len(counts))]
        hs = [float(best[n][lib]["rate"]) if lib in best[n] else 0.0 for n in counts]
        ax.bar(xs, hs, width, color=COLORS[lib], label=lib)
        bar_labels(ax, xs, hs, [f"{h:,.0f}" for h in hs])
    top = max(float(r["rate"]) for runs in best.values() for r in runs.values())
    for i, n in enumerate(counts):
        if FAST in best[n] and SDK in best[n] and best[n][SDK]["rate"]:
            ratio = best[n][FAST]["rate"] / best[n][SDK]["rate"]
            high = max(float(best[n][FAST]["rate"]), float(best[n][SDK]["rate"]))
            ax.text(
                i,
                high + top * 0.08,
                f"rudder_fast: {ratio:.1f}x",
                ha="center",
                fontsize=11,
                fontweight="bold",
            )
    ax.set_xticks(range(len(counts)), [f"{n} producer process{'es' if n > 1 else ''}" for n in counts])
    ax.set_ylim(0, top * 1.22)
    ax.set_ylabel("events delivered per second")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _p: f"{y:,.0f}"))
    ax.set_xlabel("number of producer processes emitting at once")
    per = s["e2e"][0]["per_producer"]
    fig.suptitle(
        f"Delivered events/s: each producer emits {per:,} events as fast as it can,\n"
        "timed until the data plane holds them all (rudder_fast: via its sender daemon)",
        fontsize=11,
    )
    fig.legend(loc="outside lower center", ncols=2, frameon=False)
    style(ax)
    ax.grid(False, axis="x")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def chart_faults(x: Doc, path: Path) -> None:
    faults = x["faults"]
    fig = new_figure(10, 4.8)
    ax = fig.subplots()
    width = 0.38
    tracked = max(int(f["results"][lib]["tracked"]) for f in faults for lib in (FAST, SDK))
    for k, lib in enumerate((FAST, SDK)):
        xs = [i + (k - 0.5) * width for i in range(len(faults))]
        lost = [float(f["results"][lib]["lost"]) for f in faults]
        ax.bar(xs, lost, width, color=COLORS[lib], label=lib)
        texts = []
        for f, n in zip(faults, lost, strict=True):
            t = int(f["results"][lib]["tracked"])
            texts.append(f"{n:,.0f}\n({100 * n / t:.0f}%)" if t else "n/a")
        bar_labels(ax, xs, lost, texts)
    ax.set_xticks(range(len(faults)), [f["short"] for f in faults])
    ax.set_ylim(0, tracked * 1.2)
    ax.set_ylabel(f"events lost (of {tracked:,} tracked)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _p: f"{y:,.0f}"))
    ax.set_xlabel("fault")
    runs = int(x["runs"])
    fig.suptitle(
        f"Events lost under each fault: {runs} run{'s' if runs > 1 else ''} of {x['events']:,} track calls "
        f"per library (outage: {x['outage_s']:.0f} s, then {x['window_s']:.0f} s to deliver)",
        fontsize=11,
    )
    fig.legend(loc="outside lower center", ncols=2, frameon=False)
    style(ax)
    ax.grid(False, axis="x")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------------


def load_json(json_dir: Path, name: str) -> Doc:
    doc: Doc = orjson.loads((json_dir / f"{name}.json").read_bytes())
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="the benchmarks' short versions (~2 min)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where to write (default {RESULTS})")
    parser.add_argument("--json-dir", type=Path, default=None, help="keep the benchmarks' JSON files here")
    parser.add_argument("--no-run", action="store_true", help="use the JSON files already in --json-dir")
    parser.add_argument("--readme", action="store_true", help="also print the README.md block")
    args = parser.parse_args(argv)
    if args.no_run and args.json_dir is None:
        parser.error("--no-run needs --json-dir")
    json_dir = args.json_dir or Path(tempfile.mkdtemp(prefix="rudder-fast-report-"))
    json_dir.mkdir(parents=True, exist_ok=True)
    try:
        load_start = list(os.getloadavg())
        quick = args.quick
        if args.no_run:
            meta_path = json_dir / "machine.json"
            meta = orjson.loads(meta_path.read_bytes()) if meta_path.exists() else None
        else:
            failed = run_benchmarks(json_dir, quick)
            if failed:
                print(f"\nreport.py: {', '.join(failed)} failed: no report written", file=sys.stderr)
                return 1
            meta = machine(load_start, list(os.getloadavg()), quick)
            (json_dir / "machine.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        if meta is None:
            meta = machine(load_start, list(os.getloadavg()), quick)
        emit, send, faults = (load_json(json_dir, name) for name in BENCHES)
        figures = Figures(emit, send, faults, meta)
        args.out.mkdir(parents=True, exist_ok=True)
        chart_latency(figures.emit, args.out / "latency.png")
        chart_throughput(figures.send, args.out / "throughput.png")
        chart_faults(figures.faults, args.out / "faults.png")
        (args.out / "report.md").write_text(report_md(figures))
        print()
        for name in ("report.md", "latency.png", "throughput.png", "faults.png"):
            p = args.out / name
            print(f"wrote {p} ({p.stat().st_size / 1024:.0f} KiB)")
        if args.readme:
            print("\n" + readme_block(figures))
    finally:
        if args.json_dir is None:
            shutil.rmtree(json_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
