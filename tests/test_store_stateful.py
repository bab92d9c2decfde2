"""The whole store under a Hypothesis state machine with faults, crashes and reopens
(DESIGN.md §10 tier 3): the machine and what it checks are in ``tests/storemachine.py``."""

from __future__ import annotations

import pytest

from tests.storemachine import FIGURE_ORDER, broken_disk_is_caught, run_machine

MUST_HAPPEN = (
    "operations acknowledged",
    "operations failed (nothing happened)",
    "operations in flight when the store stopped",
    "injected failures hit",
    "stores poisoned",
    "crashes recovered",
    "reopens",
    "in-flight operations found applied after recovery",
    "in-flight operations found absent after recovery",
    "checkpoints verified after recovery",
    "incremental checkpoints taken",
    "segments rotated",
)
"""Figures a run must show above zero, or it did not exercise what it claims to."""


def _check_run(max_examples: int, steps: int, crash_report: list[str]) -> None:
    counts = run_machine(max_examples, steps)
    missing = [name for name in MUST_HAPPEN if not counts[name]]
    assert not missing, f"the run never got to: {missing}"
    crash_report.append(
        f"store state machine ({max_examples} examples x {steps} steps): "
        + ", ".join(f"{counts[name]} {name}" for name in FIGURE_ORDER)
    )


def test_the_store_reads_as_the_model_through_faults_crashes_and_reopens(
    crash_report: list[str],
) -> None:
    _check_run(100, 50, crash_report)


@pytest.mark.slow
def test_the_store_reads_as_the_model_through_faults_crashes_and_reopens_long(
    crash_report: list[str],
) -> None:
    _check_run(2000, 80, crash_report)


def test_the_machine_fails_on_a_disk_that_drops_fdatasync() -> None:
    """Acknowledged batches that were never synced must be missed in some crash state."""
    found = broken_disk_is_caught()
    assert found.startswith("crash at op "), found
