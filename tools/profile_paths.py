"""Profile the commit and load paths of BENCHMARKS.md (issue 8): P1, P3, P4, P5, P5b, P6.

Each path is set up untimed, then run ``--rounds`` times twice: once bare, timed with
``perf_counter`` (the numbers to compare; cProfile's own overhead inflates Python-heavy code
several times), once under cProfile (where the time goes). For the paths that sync, the bare
rounds are also run on a file system whose ``fsync``/``fdatasync``/directory fsync return at
once, so the time the syncs take and the CPU the rest takes are reported apart.

Run from the repository root::

    .venv/bin/python -m tools.profile_paths                  # every path, quick big store
    .venv/bin/python -m tools.profile_paths p1-log p1-store  # some paths
    .venv/bin/python -m tools.profile_paths p5 --full        # BENCHMARKS.md's 100 x 1,000 store
    .venv/bin/python -m tools.profile_paths p4 --dump /tmp/p4.prof   # keep the raw profile

The big store comes from ``bench.big_store.build_big_store`` (built once under ``--workdir``
and reused by later runs: delete the directory to rebuild). ``py-spy record -o out.svg --
.venv/bin/python -m tools.profile_paths p5 --no-profile`` samples a path with py-spy instead
(py-spy is not a project dependency; ``pip install py-spy`` into the venv).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import itertools
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple
from unittest import mock

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec

from bench.big_store import CHECKPOINTED, BigStore, build_big_store
from fixtures.reference_data import step_id, step_output, step_output_bytes, workflow_id
from fixtures.reference_states import big_store_batches, big_workflow_state
from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.fs import OS_FS, FileSystem, OsFileSystem
from wfstate.model import WorkflowState
from wfstate.mutations import Mutation, PutStepOutput
from wfstate.wal import Log

QUICK_SHAPE = (100, 100)
FULL_SHAPE = (100, 1000)
SYNC_FUNCTIONS = ("fsync", "fdatasync")


class Rounds(NamedTuple):
    """What a path's setup returns."""

    round: Callable[[], object]  # the operation measured, run many times
    teardown: Callable[[], None]  # run once after the last round
    before_each: Callable[[], None] = lambda: None  # untimed, unprofiled, before every round


Setup = Callable[["FileSystem", str], Rounds]
"""A path's setup: ``(file system, scratch directory inside --workdir)`` → its rounds."""


class NoSyncFileSystem(OsFileSystem):
    """The real file system with every sync a no-op: what the CPU alone costs. Never for data
    anyone keeps (nothing written through it is durable)."""

    def fsync(self, fd: int) -> None:
        return

    def fdatasync(self, fd: int) -> None:
        return

    def fsync_dir(self, path: str) -> None:
        return


NO_SYNC_FS = NoSyncFileSystem()


@dataclass
class Path:
    """One profiled path: ``setup(fs, workdir)`` returns ``(round, teardown)``."""

    name: str
    what: str
    setup: Setup
    syncs: bool
    rounds: int


# -- P1: one durable commit of one step output ------------------------------------------------

_PAYLOADS = [step_output_bytes(w, s) for w in range(4) for s in range(16)]
_P1_WARMUP = 1200  # as bench/test_commit.py


def _p1_log(fs: FileSystem, workdir: str) -> Rounds:
    log = Log.open(os.path.join(workdir, "p1-log"), durability="always", fs=fs)
    payloads = itertools.cycle(_PAYLOADS)
    for _ in range(_P1_WARMUP):
        log.append(next(payloads))
    return Rounds(lambda: log.append(next(payloads)), log.close)


def _p1_batches(steps: int) -> Iterator[list[Mutation]]:
    """One-``PutStepOutput`` batches on workflow 0's steps, cycling the 64 P1 outputs (built
    once, so that the rounds time the commit, not the fixture's text generator)."""
    outputs = [step_output(w, s) for w in range(4) for s in range(16)]
    for n in itertools.count():
        yield [
            PutStepOutput(
                workflow_id=workflow_id(0), step_id=step_id(n % steps), data=outputs[n % 64], at=0.0
            )
        ]


def _p1_store(fs: FileSystem, workdir: str) -> Rounds:
    store = LocalStore.open(
        os.path.join(workdir, "p1-store"), durability="always", checkpoints=MANUAL_ONLY, fs=fs
    )
    store.commit(next(big_store_batches(1, 100)))
    batches = _p1_batches(100)
    for _ in range(_P1_WARMUP):
        store.commit(next(batches))
    return Rounds(lambda: store.commit(next(batches)), store.close)


# -- P3, P4: the big state ------------------------------------------------------------------


def _p3(fs: FileSystem, workdir: str) -> Rounds:
    state = big_workflow_state()
    store = LocalStore.open(os.path.join(workdir, "p3"), durability="always", fs=fs)
    for _ in range(3):
        store.save(state)
    return Rounds(lambda: store.save(state), store.close)


