"""Checkpoints of a local store (issue 4): taken, listed, loaded from, verified, restored,
retained, compacted over; damage detected and fallen back from."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import MANUAL_ONLY, CheckpointPolicy
from wfstate.errors import CorruptionError, NotFoundError, ValidationError
from wfstate.format import CHECKPOINTS_DIR, WAL_DIR, parse_segment_name
from wfstate.model import WorkflowStep, encode_state, state_checksum
from wfstate.mutations import CreateWorkflow, Mutation, PutStepOutput, SetStepStatus
from wfstate.retention import RetentionPolicy

STEPS = 12


def create(workflow_id: str = "wf") -> list[Mutation]:
    steps = tuple(WorkflowStep(id=f"s{i}", name=f"step {i}") for i in range(STEPS))
    return [CreateWorkflow(workflow_id=workflow_id, name=workflow_id, steps=steps, at=0)]


def run_step(i: int, workflow_id: str = "wf", status: str = "completed") -> list[Mutation]:
    return [
        SetStepStatus(workflow_id=workflow_id, step_id=f"s{i}", status="running", at=0),
        PutStepOutput(workflow_id=workflow_id, step_id=f"s{i}", data={"n": i, "x": "y" * 50}, at=0),
        SetStepStatus(workflow_id=workflow_id, step_id=f"s{i}", status=status, at=0),  # type: ignore[arg-type]
    ]


@pytest.fixture
def clock() -> Iterator[float]:
    return itertools.count(1000.0)


def open_store(path: Path, clock: Iterator[float], **kwargs: object) -> LocalStore:
    kwargs.setdefault("checkpoints", MANUAL_ONLY)
    return LocalStore.open(str(path), clock=lambda: next(clock), **kwargs)  # type: ignore[arg-type]


def ckpt_path(store_dir: Path, file: str) -> Path:
    return store_dir / CHECKPOINTS_DIR / file


def test_full_then_incremental_listed_newest_first(tmp_path: Path, clock: Iterator[float]) -> None:
    with open_store(tmp_path, clock) as store:
        store.commit(create())
        store.commit(run_step(0))
        full = store.checkpoint("wf", description="after s0", tags=["milestone"])
        store.commit(run_step(1))
        incremental = store.checkpoint("wf", tags=["auto-ish"])
        assert full.parent is None and incremental.parent == full.id
        assert incremental.size < full.size
        assert [i.id for i in store.checkpoints("wf")] == [incremental.id, full.id]
        assert [i.id for i in store.checkpoints("wf", tag="milestone")] == [full.id]
        assert [i.id for i in store.checkpoints(limit=1)] == [incremental.id]
        assert full.description == "after s0" and full.type == "manual"
        assert full.lsn < incremental.lsn
        expected = store.load("wf")
    with open_store(tmp_path, clock) as store:
        # the index comes back from the log alone
        assert [i.id for i in store.checkpoints("wf")] == [incremental.id, full.id]
        assert encode_state(store.load("wf")) == encode_state(expected)
        assert all(check.ok and check.matches_log for check in store.verify())


def test_load_falls_back_past_a_corrupted_checkpoint(
    tmp_path: Path, clock: Iterator[float]
) -> None:
    with open_store(tmp_path, clock) as store:
        store.commit(create())
        store.commit(run_step(0))
        older = store.checkpoint("wf")
        store.commit(run_step(1))
        newer = store.checkpoint("wf", tags=["x"])
        store.commit(run_step(2))
        expected = encode_state(store.load("wf"))
    target = ckpt_path(tmp_path, newer.file)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x40
    target.write_bytes(bytes(data))
    with open_store(tmp_path, clock) as store:
        assert encode_state(store.load("wf")) == expected
        assert newer.id in store.stats().bad_checkpoints
        suggestion = store.recovery_suggestions("wf")
        assert suggestion.recommended is not None and suggestion.recommended.id == older.id
        assert [bad_id for bad_id, _ in suggestion.bad] == [newer.id]
        assert suggestion.batches_lost == 2
        checks = {c.checkpoint.id: c for c in store.verify()}
        assert not checks[newer.id].ok and checks[newer.id].problem
        assert checks[older.id].ok and checks[older.id].matches_log
        with pytest.raises(CorruptionError):
            store.restore(newer.id)


def test_every_byte_of_a_checkpoint_corrupted_is_detected_and_fallen_back_from(
    tmp_path: Path, clock: Iterator[float]
) -> None:
    """Each byte of a full and of an incremental checkpoint file flipped in turn: the file is
    reported bad, never used, and the state still loads right (from the older one or the
    log)."""
    with open_store(tmp_path, clock) as store:
        store.commit(create())
        store.commit(run_step(0))
        full = store.checkpoint("wf")
        store.commit(run_step(1))
        incremental = store.checkpoint("wf")
        store.commit(run_step(2))
        expected = encode_state(store.load("wf"))
    flipped = 0
    for info in (incremental, full):
        target = ckpt_path(tmp_path, info.file)
        original = target.read_bytes()
        for offset in range(len(original)):
            data = bytearray(original)
            data[offset] ^= 0xFF
            target.write_bytes(bytes(data))
            with open_store(tmp_path, clock) as store:
                assert encode_state(store.load("wf")) == expected, f"{info.file} byte {offset}"
                assert info.id in store.stats().bad_checkpoints, f"{info.file} byte {offset}"
            flipped += 1
        target.write_bytes(original)
    assert flipped > 200


def test_restore_is_a_logged_batch_that_a_later_restore_undoes(
    tmp_path: Path, clock: Iterator[float]
) -> None:
    with open_store(tmp_path, clock) as store:
        store.commit(create())
        store.commit(run_step(0))
        early = store.checkpoint("wf")
        early_state = store.checkpoint_state(early.id)
        store.commit(run_step(1))
        late = store.checkpoint("wf")
        late_state = store.checkpoint_state(late.id)
        before = store.load("wf").metadata.version
        lsn = store.restore(early.id)
        restored = store.load("wf")
        assert restored.metadata.last_lsn == lsn
        assert restored.metadata.version == before + 1
        assert restored.workflow.steps == early_state.workflow.steps
        assert restored.outputs == early_state.outputs
    with open_store(tmp_path, clock) as store:  # the restore survived
        assert store.load("wf").workflow.steps == early_state.workflow.steps
        store.restore(late.id)
        assert store.load("wf").outputs == late_state.outputs
        store.delete("wf")
        store.restore(late.id)  # a deleted workflow comes back
        assert store.load("wf").outputs == late_state.outputs


def test_bad_input_names_the_field_and_writes_nothing(
    tmp_path: Path, clock: Iterator[float]
) -> None:
    with open_store(tmp_path, clock) as store:
        store.commit(create())
        lsn = store.stats().last_lsn
        with pytest.raises(NotFoundError, match="workflow_id"):
            store.checkpoint("nope")
        with pytest.raises(ValidationError, match="workflow_id"):
            store.checkpoint("a/b")
        with pytest.raises(ValidationError, match="tags"):
            store.checkpoint("wf", tags="milestone")
        with pytest.raises(ValidationError, match="type"):
            store.checkpoint("wf", type="weekly")  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="description"):
            store.checkpoint("wf", description=3)  # type: ignore[arg-type]
        with pytest.raises(NotFoundError, match="checkpoint_id"):
            store.restore("ck-0000000000000000")
        with pytest.raises(ValidationError, match="keep_last"):
            RetentionPolicy(keep_last=0)
        with pytest.raises(ValidationError, match="every_batches"):
            CheckpointPolicy(every_batches=0)
        assert store.stats().last_lsn == lsn
        assert os.listdir(tmp_path / CHECKPOINTS_DIR) == []


def test_retention_keeps_last_n_folds_chains_and_dry_run_changes_nothing(
    tmp_path: Path, clock: Iterator[float]
) -> None:
    with open_store(tmp_path, clock) as store:
        store.commit(create())
        taken = []
        for i in range(5):
            store.commit(run_step(i))
            taken.append(store.checkpoint("wf"))
        # one full, then a chain of four incrementals
        assert [t.parent is None for t in taken] == [True, False, False, False, False]
        states = {t.id: encode_state(store.checkpoint_state(t.id)) for t in taken}
        dry = store.retain(RetentionPolicy(keep_last=2), dry_run=True)
        assert {i.id for i in dry.drop} == {t.id for t in taken[:3]}
        assert [i.id for i in dry.fold] == [taken[3].id]
        assert len(store.checkpoints()) == 5
        done = store.retain(RetentionPolicy(keep_last=2))
        assert {i.id for i in done.drop} == {t.id for t in taken[:3]}
        kept = store.checkpoints()
        assert [i.id for i in kept] == [taken[4].id, taken[3].id]
        assert kept[1].parent is None and kept[1].file.endswith(".folded.ckpt")
        for info in kept:
            assert encode_state(store.checkpoint_state(info.id)) == states[info.id]
        files = sorted(os.listdir(tmp_path / CHECKPOINTS_DIR))
        assert files == sorted(info.file for info in kept)
    with open_store(tmp_path, clock) as store:
        assert [i.id for i in store.checkpoints()] == [taken[4].id, taken[3].id]
        assert all(c.ok for c in store.verify())


def test_retention_by_age_and_by_size_keeps_the_newest(
    tmp_path: Path, clock: Iterator[float]
) -> None:
    with open_store(tmp_path, clock) as store:
        store.commit(create())
        for i in range(4):
            store.commit(run_step(i))
            store.checkpoint("wf")
        newest = store.checkpoints()[0]
        done = store.retain(RetentionPolicy(keep_last=None, max_age=1e-9))
        assert [i.id for i in store.checkpoints()] == [newest.id]
        assert len(done.drop) == 3
        store.commit(run_step(4))
        store.checkpoint("wf")
        store.retain(RetentionPolicy(keep_last=None, max_bytes=0))
        assert len(store.checkpoints()) == 1  # the newest of a live workflow always stays


def _segments(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path / WAL_DIR) if parse_segment_name(n))


def test_compaction_discards_covered_segments_and_the_store_reads_the_same(
    tmp_path: Path, clock: Iterator[float]
) -> None:
    with open_store(tmp_path, clock, segment_size=4096) as store:
        for w in ("a", "b", "c"):
            store.commit(create(w))
        for i in range(STEPS):
            for w in ("a", "b"):
                store.commit(run_step(i, w))
        store.delete("c")
        before = {w: encode_state(store.load(w)) for w in store.list_workflows()}
        segments = _segments(tmp_path)
        assert len(segments) >= 2
        dry = store.compact(dry_run=True)
        assert set(dry.checkpointed) == {"a", "b"} and _segments(tmp_path) == segments
        report = store.compact()
        assert set(report.checkpointed) == {"a", "b"}
        assert set(report.segments_discarded) == set(segments)
        assert len(_segments(tmp_path)) == 1
        assert {w: encode_state(store.load(w)) for w in store.list_workflows()} == before
        store.commit(create("d"))
        stats = store.stats()
        assert stats.log_first_lsn == report.log_first_lsn and stats.uncovered_batches == 1
    with open_store(tmp_path, clock, segment_size=4096) as store:
        assert store.list_workflows() == ["a", "b", "d"]
        for w in ("a", "b"):
            assert encode_state(store.load(w)) == before[w]
        assert all(
            c.ok and c.matches_log is None
            for c in store.verify()
            if c.checkpoint.workflow_id != "d"
        )
        # a second compaction over a compacted log
        store.commit(run_step(0, "d"))
        store.compact()
    with open_store(tmp_path, clock, segment_size=4096) as store:
        assert store.list_workflows() == ["a", "b", "d"]
        assert store.load("d").workflow.steps[0].status == "completed"


def test_after_compaction_a_workflow_whose_only_checkpoint_rots_is_reported(
    tmp_path: Path, clock: Iterator[float]
) -> None:
    with open_store(tmp_path, clock) as store:
        store.commit(create())
        store.commit(run_step(0))
        store.compact()
        (info,) = store.checkpoints("wf")
    target = ckpt_path(tmp_path, info.file)
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with open_store(tmp_path, clock) as store, pytest.raises(CorruptionError, match="'wf'"):
        store.load("wf")


def test_automatic_checkpoints_by_batches_step_boundaries_errors_and_log_bytes(
    tmp_path: Path, clock: Iterator[float]
) -> None:
    policy = CheckpointPolicy(
        every_batches=3, every_log_bytes=None, on_step_start=False, on_step_end=True, on_error=True
    )
    with open_store(tmp_path / "a", clock, checkpoints=policy) as store:
        store.commit(create())
        store.commit([SetStepStatus(workflow_id="wf", step_id="s0", status="running", at=0)])
        assert store.checkpoints() == []
        store.commit([SetStepStatus(workflow_id="wf", step_id="s0", status="completed", at=0)])
        assert [i.type for i in store.checkpoints()] == ["post_step"]
        store.commit([SetStepStatus(workflow_id="wf", step_id="s1", status="running", at=0)])
        store.commit([SetStepStatus(workflow_id="wf", step_id="s1", status="failed", at=0)])
        assert [i.type for i in store.checkpoints()] == ["error", "post_step"]
        for i in range(2, 5):
            store.commit([SetStepStatus(workflow_id="wf", step_id=f"s{i}", status="running", at=0)])
        assert store.checkpoints()[0].type == "automatic"
    compacting = CheckpointPolicy(every_batches=None, every_log_bytes=2000, on_error=False)
    with open_store(tmp_path / "b", clock, checkpoints=compacting, segment_size=4096) as store:
        store.commit(create())
        for i in range(STEPS):
            store.commit(run_step(i))
        stats = store.stats()
        assert stats.log_first_lsn > 1 and stats.checkpoints >= 1
        assert stats.bytes_since_compaction < 2000 + 1000
        expected = encode_state(store.load("wf"))
    with open_store(tmp_path / "b", clock) as store:
        assert encode_state(store.load("wf")) == expected


def test_a_second_handle_follows_checkpoints_drops_and_a_discard(
    tmp_path: Path, clock: Iterator[float]
) -> None:
    with (
        open_store(tmp_path, clock, segment_size=4096) as a,
        open_store(tmp_path, clock, segment_size=4096) as b,
    ):
        a.commit(create())
        for i in range(6):
            a.commit(run_step(i))
        info = a.checkpoint("wf")
        assert [i.id for i in b.checkpoints()] == [info.id]
        expected = encode_state(a.load("wf"))
        assert encode_state(b.load("wf")) == expected
        a.compact()
        a.retain(RetentionPolicy(keep_last=1))
        assert state_checksum(b.load("wf")) == state_checksum(a.load("wf"))
        assert [i.id for i in b.checkpoints()] == [i.id for i in a.checkpoints()]
        b.commit(run_step(6))
        assert a.load("wf").workflow.steps[6].status == "completed"
        b.checkpoint("wf")
        assert len(a.checkpoints()) == 2


def test_orphan_checkpoint_files_are_deleted_by_compaction(
    tmp_path: Path, clock: Iterator[float]
) -> None:
    with open_store(tmp_path, clock) as store:
        store.commit(create())
        info = store.checkpoint("wf")
        orphan = tmp_path / CHECKPOINTS_DIR / "ck-00000000000000ff.ckpt"
        orphan.write_bytes(b"left by a crash before its record")
        dead_temp = tmp_path / CHECKPOINTS_DIR / ".ck-0000000000000001.ckpt.999999999.abcdef.tmp"
        dead_temp.write_bytes(b"x")
        report = store.compact()
        assert set(report.orphans_deleted) == {orphan.name, dead_temp.name}
        assert sorted(os.listdir(tmp_path / CHECKPOINTS_DIR)) == [info.file]


def test_a_reader_whose_batches_are_discarded_under_it_rebuilds_from_the_checkpoint(
    tmp_path: Path, clock: Iterator[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process compacts between this handle's catch-up and its reading the batches
    its entries name: the read finds their segment gone, catches up again (applying the
    anchor) and builds the state from the checkpoint instead of failing."""
    with open_store(tmp_path, clock, segment_size=4096) as a:
        a.commit(create())
        for i in range(STEPS):
            a.commit(run_step(i))
        with open_store(tmp_path, clock, segment_size=4096) as b:
            a.compact()
            expected = encode_state(a.load("wf"))
            follow = b._log.follow
            calls = []

            def late_follow() -> None:  # the first catch-up happens "before" the compaction
                calls.append(1)
                if len(calls) > 1:
                    follow()

            monkeypatch.setattr(b._log, "follow", late_follow)
            assert encode_state(b.load("wf")) == expected
            assert len(calls) == 2


