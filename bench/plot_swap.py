#!/usr/bin/env python3
"""Plots the hot swap scenario of `make bench`: the latency of every new
connection over time, the p99 per 100 ms, and the swap windows, so a glance
shows whether a swap drops clients or stalls them.

usage: plot_swap.py OUT_DIR    reads OUT_DIR/swap.csv and OUT_DIR/bench.json,
                               writes OUT_DIR/swap-latency.png
"""

import csv
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a file, no display: runs headless, in CI too
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

BUCKET_S = 0.1  # the p99 line: one point per 100 ms of connections


def p99(values):
    """Nearest-rank 99th percentile, as hotsock-bench computes it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(0.99 * len(ordered)), 1) - 1]


def load(out):
    try:
        with open(out / "swap.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        with open(out / "bench.json") as f:
            bench = json.load(f)
    except FileNotFoundError as e:
        sys.exit(f"{e.filename} is missing: run `make bench` (or `hotsock-bench --out {out}`) first")
    samples = [(float(r["t_seconds"]), float(r["latency_us"]) / 1000, r["ok"] == "1") for r in rows]
    return samples, bench


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    samples, bench = load(out)
    swap = bench["swap"]
    ok = [(t, ms) for t, ms, good in samples if good]
    failed = [(t, ms) for t, ms, good in samples if not good]

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=120)
    for i, window in enumerate(swap["windows"]):
        ax.axvspan(window["from_s"], window["to_s"], color="tab:orange", alpha=0.12, lw=0,
                   label="swap window (left out of the steady state)" if i == 0 else None)
    for i, event in enumerate(swap["swaps"]):
        ax.axvspan(event["start_s"], event["end_s"], color="tab:red", alpha=0.22, lw=0,
                   label="swap: POST /handler until its answer" if i == 0 else None)
        ax.annotate(f"→ {Path(event['handler']).name}", (event["start_s"], 1.0),
                    xycoords=("data", "axes fraction"), xytext=(2, -12),
                    textcoords="offset points", fontsize=8, color="tab:red")

    ax.scatter([t for t, _ in ok], [ms for _, ms in ok], s=2, alpha=0.2, color="tab:blue",
               lw=0, rasterized=True, label=f"a connection: connect → reply ({len(ok):,})")
    if failed:
        ax.scatter([t for t, _ in failed], [ms for _, ms in failed], s=25, marker="x",
                   color="black", label=f"failed connection ({len(failed):,})")

    buckets = {}
    for t, ms in ok:
        buckets.setdefault(int(t // BUCKET_S), []).append(ms)
    keys = sorted(buckets)
    ax.plot([(k + 0.5) * BUCKET_S for k in keys], [p99(buckets[k]) for k in keys],
            color="tab:purple", lw=1.5, label=f"p99 per {BUCKET_S * 1000:.0f} ms")
    steady = swap["steady"]["p99_us"] / 1000
    ax.axhline(steady, color="tab:green", ls="--", lw=1,
               label=f"steady-state p99 ({steady:.2f} ms)")

    ax.set_yscale("log")
    ax.set_xlim(0, swap["duration_s"])
    ax.set_xlabel("time since the start of the run (s)")
    ax.set_ylabel("new connection latency, connect → reply (ms, log scale)")
    machine = bench["machine"]
    ax.set_title(
        f"hotsock hot swap under load: {swap['clients']} clients opening new connections, "
        f"{swap['connections']:,} connections, {swap['failed']} failed\n"
        f"p99 steady {steady:.2f} ms, during swaps {swap['in_windows']['p99_us'] / 1000:.2f} ms "
        f"({swap['p99_ratio']:.2f}×)  —  {machine['nproc']} cores, {machine['date']}, "
        f"git {machine.get('git') or 'unknown'}",
        fontsize=10,
    )
    ax.grid(True, which="major", alpha=0.3)
    # Below the axes: inside, it would hide points or the swap labels.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=3, fontsize=8,
              frameon=False, markerscale=3)
    path = out / "swap-latency.png"
    fig.savefig(path, bbox_inches="tight")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