def _p4(fs: FileSystem, workdir: str) -> Rounds:
    directory = os.path.join(workdir, "p4")
    state = big_workflow_state()
    with LocalStore.open(directory, durability="always", fs=fs) as store:
        store.save(state)
    return _fresh_handles(directory, fs, lambda s: [s.load(state.workflow.id)])


def _fresh_handles(
    directory: str, fs: FileSystem, read: Callable[[LocalStore], list[WorkflowState]]
) -> Rounds:
    """A round opens a fresh handle on ``directory`` and ``read``s through it; what it read
    and its handle are dropped, untimed, before the next round and after the last (as
    bench/test_store_workloads.py's per-round teardown), so no round pays for the objects of
    the rounds before it (the collector's passes grow with the live heap)."""
    opened: list[LocalStore] = []
    kept: list[object] = []

    def round_() -> object:
        store = LocalStore.open(directory, durability="always", checkpoints=MANUAL_ONLY, fs=fs)
        opened.append(store)
        states = read(store)
        kept.append(states)
        return len(states)

    def teardown() -> None:
        kept.clear()
        for store in opened:
            store.close()
        opened.clear()

    return Rounds(round_, teardown, before_each=teardown)


# -- P5, P5b: the big store -----------------------------------------------------------------


def _big_store(workdir: str, full: bool) -> BigStore:
    workflows, per_workflow = FULL_SHAPE if full else QUICK_SHAPE
    root = os.path.join(workdir, f"big-store-{workflows}x{per_workflow}")
    big = BigStore(root=root, workflows=workflows, per_workflow=per_workflow)
    done = os.path.join(root, "BUILT")
    if not os.path.exists(done):
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        print(f"building the big store ({big.label()}) under {root} ...", flush=True)
        build_big_store(root, workflows, per_workflow)
        with open(done, "w") as f:
            f.write("built\n")
    return big


def _all(store: LocalStore) -> list[WorkflowState]:
    return [store.load(w) for w in store.list_workflows()]


def _all_unpaused(store: LocalStore) -> list[WorkflowState]:
    """:func:`_all` with ``wfstate.collectorpause`` taken out of the load path (the
    before/after of docs/profiling.md's collector figures)."""
    with mock.patch("wfstate.backends.local.collector_paused", contextlib.nullcontext):
        return _all(store)


def _big_store_path(
    system: str, read: Callable[[LocalStore], list[WorkflowState]], full: bool
) -> Setup:
    def setup(fs: FileSystem, scratch: str) -> Rounds:
        # ``scratch`` is a fresh directory inside ``--workdir``, where the big store is kept
        big = _big_store(os.path.dirname(scratch), full)
        return _fresh_handles(big.directory(system), fs, read)

    return setup


# -- P6: checkpoints of the big state ---------------------------------------------------------


def _p6(incremental: bool) -> Setup:
    """As bench/test_checkpoints.py: before each round, untimed, a batch changing 10 steps
    (every ``max_chain`` rounds the big state saved back first, and a full checkpoint taken,
    so the state stays near the big state and every incremental round has a parent)."""

    def setup(fs: FileSystem, scratch: str) -> Rounds:
        state = big_workflow_state()
        policy = msgspec.structs.replace(MANUAL_ONLY, incremental=incremental)
        store = LocalStore.open(scratch, durability="always", checkpoints=policy, fs=fs)
        wid = state.workflow.id
        store.save(state)
        store.checkpoint(wid)
        step_ids = [s.id for s in state.workflow.steps]
        outputs = [step_output(1, i) for i in range(len(step_ids))]
        rounds = itertools.count()

        def change() -> None:
            n = next(rounds)
            if n % MANUAL_ONLY.max_chain == MANUAL_ONLY.max_chain - 1:
                store.save(state)
                store.checkpoint(wid)
            picked = [(n * 10 + k) % len(step_ids) for k in range(10)]
            store.commit(
                [
                    PutStepOutput(workflow_id=wid, step_id=step_ids[i], data=outputs[i], at=0.0)
                    for i in picked
                ]
            )

        return Rounds(lambda: store.checkpoint(wid), store.close, change)

    return setup


# -- the runner -------------------------------------------------------------------------------


