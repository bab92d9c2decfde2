"""The CI gate on BENCHMARKS.md's seed targets: ``python -m bench.gate RESULTS.json``.

Reads the results a run of ``bench/`` saved in its ``--benchmark-json`` file, prints the ratio
tables, and exits 1 when wfstate missed a seed target (P3 save < 500 ms, P4 load < 200 ms, P5
reopen + load all < 1000 ms, P6 full checkpoint < 100 ms, P7 RSS growth < 50 MB, P8 space saved
> 60 %) or when a seeded workload has no number (not run, or its test failed): a gate must not
pass on what it did not see. 0 otherwise. wfstate's own targets are printed, never gated.

P3, P4 and P6 are measured on the big state in quick mode as in full; P5, P7 and P8 on the
full-size big store in both modes (``bench/big_store.py``), so that the gate judges the sizes
the seed targets are set for: P5 and P7 on the store built with the default checkpoint policy,
P8 on the log holding every batch (the log-only rows are reported, not gated:
``bench/report.py``). Timings come from a shared machine: the seed targets are absolute
bounds, generous enough for the noise of one quick run.

This is the gate CI runs, strict: ``make bench-ci`` (the last step of ``make test``) runs the
suite in quick mode and then this, and every seed target missed or not measured fails it; no
miss is allowed.
"""

from __future__ import annotations

import sys

from bench import report


def gate_failures(results: report.Results) -> list[str]:
    """Why the gate fails on ``results`` (empty: it passes): every seed target missed and
    every seed target not measured."""
    failures = [
        f"seed target missed: {miss}" for miss in report.missed_seed_targets(results).values()
    ]
    failures += [f"seed target not measured: {key}" for key in report.seed_target_gaps(results)]
    return failures


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m bench.gate RESULTS.json", file=sys.stderr)
        return 2
    results = report.load_results(argv[0])
    for line in report.render(results, quick=results.quick):
        print(line)
    failures = gate_failures(results)
    print()
    if failures:
        for failure in failures:
            print(f"GATE FAILED: {failure}")
        return 1
    print("gate passed: every seed target of BENCHMARKS.md met")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