def test_stats_report_compression_cached_state_and_fsyncs(tmp_path: Path) -> None:
    """The figures metrics are built from: what this handle's appends weighed before and
    after compression, the materialized states' estimated size, and each fdatasync's time."""
    synced: list[float] = []
    with LocalStore.open(str(tmp_path), checkpoints=MANUAL_ONLY, sync_interval_ms=5) as store:
        empty = store.stats()
        assert (empty.appended_payload_bytes, empty.compression_ratio) == (0, None)
        store.set_sync_observer(synced.append)
        store.commit(create())
        for _ in range(3):
            store.commit(
                [PutStepOutput(workflow_id="wf", step_id="s0", data={"text": "ab" * 500}, at=0)]
            )
        store.load("wf")
        stats = store.stats()
        assert stats.appended_payload_bytes > 3000 > stats.appended_stored_bytes > 0
        assert stats.compression_ratio is not None and stats.compression_ratio < 0.5
        assert stats.cached_state_bytes > 0
        first = store.checkpoint("wf")
        store.commit(create("other"))
        second = store.checkpoint("other")
        store.checkpoint("other")
        assert store.stats().checkpoints_by_workflow == {
            "other": (2, second.size + store.checkpoints("other")[0].size),
            "wf": (1, first.size),
        }
        store.delete("other")
        assert len(synced) >= 4 and all(s >= 0 for s in synced)  # durability "always"
        store.set_sync_observer(None)
        store.commit(create("other"))
        count = len(synced)
        store.commit(create("third"))
        assert len(synced) == count  # removed: no more calls
    with pytest.raises(ValidationError) as info:
        LocalStore.open(str(tmp_path / "x"), sync_interval_ms=0)
    assert info.value.field == "sync_interval_ms" and not (tmp_path / "x").exists()


