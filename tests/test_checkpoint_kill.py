"""SIGKILL loops with checkpoints, retention and compaction (issue 4), on a real directory.

Rounds of writer processes (:mod:`tests.store_worker` role ``ckwriter``) share one store:
each commits batches, checkpoints its own workflow and the shared one, and the writer of
process 0 also compacts the store and retains 2 checkpoints per workflow. In every round one
writer is SIGKILLed at a seeded moment: after its n-th acknowledged batch, checkpoint,
compaction or retention begun, plus a seeded pause of up to 15 ms, so the kill lands inside
whichever step that is. The next round's writers resume where their process's batches in the
store end. After every round the store is reopened and checked against what every writer
reported (:func:`tests.storerun.check_kill_loop`): every acknowledged batch present, nothing
else but a killed writer's last begun batch, states equal to the model, every checkpoint
verifying and holding the model's state at its LSN, acknowledged checkpoints present unless
dropped, drops final, the log starting at or after the last acknowledged compaction; after the
last round a compaction leaves no file no checkpoint names.

This loop found that a writer wrote over the batches others appended to a segment it had
created (its descriptor did not append); ``wfstate/wal/recovery.py`` ``create_segment`` now
returns an appending descriptor.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from msgspec.structs import replace

from tests.store_worker import Ack, Checkpointed, Compacted, Event, Resumed, Retained
from tests.storerun import KillLoop, check_kill_loop, kill_loop_summary, run_kill_loop
from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.format import CHECKPOINTS_DIR
from wfstate.mutations import Mutation, PutStepOutput


def _run(tmp_path: Path, report: list[str], name: str, **options: object) -> KillLoop:
    loop, problems = run_kill_loop(tmp_path, **options)  # type: ignore[arg-type]
    report.append(kill_loop_summary(name, loop))
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:30])
    assert loop.figures["kills"] == len(loop.rounds)
    return loop


def test_writers_checkpointing_and_compacting_survive_a_sigkill_each_round(
    tmp_path: Path, crash_report: list[str]
) -> None:
    """4 rounds of 3 writers x 50 batches, one writer killed per round: after a batch, in a
    checkpoint, in a compaction, in a retention (about 2 s)."""
    _run(tmp_path, crash_report, "checkpoint kill loop, seed 1", seed=1)


# -- the checks catch what they claim to: tampered outcomes of one run ---------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[KillLoop, Path]:
    tmp = tmp_path_factory.mktemp("kill-loop")
    loop, problems = run_kill_loop(tmp, seed=3, rounds=2, commits=40)
    assert problems == []
    return loop, tmp / "store"


def _with_events(loop: KillLoop, p: int, extra: list[Event]) -> KillLoop:
    """The loop with ``extra`` reported by writer ``p`` at the end of the last round."""
    last = loop.rounds[-1]
    writers = {**last.writers, p: [*last.writers[p], *extra]}
    rounds = [*loop.rounds[:-1], dataclasses.replace(last, writers=writers)]
    return dataclasses.replace(loop, rounds=rounds)


def _store_copy(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    return copy


def _own_count(store: Path, p: int) -> int:
    with LocalStore.open(str(store), checkpoints=MANUAL_ONLY) as s:
        return len(s.load(f"proc-{p}").outputs.get("own", ()))


def _index(store: Path) -> list[str]:
    with LocalStore.open(str(store), checkpoints=MANUAL_ONLY) as s:
        return [info.id for info in s.checkpoints()]


def ack_a_batch_the_store_lacks(loop: KillLoop, store: Path, tmp: Path) -> tuple[KillLoop, Path]:
    i = _own_count(store, 1)
    batch: list[Mutation] = [
        PutStepOutput(workflow_id="proc-1", step_id="own", data={"p": 1, "i": i}, at=0)
    ]
    return _with_events(loop, 1, [Ack(p=1, i=i, lsn=10**9, batch=batch)]), store


def ack_a_checkpoint_the_index_lacks(
    loop: KillLoop, store: Path, tmp: Path
) -> tuple[KillLoop, Path]:
    fake = Checkpointed(p=2, id="ck-0000000000000000", workflow_id="proc-2", lsn=1)
    return _with_events(loop, 2, [fake]), store


def drop_a_checkpoint_that_stays(loop: KillLoop, store: Path, tmp: Path) -> tuple[KillLoop, Path]:
    kept = _index(store)[0]
    return _with_events(loop, 0, [Retained(p=0, dropped=[kept], folded=[])]), store


def ack_a_later_compaction(loop: KillLoop, store: Path, tmp: Path) -> tuple[KillLoop, Path]:
    later = Compacted(p=0, first_lsn=10**9, segments_discarded=1)
    return _with_events(loop, 0, [later]), store


def ack_other_content(loop: KillLoop, store: Path, tmp: Path) -> tuple[KillLoop, Path]:
    """Writer 1's first batch as if it had put other data: the model, and every checkpoint
    of the workflows it touched after it, differ from the store."""
    first = loop.rounds[0]
    events = list(first.writers[1])
    k = next(n for n, e in enumerate(events) if isinstance(e, Ack))
    ack = events[k]
    assert isinstance(ack, Ack)
    events[k] = replace(ack, batch=[replace(m, data={"p": 1, "i": 0, "x": 1})
                                    if isinstance(m, PutStepOutput) else m
                                    for m in ack.batch])  # fmt: skip
    rounds = [dataclasses.replace(first, writers={**first.writers, 1: events}), *loop.rounds[1:]]
    return dataclasses.replace(loop, rounds=rounds), store


def resume_at_the_wrong_batch(loop: KillLoop, store: Path, tmp: Path) -> tuple[KillLoop, Path]:
    last = loop.rounds[-1]
    events = [replace(e, i=e.i + 1) if isinstance(e, Resumed) else e for e in last.writers[2]]
    rounds = [*loop.rounds[:-1], dataclasses.replace(last, writers={**last.writers, 2: events})]
    return dataclasses.replace(loop, rounds=rounds), store


def damage_a_checkpoint_file(loop: KillLoop, store: Path, tmp: Path) -> tuple[KillLoop, Path]:
    """One checkpoint that a newer one of its workflow does not build on, so the workflow
    still loads and only ``verify`` sees it; else the oldest (its workflow may not load)."""
    copy = _store_copy(store, tmp)
    with LocalStore.open(str(copy), checkpoints=MANUAL_ONLY) as s:
        infos = s.checkpoints()  # newest first
    parents = {info.id: info.parent for info in infos}

    def chain(checkpoint_id: str | None) -> set[str]:
        out = set()
        while checkpoint_id is not None:
            out.add(checkpoint_id)
            checkpoint_id = parents.get(checkpoint_id)
        return out

    info = next(
        (
            old
            for old in infos
            if any(
                new.workflow_id == old.workflow_id
                and new.lsn > old.lsn
                and old.id not in chain(new.id)
                for new in infos
            )
        ),
        infos[-1],
    )
    path = copy / CHECKPOINTS_DIR / info.file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return loop, copy


def leave_a_stray_checkpoint_file(loop: KillLoop, store: Path, tmp: Path) -> tuple[KillLoop, Path]:
    copy = _store_copy(store, tmp)
    with LocalStore.open(str(copy), checkpoints=MANUAL_ONLY) as s:
        info = s.checkpoints()[0]
    # A temp file of process 1, which always runs: compaction must leave it, as it would a
    # temp file of a killed writer if it took the writer for a live one.
    stray = copy / CHECKPOINTS_DIR / f".{info.file}.1.0123456789ab.tmp"
    shutil.copyfile(copy / CHECKPOINTS_DIR / info.file, stray)
    return loop, copy


@pytest.mark.parametrize(
    ("tamper", "reported"),
    [
        (ack_a_batch_the_store_lacks, "is not in the store: LOST"),
        (ack_a_checkpoint_the_index_lacks, "is not in the index and no retention dropped it"),
        (drop_a_checkpoint_that_stays, "dropped checkpoints are back"),
        (ack_a_later_compaction, "before the acknowledged compaction's"),
        (ack_other_content, "does not hold the model's state at that LSN"),
        (resume_at_the_wrong_batch, "resumed at batch"),
        (damage_a_checkpoint_file, "does not verify"),
        (leave_a_stray_checkpoint_file, "files no checkpoint names left after a compaction"),
    ],
)
def test_the_kill_loop_checks_report_a_tampered_outcome(
    finished: tuple[KillLoop, Path],
    tmp_path: Path,
    tamper: Callable[[KillLoop, Path, Path], tuple[KillLoop, Path]],
    reported: str,
) -> None:
    loop, store = finished
    tampered, path = tamper(loop, store, tmp_path)
    problems = check_kill_loop(tampered, str(path), final=True)
    assert any(reported in p for p in problems), problems


# -- more seeds, longer rounds (-m slow) ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 22))
def test_checkpoint_kill_loop_seeds(tmp_path: Path, crash_report: list[str], seed: int) -> None:
    _run(
        tmp_path, crash_report, f"checkpoint kill loop, seed {seed}",
        seed=seed, rounds=5, commits=80, procs=3 + seed % 2,
    )  # fmt: skip
