"""Shared benchmark fixtures: open/close a system by name, the big store, the ratio tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest

from bench import report
from bench.big_store import BigStore, build_big_store
from bench.peers import STATE_SYSTEMS, SYSTEMS, OpenPeer, OpenStatePeer, Peer, StatePeer

_System = TypeVar("_System", Peer, StatePeer)


def _opener(
    systems: Mapping[str, Callable[[], _System]], tmp_path: Path
) -> Iterator[Callable[[str], _System]]:
    """Open a fresh instance of a named system in its own directory; close all at teardown.

    All systems of a run write under pytest's base temp dir, so on one file system (choose it
    with ``--basetemp``).
    """
    opened: list[_System] = []

    def _open(system: str) -> _System:
        peer = systems[system]()
        peer.open(str(tmp_path / system))
        opened.append(peer)
        report.RESULTS.data_dir = str(tmp_path)
        return peer

    yield _open
    for peer in reversed(opened):
        peer.close()


@pytest.fixture
def open_peer(tmp_path: Path) -> Iterator[OpenPeer]:
    """``open_peer(system)`` opens a fresh log-shaped peer (P1, P2)."""
    yield from _opener(SYSTEMS, tmp_path)


@pytest.fixture
def open_state_peer(tmp_path: Path) -> Iterator[OpenStatePeer]:
    """``open_state_peer(system)``: the same for the state systems (P3-P5b)."""
    yield from _opener(STATE_SYSTEMS, tmp_path)


@pytest.fixture(scope="session")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> BigStore:
    """The big store of every system, built once per run (``bench/big_store.py``).

    Every test that uses it only reads it. Full size takes ~70 s to build (twice: log only, and
    with the default checkpoint policy) on the 2-core VM.
    """
    root = tmp_path_factory.mktemp("big_store")
    big = build_big_store(str(root))
    report.RESULTS.big_store_label = big.label()
    report.RESULTS.big_store_shape = (big.workflows, big.per_workflow)
    report.RESULTS.data_dir = str(root)
    return big


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if report.RESULTS.empty():
        return
    terminalreporter.write_sep("-", "wfstate vs peers (ratios measured side by side in this run)")
    for line in report.render(report.RESULTS, quick=report.QUICK):
        terminalreporter.write_line(line)


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list[object], output_json: dict[str, object]
) -> None:
    """Keep this run's :class:`report.Results` in the ``--benchmark-json`` file, under
    :data:`report.JSON_KEY`: ``python -m bench.gate`` and ``python -m bench.docs`` read it."""
    report.RESULTS.machine = report.machine_label(report.RESULTS.data_dir)
    output_json[report.JSON_KEY] = msgspec.to_builtins(report.RESULTS)
