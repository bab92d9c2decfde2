"""The CI gate on the seed targets (``bench/gate.py``) and the results it reads.

Fed synthetic results (no benchmark runs here): the gate passes when every seed target of
BENCHMARKS.md is met, fails on each one missed, on the limit itself (the seed targets are
strict), and on a seeded workload with no number.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from bench import gate, report

#: wfstate numbers that meet every seed target, by row, in the row's unit.
PASSING = {
    "P3": 20.0,
    "P4": 15.0,
    "P5+ck": 400.0,
    "P6": 7.0,
    "P7+ck": 1.0,
    "P8": 65.0,
}

#: Per seeded row, a wfstate number just on the wrong side and the limit itself.
MISSING = {
    "P3": (500.5, 500.0),
    "P4": (250.0, 200.0),
    "P5+ck": (1001.0, 1000.0),
    "P6": (100.1, 100.0),
    "P7+ck": (60.0, 50.0),
    "P8": (42.0, 60.0),
}


def results_with(values: dict[str, float]) -> report.Results:
    results = report.Results(big_store_shape=(100, 1000), quick=True)
    for key, value in values.items():
        results.record(key, "wfstate", value)
        results.record(key, "json_rewrite", 1.0)
    return results


def test_the_seeded_rows_are_the_seed_targets_of_benchmarks_md() -> None:
    assert set(report.SEEDED_ROWS) == set(PASSING) == set(MISSING)


def test_gate_passes_when_every_seed_target_is_met() -> None:
    assert gate.gate_failures(results_with(PASSING)) == []


@pytest.mark.parametrize("key", sorted(MISSING))
def test_gate_fails_on_a_seed_target_missed_and_says_by_how_much(key: str) -> None:
    wrong, _limit = MISSING[key]
    failures = gate.gate_failures(results_with({**PASSING, key: wrong}))
    assert len(failures) == 1
    assert failures[0].startswith(f"seed target missed: {key} ")
    assert "missed by" in failures[0]


@pytest.mark.parametrize("key", sorted(MISSING))
def test_seed_targets_are_strict_bounds(key: str) -> None:
    _wrong, limit = MISSING[key]
    failures = gate.gate_failures(results_with({**PASSING, key: limit}))
    assert [f.split()[3] for f in failures] == [key]


@pytest.mark.parametrize("key", sorted(PASSING))
def test_gate_fails_when_a_seeded_workload_has_no_number(key: str) -> None:
    values = {k: v for k, v in PASSING.items() if k != key}
    assert gate.gate_failures(results_with(values)) == [f"seed target not measured: {key}"]


@pytest.mark.parametrize("key", ["P5", "P5b", "P7", "P8+ck", "P5+crash", "P5b+crash"])
def test_rows_outside_default_settings_are_reported_not_gated(key: str) -> None:
    """The log-only rows (automatic checkpoints off), the default-policy store's footprint
    (its checkpoint history is more than the data) and its reopen after a crash (no
    compaction on close) show far beyond a seed limit, and pass."""
    results = results_with({**PASSING, key: 1e9 if key != "P8+ck" else -5.0})
    assert gate.gate_failures(results) == []
    label = next(row.label for row in report.STORE_ROWS if row.key == key)
    assert any(label in line for line in report.render(results, quick=True))


def test_a_peer_alone_is_not_a_wfstate_number() -> None:
    results = results_with(PASSING)
    del results.store["P4"]["wfstate"]
    assert gate.gate_failures(results) == ["seed target not measured: P4"]


def _write_run(path: Path, results: report.Results) -> str:
    """A ``--benchmark-json`` file as ``bench/conftest.py`` writes it."""
    document = {"benchmarks": [], report.JSON_KEY: msgspec.to_builtins(results)}
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


def test_main_exits_1_and_prints_the_table_on_a_miss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = results_with({**PASSING, "P5+ck": 4566.6})
    results.record_scaling("recovery", 10_000, "wfstate", 120.0)
    assert gate.main([_write_run(tmp_path / "run.json", results)]) == 1
    out = capsys.readouterr().out
    assert "P5 ... default checkpoint policy" in out
    assert "big store 100x1,000" in out
    assert "GATE FAILED: seed target missed: P5+ck 4566.6 ms" in out
    assert "+3566.6 ms" in out


@pytest.mark.parametrize("key", sorted(MISSING))
def test_main_exits_1_on_every_seed_target_missed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    """What CI runs (``make bench-ci``) allows no miss: each seed target missed fails it."""
    wrong, _limit = MISSING[key]
    run = _write_run(tmp_path / "run.json", results_with({**PASSING, key: wrong}))
    assert gate.main([run]) == 1
    out = capsys.readouterr().out
    assert f"GATE FAILED: seed target missed: {key} " in out
    assert "gate passed" not in out


def test_main_exits_0_when_every_seed_target_is_met(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gate.main([_write_run(tmp_path / "run.json", results_with(PASSING))]) == 0
    assert "gate passed" in capsys.readouterr().out


def test_results_survive_the_json_file_whole(tmp_path: Path) -> None:
    results = results_with(PASSING)
    results.p1_p50_s["floor"] = 2e-4
    results.record_scaling("commit", 10_000, "wfstate", 0.5)
    results.machine = "vm | Linux"
    loaded = report.load_results(_write_run(tmp_path / "run.json", results))
    assert loaded == results


def test_a_file_without_results_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"benchmarks": []}', encoding="utf-8")
    with pytest.raises(ValueError, match=report.JSON_KEY):
        report.load_results(str(path))


def test_bounds_that_look_for_more() -> None:
    at_least = report.Bound(70.0, higher=True)
    above = report.Bound(60.0, strict=True, higher=True)
    assert at_least.met(70.0) and not at_least.met(69.9)
    assert above.met(60.1) and not above.met(60.0)
    assert above.describe("%", None) == "> 60 %"
    assert at_least.shortfall(42.0, "%") == "-28.0 % (0.60x the limit)"
    assert report.Bound(0.5, relative=True).shortfall(2.0, "ms") == "(4.00x the limit)"
