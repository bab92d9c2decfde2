"""Shared benchmark fixtures: open/close a system by name, and print the ratio table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import report
from bench.peers import SYSTEMS, OpenPeer, Peer


@pytest.fixture
def open_peer(tmp_path: Path) -> Iterator[OpenPeer]:
    """``open_peer(system)`` opens a fresh instance in its own directory under ``tmp_path``.

    All systems of a run write under pytest's base temp dir, so on one file system (choose it
    with ``--basetemp``). Everything opened is closed at teardown.
    """
    opened: list[Peer] = []

    def _open(system: str) -> Peer:
        peer = SYSTEMS[system]()
        peer.open(str(tmp_path / system))
        opened.append(peer)
        report.RESULTS.data_dir = str(tmp_path)
        return peer

    yield _open
    for peer in reversed(opened):
        peer.close()


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if report.RESULTS.empty():
        return
    terminalreporter.write_sep("-", "wfstate vs peers (ratios measured side by side in this run)")
    for line in report.render(report.RESULTS, quick=report.QUICK):
        terminalreporter.write_line(line)
