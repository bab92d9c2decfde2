"""P1 (durable commit latency) and P2 (concurrent commit throughput) from BENCHMARKS.md."""

from __future__ import annotations

import itertools
import os
import threading

import pytest

from bench import report
from bench.benchmark_protocol import Benchmark
from bench.peers import OpenPeer, Peer
from bench.report import QUICK
from fixtures.reference_data import step_output_bytes

#: Distinct step outputs cycled through, so compression never sees one repeated payload.
PAYLOADS = [step_output_bytes(w, s) for w in range(4) for s in range(16)]
assert len(set(PAYLOADS)) == 64

#: Commits made (timed, discarded) before measuring, in both modes: past SQLite's first WAL
#: autocheckpoint (1000 pages, ~1 page per commit here). Before it SQLite appends to a growing
#: WAL (~2x slower per commit on ext4); after it, it overwrites its WAL in place. Long-running
#: systems live in the second regime, so every system is measured in its steady state.
WARMUP_COMMITS = 1200

# Budgets (2-core VM, ext4, fdatasync ~0.2 ms): full run ~12 s, quick run ~5 s.
P1_ROUNDS = 300 if QUICK else 2000
P1_WARMUP = WARMUP_COMMITS

P2_THREADS = 8
#: Commits per thread per round; ``WFSTATE_BENCH_P2_COMMITS`` overrides. Quick mode keeps the
#: round shape and runs fewer rounds: shorter rounds inflate SQLite's share of busy-wait sleeps.
P2_COMMITS = int(os.environ.get("WFSTATE_BENCH_P2_COMMITS", "50"))
P2_ROUNDS = 5 if QUICK else 20
P2_WARMUP = -(-WARMUP_COMMITS // (P2_THREADS * P2_COMMITS))  # rounds, rounded up


@pytest.mark.benchmark(group="P1")
@pytest.mark.parametrize("system", ["floor", "sqlite_full", "wfstate"])
def test_p1_commit_latency(benchmark: Benchmark, open_peer: OpenPeer, system: str) -> None:
    """One durable commit of one step output, single writer; p50 is the number that counts."""
    peer = open_peer(system)
    payloads = itertools.cycle(PAYLOADS)

    def commit_one() -> None:
        peer.commit(next(payloads))

    benchmark.pedantic(commit_one, rounds=P1_ROUNDS, warmup_rounds=P1_WARMUP)
    if benchmark.stats is not None:
        median = benchmark.stats["median"]
        benchmark.extra_info["p50_us"] = round(median * 1e6, 1)
        report.RESULTS.p1_p50_s[system] = median


class _Workers:
    """``threads`` long-lived threads; each round every thread does ``commits`` commits.

    Threads (and so SQLite's per-thread connections) are made once, not per round; a round is
    released and collected with two barriers, so the timed part is only the commits.
    """

    def __init__(self, peer: Peer, threads: int, commits: int) -> None:
        self.peer = peer
        self.commits = commits
        self.start = threading.Barrier(threads + 1)
        self.done = threading.Barrier(threads + 1)
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._work, args=(i,), name=f"p2-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self.threads:
            t.start()

    def _work(self, index: int) -> None:
        payloads = itertools.islice(itertools.cycle(PAYLOADS), index * 8, None)
        while True:
            try:
                self.start.wait()
            except threading.BrokenBarrierError:
                return
            try:
                for _ in range(self.commits):
                    self.peer.commit(next(payloads))
            except BaseException as exc:
                self.errors.append(exc)
            try:
                self.done.wait()
            except threading.BrokenBarrierError:
                return

    def round(self) -> None:
        self.start.wait()
        self.done.wait()
        if self.errors:
            raise self.errors[0]

    def stop(self) -> None:
        self.start.abort()
        self.done.abort()
        for t in self.threads:
            t.join(timeout=60)


@pytest.mark.benchmark(group="P2")
@pytest.mark.parametrize("system", ["floor_locked", "group_floor", "sqlite_full", "wfstate"])
def test_p2_concurrent_throughput(benchmark: Benchmark, open_peer: OpenPeer, system: str) -> None:
    """8 threads each commit ``P2_COMMITS`` step outputs per round; reported as commits/s.

    pytest-benchmark's times are per round (8 x P2_COMMITS commits); commits/s is derived from
    the median round.
    """
    peer = open_peer(system)
    workers = _Workers(peer, P2_THREADS, P2_COMMITS)
    try:
        benchmark.pedantic(workers.round, rounds=P2_ROUNDS, warmup_rounds=P2_WARMUP)
    finally:
        workers.stop()
    if benchmark.stats is not None:
        commits = P2_THREADS * P2_COMMITS
        per_s = commits / benchmark.stats["median"]
        benchmark.extra_info["commits_per_round"] = commits
        benchmark.extra_info["commits_per_s"] = round(per_s, 1)
        report.RESULTS.p2_commits_per_s[system] = per_s
