"""``recover``: the plan changes nothing and is exactly what ``--apply`` then does; apply leaves
the store a plain open would, deletes nothing, and a second apply has nothing to do.

Proven on real directories holding every crash state of a two-phase-commit workload of the
crash simulator (torn log tails, decided transactions not finished, undecided temp files,
checkpoints and sessions), and on hand-made damage: a bad checkpoint with and without a
fallback, mid-log corruption the default mode refuses (and the salvage modes it proposes).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import wfstate.twophase
from tests.bytesutil import flip_bit
from tests.crashcheck import CK_STORE, open_sim_store, read_store
from tests.simfs import SimFileSystem
from tests.test_twophase_crash import tx_one_handle
from wfstate import WorkflowStep, open_store
from wfstate.backends.local import LocalStore
from wfstate.errors import NotFoundError
from wfstate.format import WAL_DIR
from wfstate.fs import OS_FS
from wfstate.recoveryplan import RecoveryPlan, apply_recovery, plan_recovery
from wfstate.wal import list_segments


@pytest.fixture
def dead_writers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Temp files written by this process count as left by a dead one (as after a crash)."""
    monkeypatch.setattr(wfstate.twophase, "running", lambda pid: False)


def files(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (lock files excluded: empty, and made by any open)."""
    out = {}
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if not name.endswith(".lock") and name != "LOCK":
                out[os.path.relpath(path, root)] = Path(path).read_bytes()
    return out


def write_disk(disk: SimFileSystem, root: Path) -> None:
    """The simulated store's files as a real directory ``root``."""
    for path, content in sorted(disk.snapshot().items()):
        if path != CK_STORE and not path.startswith(CK_STORE + "/"):
            continue
        target = root / os.path.relpath(path, CK_STORE)
        if content is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


_TEMP = re.compile(r"\.\d+\.[0-9a-f]{12}\.tmp")


def actions_of(plan: RecoveryPlan) -> list[tuple[str, str, str, int, int]]:
    """The plan's actions with the random part of temp file names masked."""
    return [
        (a.kind, _TEMP.sub(".T.tmp", a.path), _TEMP.sub(".T.tmp", a.to), a.size, a.from_size)
        for a in plan.actions
    ]


def lost_evidence(
    before: dict[str, bytes], after: dict[str, bytes], plan: RecoveryPlan | None = None
) -> list[str]:
    """Files of ``before`` whose bytes are nowhere in ``after``: not at their path, not moved
    (quarantined, renamed into place), not appended to, not cut into a kept prefix and a
    ``.broken-*`` file,
    and not the old version of a file a decided transaction of ``plan`` replaced."""
    contents = set(after.values())
    replaced = {a.to for a in plan.actions if a.kind == "rename"} if plan is not None else set()
    missing = []
    for path, data in before.items():
        if after.get(path) == data or data in contents or path in replaced:
            continue
        kept = after.get(path)
        if kept is not None and kept.startswith(data):  # appended to (a record logged)
            continue
        if kept is not None and data.startswith(kept):
            broken = [v for k, v in after.items() if k.startswith(f"{path}.broken-{len(kept)}")]
            if data[len(kept) :] in broken:
                continue
        missing.append(path)
    return missing


def store_view(store: LocalStore) -> object:
    got, index, states = read_store(store)
    return got, sorted(index), states, sorted(s.id for s in store.sessions())


def check_recover(root: Path, reference: object) -> tuple[RecoveryPlan, RecoveryPlan]:
    """Plan, apply, apply again on the store at ``root``; check every property; return the
    plan and the apply."""
    before = files(root)
    plan = plan_recovery(str(root))
    assert files(root) == before, "the plan changed the disk"
    applied = apply_recovery(str(root))
    assert actions_of(plan) == actions_of(applied)
    assert plan.status == ("needs_repair" if applied.actions else "clean")
    assert applied.status == ("repaired" if applied.actions else "clean")
    assert plan.transactions == applied.transactions
    assert plan.log_damage == applied.log_damage
    after = files(root)
    assert lost_evidence(before, after, applied) == []
    with LocalStore.open(str(root)) as store:
        assert store_view(store) == reference
    again = apply_recovery(str(root))
    assert again.status == "clean" and again.actions == ()
    return plan, applied


def crash_states(stride: int) -> Iterator[tuple[str, SimFileSystem]]:
    w = tx_one_handle()
    for at in w.fs.crash_points()[::stride]:
        for label, disk in w.fs.crash_states(at):
            yield f"op {at} {label}", disk


def run_crash_states(tmp_path: Path, stride: int) -> dict[str, int]:
    seen = {"states": 0, "repaired": 0, "rolled forward": 0, "aborted": 0, "torn": 0}
    for name, disk in crash_states(stride):
        root = tmp_path / "store"
        shutil.rmtree(root, ignore_errors=True)
        write_disk(disk, root)
        if not any(root.glob("wal/*.wal")):  # the crash came before the store existed
            before = files(root) if root.exists() else None
            with pytest.raises(NotFoundError):
                apply_recovery(str(root))
            assert (files(root) if root.exists() else None) == before  # not created
            continue
        with open_sim_store(disk) as store:  # the reference: a plain open of the crash state
            reference = store_view(store)
        try:
            plan, applied = check_recover(root, reference)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
        seen["states"] += 1
        seen["repaired"] += applied.status == "repaired"
        seen["rolled forward"] += any(t.resolution == "roll_forward" for t in plan.transactions)
        seen["aborted"] += any(t.resolution == "abort" for t in plan.transactions)
        seen["torn"] += any(d.kind != "corruption" for d in plan.log_damage)
    return seen


def test_plan_is_what_apply_does_in_crash_states_of_transactions(
    tmp_path: Path, dead_writers: None
) -> None:
    seen = run_crash_states(tmp_path, stride=9)
    # the sample covers every kind of repair (else the test proves less than it says)
    assert seen["rolled forward"] and seen["aborted"] and seen["torn"], seen
    assert seen["repaired"] < seen["states"], seen


@pytest.mark.slow
def test_plan_is_what_apply_does_in_every_crash_state_of_transactions(
    tmp_path: Path, dead_writers: None
) -> None:
    seen = run_crash_states(tmp_path, stride=1)
    assert seen["rolled forward"] and seen["aborted"] and seen["torn"], seen


# -- hand-made damage -----------------------------------------------------------------------


def small_store(path: Path, *, compact: bool = False) -> None:
    api = open_store(str(path))
    steps = [WorkflowStep(id=f"s{i}", name=f"step {i}") for i in range(3)]
    for w in ("alpha", "beta"):
        api.create_workflow(w, f"workflow {w}", steps)
        api.update_step(w, "s0", "running")
        api.checkpoint(w)
        api.update_step(w, "s0", "completed", output={"n": 1})
    if compact:
        api.store.compact()
    api.close()


def loads(path: Path) -> dict[str, bytes]:
    with LocalStore.open(str(path)) as store:
        return {w: read_store(store)[0][w] for w in store.list_workflows()}


def corrupt_checkpoint(path: Path, workflow_id: str) -> str:
    with LocalStore.open(str(path)) as store:
        info = store.checkpoints(workflow_id)[0]
    file = path / "checkpoints" / info.file
    flip_bit(file, 8 * (file.stat().st_size // 2))
    return info.id


def test_a_bad_checkpoint_is_dropped_and_kept_in_quarantine_when_the_log_can_rebuild(
    tmp_path: Path,
) -> None:
    small_store(tmp_path)
    want = loads(tmp_path)
    bad = corrupt_checkpoint(tmp_path, "alpha")
    damaged = files(tmp_path)
    plan = plan_recovery(str(tmp_path))
    assert plan.status == "needs_repair"
    assert [(b.checkpoint_id, b.workflow_id, b.fallback) for b in plan.bad_checkpoints] == [
        (bad, "alpha", None)
    ]
    assert all(w.recoverable for w in plan.workflows)
    applied = apply_recovery(str(tmp_path))
    assert applied.status == "repaired"
    assert [a.kind for a in applied.actions if a.kind == "quarantine"] == ["quarantine"]
    assert lost_evidence(damaged, files(tmp_path)) == []
    assert loads(tmp_path) == want
    with LocalStore.open(str(tmp_path)) as store:
        assert bad not in {i.id for i in store.checkpoints()}
    assert apply_recovery(str(tmp_path)).status == "clean"


def test_a_workflow_with_no_readable_checkpoint_and_no_log_is_unrecoverable(
    tmp_path: Path,
) -> None:
    small_store(tmp_path, compact=True)
    corrupt_checkpoint(tmp_path, "beta")
    plan = plan_recovery(str(tmp_path))
    assert plan.status == "unrecoverable"
    assert plan.estimated_loss.workflows_lost == ("beta",)
    assert [w.workflow_id for w in plan.workflows if w.recoverable] == ["alpha"]


def corrupt_mid_log(path: Path) -> None:
    segment = list_segments(OS_FS, str(path / WAL_DIR))[-1]
    flip_bit(segment.path, 8 * (Path(segment.path).stat().st_size // 3))


def test_mid_log_corruption_is_refused_with_the_salvage_modes_and_what_they_lose(
    tmp_path: Path,
) -> None:
    small_store(tmp_path)
    corrupt_mid_log(tmp_path)
    before = files(tmp_path)
    plan = plan_recovery(str(tmp_path))
    assert plan.status == "unrecoverable" and plan.refused
    assert [o.mode for o in plan.alternatives] == ["point_in_time", "skip_corrupted"]
    assert all(o.loss is not None and o.loss.damaged_bytes > 0 for o in plan.alternatives)
    applied = apply_recovery(str(tmp_path))
    assert applied.status == "unrecoverable" and applied.actions == ()
    assert files(tmp_path) == before, "a refused apply changed the disk"
    salvaged = apply_recovery(str(tmp_path), mode="point_in_time")
    assert salvaged.status == "repaired"
    assert salvaged.estimated_loss.damaged_bytes > 0
    assert lost_evidence(before, files(tmp_path)) == []
    assert plan_recovery(str(tmp_path)).status in ("clean", "unrecoverable")
