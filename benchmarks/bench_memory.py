"""Is every role's resident memory flat? Reads the ``memory.csv`` that launch.py writes.

launch.py samples the RSS of each role every 5 s into ``{run.log_dir}/memory.csv``. This
prints, per role, the RSS one minute in (after start-up allocations), the largest RSS seen
after that, the last sample, the growth (largest / one-minute value - 1), and the trend
(mean of the last minute / mean of the second minute - 1, which a transient peak during a
training step does not move); with ``--check`` it exits 1 when any role's growth is above
``--max-growth`` (10%).

    make run ARGS="run.total_updates=100000" & sleep 600; kill %1   # a 10-minute run
    python benchmarks/bench_memory.py runs/synthetic_grpo/memory.csv --check
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", help="memory.csv of a run")
    p.add_argument("--after-s", type=float, default=60.0, help="baseline time (s)")
    p.add_argument("--max-growth", type=float, default=0.10, help="allowed growth")
    p.add_argument("--check", action="store_true", help="exit 1 when a role grew too much")
    args = p.parse_args()
    samples: dict = defaultdict(list)
    with open(args.csv) as f:
        for row in csv.DictReader(f):
            samples[row["role"]].append((float(row["time_s"]), float(row["rss_mb"])))
    print(f"| role | RSS at {args.after_s:.0f} s (MB) | max after (MB) | last (MB) | "
          f"span (s) | growth | trend |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for role, rows in sorted(samples.items()):
        after = [rss for t, rss in rows if t >= args.after_s]
        if not after:
            continue
        base = after[0]
        growth = max(after) / base - 1
        worst = max(worst, growth)
        end = rows[-1][0]
        second = [rss for t, rss in rows if args.after_s <= t < args.after_s + 60]
        last = [rss for t, rss in rows if t >= end - 60]
        trend = (sum(last) / len(last)) / (sum(second) / len(second)) - 1
        print(f"| {role} | {base:.1f} | {max(after):.1f} | {after[-1]:.1f} | "
              f"{end:.0f} | {growth:+.1%} | {trend:+.1%} |")
    if args.check and worst > args.max_growth:
        print(f"FAIL: a role grew by {worst:.1%} > {args.max_growth:.0%}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
