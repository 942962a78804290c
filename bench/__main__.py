"""`python -m bench [--quick] [--peers direct,parley] [--no-variants] [--out DIR] [--no-docs]`

The full run (17-28 minutes) writes bench/results/full-<time>/ and copies its table, raw JSON and plots to
docs/benchmarks/; the quick run (3-4 minutes: direct and Parley only, with Parley's variants, small scenarios)
writes only bench/results/quick-<time>/, for before/after checks while working on the hot path.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import procs, report
from bench.plan import FULL, PEERS, QUICK
from bench.run import REPO, Harness, copy_outputs, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="the 3-4-minute run (direct and Parley)")
    parser.add_argument("--peers", help=f"comma-separated subset of {','.join(PEERS)} (direct is always run first)")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results/<mode>-<time>)")
    parser.add_argument("--no-docs", action="store_true", help="do not copy a full run's results to docs/benchmarks")
    profiling = parser.add_mutually_exclusive_group()
    profiling.add_argument("--profile", action="store_true", help="profile Parley with py-spy (default: full run only)")
    profiling.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="nice increment for every process of the run, e.g. -5 on a machine shared with other work (root)",
    )
    parser.add_argument(
        "--no-variants",
        action="store_true",
        help="skip Parley's variants (its event log on Redis, two replicas, background responses off)",
    )
    parser.add_argument("--report-only", type=Path, help="rebuild results.md and plots from a results.json")
    args = parser.parse_args(argv)

    if args.report_only:
        results = json.loads(args.report_only.read_text())
        write_report(results, args.report_only.parent)
        return 0

    plan = QUICK if args.quick else FULL
    if args.peers:
        chosen = [p.strip() for p in args.peers.split(",") if p.strip()]
        unknown = set(chosen) - set(PEERS)
        if unknown:
            parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
        plan = replace(plan, peers=tuple(p for p in PEERS if p in chosen or p == "direct"))
    if args.no_variants:
        plan = replace(plan, variants=False)
    if args.no_profile or args.profile:
        plan = replace(plan, profile=args.profile)
    out = args.out or REPO / "bench" / "results" / f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    if len(os.sched_getaffinity(0)) < 2:
        log("warning: fewer than 2 cores; the server under test shares a core with the load generator")
    # SIGINT may come in ignored (a background job of a script) and SIGTERM would skip the `finally` that stops
    # the servers: both end the run the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    procs.PRIORITY["nice"] = args.nice
    procs.raise_priority()
    harness = Harness(plan, out)  # reads the usable cores, then pins this process to the driver core
    started = time.monotonic()
    interrupted = False
    try:
        results = harness.run()
    except KeyboardInterrupt:
        log("interrupted; writing what there is")
        results = harness.results
        interrupted = True
    finally:
        harness.close()
    results["wall_s"] = time.monotonic() - started
    write_report(results, out)
    if plan.name == "full" and not args.no_docs and not interrupted:
        copy_outputs(out, REPO / "docs" / "benchmarks")
        log("copied results.md, results.json and plots to docs/benchmarks/")
    log(f"done in {results['wall_s']:.0f} s: {out / 'results.md'}")
    for row in results.get("summary", {}).get("targets", []):
        met = {True: "met", False: "MISSED", None: "n/a"}[row["met"]]
        measured = report._fmt(row["measured"], 2)
        log(f"  {row['target']}: {measured} {row['unit']} (goal {row['goal']}) {met}")
    return 0


def write_report(results: dict[str, Any], out: Path) -> None:
    summary = report.summarize(results)
    results["summary"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "results.md").write_text(report.markdown(results, summary))
    try:
        report.plots(results, out)
    except Exception as error:  # a plot must not lose the numbers
        print(f"plots failed: {error}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