def test_compacting_an_empty_store_does_nothing_and_raises_nothing(tmp_path: Path) -> None:
    with LocalStore.open(str(tmp_path)) as store:
        for dry_run in (True, False):
            report = store.compact(dry_run=dry_run)
            assert report.dry_run is dry_run
            assert (report.checkpointed, report.segments_discarded, report.log_first_lsn) == (
                (),
                (),
                1,
            )
        assert store.stats().last_lsn == 0


def test_the_default_policy_compacts_every_16_mib_of_log(tmp_path: Path) -> None:
    """Without a policy given, the log is compacted once 16 MiB of batches were logged, so an
    open never scans more than about that much (BENCHMARKS.md P5; checkpointpolicy docs)."""
    document = {"text": "".join(f"word{i} " for i in range(40_000))}  # ~350 KB
    size = len(msgspec.msgpack.encode(document))
    with LocalStore.open(str(tmp_path), durability="none") as store:
        store.commit(
            [
                CreateWorkflow(
                    workflow_id="wf", name="wf", steps=(WorkflowStep(id="s", name="s"),), at=0
                )
            ]
        )
        commits = 0
        while store.stats().log_first_lsn == 1:
            store.commit([PutStepOutput(workflow_id="wf", step_id="s", data=document, at=0)])
            commits += 1
            assert commits * size < 17 * 1024 * 1024, "no compaction after 16 MiB of log"
        assert commits * size >= 16 * 1024 * 1024 - size
        assert [i.type for i in store.checkpoints()] == ["compaction"]