def paths(full: bool) -> dict[str, Path]:
    return {
        p.name: p
        for p in [
            Path("p1-log", "P1: Log.append of one ~1 KB step output, durability always",
                 _p1_log, syncs=True, rounds=2000),
            Path("p1-store", "P1: LocalStore.commit of one PutStepOutput, durability always",
                 _p1_store, syncs=True, rounds=2000),
            Path("p3", "P3: LocalStore.save of the big state (1,000 steps) into a store holding it",
                 _p3, syncs=True, rounds=20),
            Path("p4", "P4: fresh LocalStore handle on a store holding the big state, load it",
                 _p4, syncs=True, rounds=30),
            Path("p5", "P5: fresh handle on the log-only big store, load every workflow",
                 _big_store_path("wfstate", _all, full), syncs=False, rounds=3),
            Path("p5-ck", "P5: the same on the big store built with the default checkpoint policy",
                 _big_store_path(CHECKPOINTED, _all, full), syncs=False, rounds=3),
            Path("p5-ck-unpaused", "P5: the same, the collector not paused while loads decode",
                 _big_store_path(CHECKPOINTED, _all_unpaused, full), syncs=False, rounds=3),
            Path("p5b", "P5b: fresh handle on the log-only big store, load the first workflow",
                 _big_store_path("wfstate", lambda s: [s.load(workflow_id(0))], full),
                 syncs=False, rounds=5),
            Path("p6-full", "P6: full checkpoint of the big state after 10 changed steps",
                 _p6(False), syncs=True, rounds=40),
            Path("p6-incr", "P6: incremental checkpoint of the big state after 10 changed steps",
                 _p6(True), syncs=True, rounds=40),
        ]
    }  # fmt: skip


def _run(
    path: Path, fs: FileSystem, workdir: str, rounds: int, profile: cProfile.Profile | None
) -> list[float]:
    """Seconds of each round, in a fresh scratch directory inside ``workdir``."""
    directory = tempfile.mkdtemp(prefix=path.name + "-", dir=workdir)
    run = path.setup(fs, directory)
    times: list[float] = []
    try:
        for _ in range(rounds):
            run.before_each()
            if profile is not None:
                profile.enable()
            start = time.perf_counter()
            run.round()
            elapsed = time.perf_counter() - start
            if profile is not None:
                profile.disable()
            times.append(elapsed)
    finally:
        run.teardown()
        shutil.rmtree(directory, ignore_errors=True)
    return times


def _ms(seconds: list[float]) -> str:
    return f"median {statistics.median(seconds) * 1e3:.3f} ms (min {min(seconds) * 1e3:.3f})"


def _sync_share(stats: pstats.Stats) -> tuple[float, float]:
    """(seconds inside fsync/fdatasync, total seconds) of a profile."""
    table = stats.stats  # type: ignore[attr-defined]
    synced = sum(
        row[2]
        for (_file, _line, func), row in table.items()
        if func.strip("<>").split()[-1] in {f"posix.{name}" for name in SYNC_FUNCTIONS}
    )
    return synced, stats.total_tt  # type: ignore[attr-defined]


def profile_path(path: Path, args: argparse.Namespace) -> None:
    rounds = args.rounds or path.rounds
    print(f"\n=== {path.name}: {path.what} ({rounds} rounds) ===", flush=True)
    bare = _run(path, OS_FS, args.workdir, rounds, None)
    print(f"wall, real syncs:       {_ms(bare)}")
    if path.syncs:
        cpu = _run(path, NO_SYNC_FS, args.workdir, rounds, None)
        share = 1 - statistics.median(cpu) / statistics.median(bare)
        print(f"wall, syncs as no-ops:  {_ms(cpu)}  -> syncs ~{share:.0%} of the round")
    if args.no_profile:
        return
    profile = cProfile.Profile()
    _run(path, OS_FS, args.workdir, rounds, profile)
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    synced, total = _sync_share(stats)
    print(f"profiled: {total:.3f} s in all, fsync+fdatasync {synced:.3f} s ({synced / total:.0%})")
    if args.dump:
        stats.dump_stats(args.dump if len(args.paths) == 1 else f"{args.dump}.{path.name}")
    stats.strip_dirs()
    for key in ("cumulative", "tottime"):
        stats.sort_stats(key).print_stats(args.top)
    print(out.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("paths", nargs="*", help="paths to profile (default: all)")
    parser.add_argument("--full", action="store_true", help="BENCHMARKS.md's 100 x 1,000 store")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per path (default: own)")
    parser.add_argument("--top", type=int, default=25, help="rows of each profile table")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "wfstate-prof"))
    parser.add_argument("--no-profile", action="store_true", help="timings only (for py-spy)")
    parser.add_argument("--dump", help="write the raw cProfile stats here")
    args = parser.parse_args(argv)
    table = paths(args.full)
    unknown = [p for p in args.paths if p not in table]
    if unknown:
        parser.error(f"unknown paths {unknown}; known: {', '.join(table)}")
    os.makedirs(args.workdir, exist_ok=True)
    print(f"machine: {os.uname().sysname} {os.uname().release}, {os.cpu_count()} cpus, "
          f"Python {sys.version.split()[0]}, workdir {args.workdir}")  # fmt: skip
    for name in args.paths or list(table):
        profile_path(table[name], args)


if __name__ == "__main__":
    main()
