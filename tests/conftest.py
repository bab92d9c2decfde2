"""Shared test set-up: the Hypothesis profile, and figures tests report in the summary."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# CI replays the same examples every run (a red CI must mean a real regression); a developer's
# run draws new ones, which is how Hypothesis finds the next bug.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

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
