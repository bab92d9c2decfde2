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

``--allow-known-misses`` (what CI passes: ``make test``) does not fail on the seed targets
listed in :data:`KNOWN_MISSES`, each with why it is missed and where that is tracked; their
misses are still printed on every run, as ``KNOWN MISS``, and a known miss that is met is
printed as such so the entry gets removed. Every other seed target fails the run as above.
Without the flag (``make bench-gate``) nothing is allowed.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Final

from bench import report

KNOWN_MISSES: Final[Mapping[str, str]] = {
    "P5+ck": (
        "issue 8, open: 1.35 s in a quick run of this machine, about the JSON peer's time "
        "(1.29 s); where it goes: docs/profiling.md"
    ),
}
"""Seed-target rows whose miss ``--allow-known-misses`` reports without failing."""


def gate_failures(results: report.Results, allowed: Mapping[str, str] | None = None) -> list[str]:
    """Why the gate fails on ``results`` (empty: it passes); a miss of a row in ``allowed``
    does not count (it is in :func:`allowed_misses`), a row not measured always does."""
    allowed = allowed or {}
    failures = [
        f"seed target missed: {miss}"
        for key, miss in report.missed_seed_targets(results).items()
        if key not in allowed
    ]
    failures += [f"seed target not measured: {key}" for key in report.seed_target_gaps(results)]
    return failures


def allowed_misses(results: report.Results, allowed: Mapping[str, str]) -> list[str]:
    """The lines printed for the rows of ``allowed``: each miss with its reason, or that the
    row now meets its seed target."""
    missed = report.missed_seed_targets(results)
    lines = []
    for key, why in allowed.items():
        if key in missed:
            lines.append(f"KNOWN MISS (not failing this run): {missed[key]}: {why}")
        elif key in results.store and "wfstate" in results.store[key]:
            lines.append(
                f"KNOWN MISS NOW MET: {key} meets its seed target; drop it from KNOWN_MISSES"
            )
    return lines


def main(argv: list[str]) -> int:
    allow = "--allow-known-misses" in argv
    paths = [a for a in argv if a != "--allow-known-misses"]
    if len(paths) != 1 or paths[0].startswith("-"):
        print("usage: python -m bench.gate [--allow-known-misses] RESULTS.json", file=sys.stderr)
        return 2
    results = report.load_results(paths[0])
    for line in report.render(results, quick=results.quick):
        print(line)
    allowed = KNOWN_MISSES if allow else {}
    failures = gate_failures(results, allowed)
    print()
    known = allowed_misses(results, allowed)
    for line in known:
        print(line)
    if failures:
        for failure in failures:
            print(f"GATE FAILED: {failure}")
        return 1
    if any(line.startswith("KNOWN MISS (") for line in known):
        print("gate passed: every seed target of BENCHMARKS.md met but the known misses above")
    else:
        print("gate passed: every seed target of BENCHMARKS.md met")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
