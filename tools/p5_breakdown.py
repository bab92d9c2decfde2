"""Where BENCHMARKS.md P5's time goes on a store: open, checkpoint reads, log replay, collector.

P5 opens a fresh handle on the big store and loads every workflow. This runs that ``--rounds``
times on ``STORE`` (a wfstate store directory, e.g. the default-policy big store that
``python -m tools.profile_paths p5-ck --full`` builds under ``--workdir``, at
``big-store-100x1000/with_checkpoints/wfstate``) and prints, per round: the open; the loads;
inside the loads, the time in checkpoint reads (``CheckpointFiles.read_state``) and in replaying
the log's batches after them (``LocalStore._replay``); and the cyclic collector's passes of the
whole round by generation (``gc.callbacks``), with how many objects it tracks once every state
is loaded. Each round drops what the previous one loaded and closes its handle, with no
collection forced in between: as in the bench's P5 rounds, whatever a closed handle still holds
is freed by a collection inside the next round, which pays for it.

``--no-collector`` runs the rounds with automatic collection off, for the CPU the rest takes.

Run from the repository root::

    .venv/bin/python -m tools.p5_breakdown STORE [--rounds N] [--no-collector]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.checkpoints import CheckpointFiles


class _Clock:
    """Seconds spent inside wrapped functions, by name, and the collector's passes."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.passes: dict[int, list[float]] = {}
        self._start = 0.0

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - started

        return timed

    def collector(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        entry = self.passes.setdefault(info["generation"], [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - self._start


def _round(store_dir: str, clock: _Clock) -> str:
    started = time.perf_counter()
    store = LocalStore.open(store_dir, durability="always", checkpoints=MANUAL_ONLY)
    opened = time.perf_counter()
    try:
        states = [store.load(w) for w in store.list_workflows()]
        loaded = time.perf_counter()
        tracked = len(gc.get_objects())
    finally:
        store.close()
    del states
    ms = {name: f"{1000 * s:.0f}" for name, s in clock.spent.items()}
    passes = ", ".join(
        f"gen{g} {n:.0f}x {1000 * s:.0f} ms" for g, (n, s) in sorted(clock.passes.items())
    )
    return (
        f"open {1000 * (opened - started):.0f} ms, loads {1000 * (loaded - opened):.0f} ms "
        f"(checkpoint reads {ms.get('checkpoints', '0')} ms, log replay "
        f"{ms.get('replay', '0')} ms), total {1000 * (loaded - started):.0f} ms; collector: "
        f"{passes or 'no pass'}; {tracked:,} objects tracked with every state loaded"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="a wfstate store directory")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-collector", action="store_true")
    args = parser.parse_args(argv)
    clock = _Clock()
    gc.callbacks.append(clock.collector)
    if args.no_collector:
        gc.disable()
    read_state = clock.wrap("checkpoints", CheckpointFiles.read_state)
    replay = clock.wrap("replay", LocalStore._replay)
    with (
        mock.patch.object(CheckpointFiles, "read_state", read_state),
        mock.patch.object(LocalStore, "_replay", replay),
    ):
        for n in range(args.rounds):
            clock.spent.clear()
            clock.passes.clear()
            print(f"round {n}: {_round(args.store, clock)}", flush=True)


if __name__ == "__main__":
    main()
