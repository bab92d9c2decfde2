"""Shared test fixtures: figures that tests report in the run's summary."""

from __future__ import annotations

import pytest

_CRASH_REPORT: list[str] = []


@pytest.fixture
def crash_report() -> list[str]:
    """Lines a crash test adds here are printed at the end of the run (figures, not logs)."""
    return _CRASH_REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _CRASH_REPORT:
        terminalreporter.section("crash simulator")
        for line in _CRASH_REPORT:
            terminalreporter.write_line(line)
