"""Damage to every file of a whole store is detected or recovered; silently wrong only where
the format says it must be (a last segment cut at a record boundary, format §3.1).

The store, the damage and the classification are :mod:`tests.storecorruption`'s. The default
run flips every bit of the first 64 bytes of one file of each kind and a stride of the bits of
every file, and cuts likewise; ``-m slow`` does every bit and every cut of every file.
The last tests show that the classification fires: a value read back wrong with nothing
reported is *silently wrong*, an exception outside the WfstateError tree is a defect, and the
one limit the format states (a last segment cut at a record boundary) is seen as such.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import storecorruption
from tests.storecorruption import (
    KINDS,
    STORE,
    BuiltStore,
    CorruptionRun,
    build_store,
    classify,
    clean_cuts_without_hint,
    clean_end_cuts,
    cut_offsets,
    disk_with,
    open_store,
    run_corruption,
    sample_heads,
    table,
)
from wfstate.checkpointreports import CheckpointCheck
from wfstate.format import SESSIONS_DIR, WAL_DIR, WORKFLOWS_DIR
from wfstate.mutations import UpdateContext
from wfstate.sessions import SessionInfo


@pytest.fixture(scope="module")
def built() -> BuiltStore:
    return build_store()


@pytest.fixture(scope="module")
def sampled(built: BuiltStore) -> CorruptionRun:
    return run_corruption(exhaustive=False, built=built)


def paths_of(built: BuiltStore, kind: str) -> list[str]:
    return sorted(path for path, k in built.kinds.items() if k == kind)


def test_the_store_holds_every_kind_of_file_and_reads_back_as_acknowledged(
    built: BuiltStore,
) -> None:
    # build_store already asserted that an undamaged copy reads exactly as acknowledged
    assert {kind: len(paths_of(built, kind)) for kind in KINDS} == {
        KINDS[0]: 1,  # the first live segment, after the compaction
        KINDS[1]: 1,  # the last one: the log rotated after the compaction
        KINDS[2]: 1,
        KINDS[3]: 1,
        KINDS[4]: 5,  # a, d (manual), b, c (compaction), b (the session's end)
        KINDS[5]: 2,  # a before the compaction, d after it
        KINDS[6]: 2,  # b (the session's end), a (write_state_files)
        KINDS[7]: 1,
    }
    assert f"{WAL_DIR}/START" in built.files
    expected = built.expected
    assert expected["workflows listed"] == ("a", "b", "c", "d")
    sessions = expected["sessions"]
    assert isinstance(sessions, tuple) and len(sessions) == 1
    session = sessions[0]
    assert isinstance(session, SessionInfo)
    assert session.status == "ended" and session.workflows == ("b",)
    assert expected[f"session file {session.id}.session"] == session
    assert {f"state file {name}" for name in ("a.state", "b.state")} <= set(expected)
    index = expected["checkpoint index"]
    assert isinstance(index, tuple) and len(index) == 7
    for info in index:
        assert f"checkpoint {info.id}" in expected and f"verify {info.id}" in expected
    # d was created after the compaction: its checkpoints are also compared with the log
    assert sum(check.matches_log is True for check in _checks(built)) == 2


def _checks(built: BuiltStore) -> Iterator[CheckpointCheck]:
    for item, value in built.expected.items():
        if item.startswith("verify "):
            assert isinstance(value, CheckpointCheck)
            yield value


def test_sampled_damage_to_every_file_is_detected_or_recovered(
    built: BuiltStore, sampled: CorruptionRun, crash_report: list[str]
) -> None:
    crash_report.append(
        f"store corruption (sampled): {sampled.total().bits} bit flips, "
        f"{sampled.total().cuts} truncations in {sampled.seconds:.1f} s"
    )
    assert sampled.violations() == [], table(sampled)
    heads = sample_heads(built)
    for kind, tally in sampled.tallies.items():
        (first, *_others) = paths_of(built, kind)
        assert heads[first] == 64 and tally.bits >= 8 * min(64, len(built.files[first])), kind
        assert tally.cuts > 0, kind
        if kind == KINDS[2]:  # a discarded segment is never read: every case reads right
            assert tally.verdicts == {"recovered": tally.bits + tally.cuts}, table(sampled)
        else:  # every file the store reads: each flip and cut is seen
            assert tally.verdicts["detected"] > 0.98 * (tally.bits + tally.cuts), table(sampled)
    # the clean cuts the sample makes of the last segment are each detected (the hint)
    (last,) = paths_of(built, KINDS[1])
    size = len(built.files[last])
    sampled_clean = clean_end_cuts(built.files[last]) & set(cut_offsets(size, heads[last]))
    assert sampled.tallies[KINDS[1]].clean_end_cuts == len(sampled_clean) >= 1
    assert sampled.tallies[KINDS[1]].clean_end_cuts_detected == len(sampled_clean)


def test_a_valid_state_file_with_another_state_is_silently_wrong(built: BuiltStore) -> None:
    """The classifier fires: a state file that verifies (this store's, rewritten later) but
    holds another state than the acknowledged one is read without a report."""
    fs = disk_with(built, built.files)
    with open_store(fs) as store:
        store.commit([UpdateContext(workflow_id="a", user_data={"later": True}, at=0)])
        store.write_state_files(["a"])
    later = fs.read_file(f"{STORE}/{WORKFLOWS_DIR}/a.state")
    assert later != built.files[f"{WORKFLOWS_DIR}/a.state"]
    case = classify(built, {**built.files, f"{WORKFLOWS_DIR}/a.state": later})
    assert case == (
        "silently wrong",
        "state file a.state differs and nothing reported damage",
        (),
    )


def test_an_exception_outside_the_error_tree_is_a_defect(
    built: BuiltStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def raw(data: bytes, path: str) -> object:
        raise KeyError(path)

    monkeypatch.setattr(storecorruption, "decode_session_file", raw)
    case = classify(built, built.files)
    assert case.verdict == "other exception"
    assert case.why.startswith("session file se-") and "KeyError" in case.why


def test_last_segment_cut_at_a_record_boundary_is_detected_by_the_durability_hint(
    built: BuiltStore,
) -> None:
    """Format §3.1: a segment cut where a record ends reads as a log that was never longer.
    The durability hint names the last durable LSN (format §8.1), so the default recovery
    refuses the store; once a reboot took the hint, nothing can see the cut (the documented
    limit, docs/guarantees.md)."""
    (last,) = paths_of(built, KINDS[1])
    data = built.files[last]
    for size in sorted(clean_end_cuts(data)):
        case = classify(built, {**built.files, last: data[:size]})
        assert case.verdict == "detected", (size, case)
        assert case.why.startswith("open: ") and "durable records are missing" in case.why
    assert clean_cuts_without_hint(built) == {"silently wrong": len(clean_end_cuts(data))}
    before_end = max(clean_end_cuts(data)) + 8  # inside the last record: durable, so refused
    case = classify(built, {**built.files, last: data[:before_end]})
    assert case.verdict == "detected" and "durable records are missing" in case.why, case


def test_a_session_record_file_is_only_checked_by_its_reader(built: BuiltStore) -> None:
    """The store never reads a session record file back (format §11.3); damage to one is
    seen by its reader, ``decode_session_file``, which the runs call for every case."""
    (path,) = paths_of(built, KINDS[7])
    assert path.startswith(f"{SESSIONS_DIR}/")
    case = classify(built, {**built.files, path: built.files[path][:-1]})
    assert case.verdict == "detected", case
    assert case.why.startswith(f"session file {path.split('/')[1]}: "), case


@pytest.mark.slow
def test_every_bit_and_every_cut_of_every_file_is_detected_or_recovered(
    built: BuiltStore, crash_report: list[str]
) -> None:
    run = run_corruption(exhaustive=True, built=built)
    crash_report.append(
        f"store corruption (exhaustive): {run.total().bits} bit flips, "
        f"{run.total().cuts} truncations in {run.seconds:.1f} s"
    )
    assert run.violations() == [], table(run)
    for kind, tally in run.tallies.items():
        assert tally.bits == 8 * tally.bytes and tally.cuts == tally.bytes, kind
    (last,) = paths_of(built, KINDS[1])
    assert run.tallies[KINDS[1]].clean_end_cuts == len(clean_end_cuts(built.files[last]))
