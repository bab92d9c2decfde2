"""Every bit and every byte of a whole small store, damaged one at a time (DESIGN.md §10 tier 6).

``tests/test_corruption.py`` damages log segments and reads the log. This module damages every
file of a *store* and reads it the way a user does. :func:`build_store` writes, on a
:class:`~tests.simfs.SimFileSystem`, a small store holding one of each kind of file: segments
of a rotated log after a compaction (the first live one starts with the ``DISCARD`` record),
``wal/START`` with its anchor, a segment the compaction discarded that a crash left behind
(format §2.2: ignored and deleted by the next opener), full and incremental checkpoint files
(one incremental taken before the compaction, so its workflow's floor leaves no fallback,
one after it, so ``verify`` compares it with the log), workflow state files written by
transactions, and the record file of an ended session. Everything was acknowledged; what the
writing handle read back is the *expected* reading, and a reopened, undamaged copy must read
exactly the same (checked by :func:`build_store`).

Then every damaged copy (one bit of one file flipped, or one file cut at one offset, on a
fresh copy of the disk) is opened by the real recovery in the default mode
(``tolerate_torn_tail``) and read whole (:func:`read_store`): every workflow, the listing and
the checkpoint index, every checkpoint's state, every workflow state file, the session table,
every session record file (through :func:`wfstate.sessions.decode_session_file`, the one reader
of that file: the store itself never reads it back), ``verify()`` and the bad checkpoints of
``stats()``. Each case is classified (:func:`classify`):

* **detected**: opening or a read raised an error of the :class:`~wfstate.errors.WfstateError`
  tree (``verify`` finding a checkpoint bad or different from the log counts as one), or a
  read returned another value than the expected one and the store reported damage
  (``log_damage``, a bad checkpoint in ``stats()``). The figures count apart the detected
  cases where a read returned another value: the documented limit of format §4 (a cut or
  damaged *final* record is a torn tail: it is cut, kept as evidence and reported, and the
  state is the one before it);
* **recovered**: no read raised and every value read equals the expected one (possibly with
  a repair or a fallback reported);
* **silently wrong**: a read returned another value than the expected one and nothing
  reported damage. Every such case fails the run;
* **other exception**: something outside the ``WfstateError`` tree escaped (a defect).

A flip is never assumed harmless: a flip in bytes no reader depends on is *recovered* only
because every read returned the expected value.

The store is damaged at rest with ``LOCK``'s durability hint as the writing handle left it
(format §8.1: the hint names the last durable LSN). The last segment cut exactly where a record
ends (:func:`clean_end_cuts`) reads as a log that was never longer (format §3.1); only that hint
shows that acknowledged records are missing. The runs count those cuts apart, and
:func:`clean_cuts_without_hint` classifies them again on a disk whose hint a reboot took: the
documented limit, silently wrong, reported as a figure (lock data is not on the simulated disk,
so a crash state of :class:`~tests.simfs.SimFileSystem` has no hint either).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal, NamedTuple

from tests.bytesutil import record_spans
from tests.simfs import SimFileSystem
from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.checkpointreports import StoreStats
from wfstate.errors import WfstateError
from wfstate.format import (
    CHECKPOINTS_DIR,
    HINT_SIZE,
    LOCK_FILE,
    SESSIONS_DIR,
    WAL_DIR,
    WORKFLOWS_DIR,
)
from wfstate.model import WorkflowStep, encode_state
from wfstate.mutations import (
    CreateWorkflow,
    Mutation,
    PutStepOutput,
    SetStepStatus,
    UpdateContext,
)
from wfstate.sessions import SessionInfo, decode_session_file

STORE = "/corruption/store"
CLOCK = 1000.0
SEGMENT_SIZE = 4096

Verdict = Literal["detected", "recovered", "silently wrong", "other exception"]

KINDS = (
    "segment (first live, starts with the anchor record)",
    "segment (last)",
    "segment (discarded, left over)",
    "START (anchor)",
    "checkpoint (full)",
    "checkpoint (incremental)",
    "workflow state file",
    "session record file",
)
"""The kinds of file of the store, in the order the report lists them."""

SAMPLED_HEAD_BYTES = 64
"""The sampled run flips every bit of the first 64 bytes (every header of the format) and
cuts at each of the first 64 offsets of one file of each kind..."""
SAMPLED_BIT_STRIDE = 61
"""...then flips every 61st bit of every file (prime: the bit within the byte varies)..."""
SAMPLED_CUT_STRIDE = 23
"""...and cuts every file at every 23rd offset."""


@dataclass(frozen=True)
class BuiltStore:
    """A store's files (path below the store -> bytes), its directories, the kind of each
    file, and the reading every damaged copy is compared with."""

    files: Mapping[str, bytes]
    dirs: tuple[str, ...]
    kinds: Mapping[str, str]
    expected: Mapping[str, object]
    hint: bytes = b""
    """``LOCK``'s durability hint as the writing handle left it (``b""``: lost by a reboot)."""


@dataclass
class Reading:
    """What reading one store gave, by item (``workflow a``, ``checkpoint <id>``, ...)."""

    values: dict[str, object] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)  # items whose read raised a WfstateError
    errors: list[str] = field(default_factory=list)  # those errors
    reports: list[str] = field(default_factory=list)  # damage reported without an error
    defects: list[str] = field(default_factory=list)  # exceptions outside the WfstateError tree


# -- the store ----------------------------------------------------------------------------------
def _words(seed: int, n: int) -> str:
    """``n`` random 8-hex-digit words: text the log's zstd cannot shrink much."""
    rng = random.Random(seed)
    return " ".join(f"{rng.getrandbits(32):08x}" for _ in range(n))


def _create(*workflow_ids: str) -> list[Mutation]:
    steps = tuple(WorkflowStep(id=f"s{i}", name=f"step {i}") for i in range(3))
    return [CreateWorkflow(workflow_id=w, name=w, steps=steps, at=0) for w in workflow_ids]


def _step(workflow_id: str, step: int, status: Literal["running", "completed"]) -> Mutation:
    return SetStepStatus(workflow_id=workflow_id, step_id=f"s{step}", status=status, at=0)


def _output(workflow_id: str, step: int, seed: int, words: int) -> Mutation:
    data = {"text": _words(seed, words)}
    return PutStepOutput(workflow_id=workflow_id, step_id=f"s{step}", data=data, at=0)


def _blob(workflow_id: str, seed: int, words: int) -> Mutation:
    """A context value overwritten each time: the log grows, the state does not."""
    return UpdateContext(workflow_id=workflow_id, user_data={"blob": _words(seed, words)}, at=0)


def open_store(fs: SimFileSystem) -> LocalStore:
    """The store on ``fs``, opened as every case opens it (default recovery mode)."""
    return LocalStore.open(
        STORE, fs=fs, clock=lambda: CLOCK, segment_size=SEGMENT_SIZE, checkpoints=MANUAL_ONLY
    )


def build_store() -> BuiltStore:
    """Write the store (module docstring), acknowledging every call, and note its reading.

    Before the compaction: workflows ``a``, ``b``, ``c``; a full and an incremental checkpoint
    of ``a``; a session that writes ``b``. The compaction checkpoints ``b`` and ``c``, writes
    ``START`` and deletes the segments before it (the last of them is put back afterwards, as
    a crash during the deletion would leave it). After it: workflow ``d`` grows the log past
    a rotation, gets a full and an incremental checkpoint; the session writes ``b`` again and
    ends (final checkpoint of ``b``, state file, session record file);
    ``write_state_files(["a"])``; a last batch on ``a`` and ``d``. Raises AssertionError if
    the store lacks a kind of file or a reopened copy does not read exactly as the writing
    handle did.
    """
    fs = SimFileSystem()
    with open_store(fs) as store:
        store.commit(_create("a", "b", "c"))
        store.commit([_step("a", 0, "running"), _step("c", 0, "running")])
        full_a = store.checkpoint("a")
        store.commit([_output("a", 0, 1, 12)])
        incremental_a = store.checkpoint("a")
        assert incremental_a.parent == full_a.id
        session = store.start_session("alice", {"run": 1})
        store.commit([_step("b", 0, "running")], session=session)
        store.commit([_output("c", 0, 2, 40)])
        discarded = {
            path: data for path, data in _files(fs).items() if path.startswith(f"{WAL_DIR}/0")
        }
        report = store.compact()
        assert report.segments_discarded, report
        store.commit(_create("d"))
        for seed in range(4):
            store.commit([_blob("d", 10 + seed, 90)])
        full_d = store.checkpoint("d")
        store.commit([_step("d", 0, "running"), _blob("d", 20, 20)])
        incremental_d = store.checkpoint("d")
        assert incremental_d.parent == full_d.id
        store.commit([_output("b", 0, 3, 10)], session=session)
        store.end_session(session)
        store.write_state_files(["a"])
        store.commit([_step("a", 0, "completed"), _step("d", 0, "completed")])
        expected = read_store(store, fs)
    hint = lock_data(fs)
    assert hint, "the writing handle left no durability hint"
    assert not (expected.errors or expected.reports or expected.defects), expected
    files = _files(fs)
    leftover = sorted(discarded)[-1]  # deleted lowest first: a crash leaves the later one
    files[leftover] = discarded[leftover]
    kinds = _kinds(files, leftover, {incremental_a.file, incremental_d.file})
    missing = set(KINDS) - set(kinds.values())
    assert not missing, f"the store lacks {sorted(missing)}"
    built = BuiltStore(
        files=files,
        dirs=(WAL_DIR, CHECKPOINTS_DIR, WORKFLOWS_DIR, SESSIONS_DIR),
        kinds=kinds,
        expected=expected.values,
        hint=hint,
    )
    case = classify(built, files)
    assert case == ("recovered", "", ()), f"the undamaged store reads {case}"
    return built


def _files(fs: SimFileSystem) -> dict[str, bytes]:
    prefix = STORE + "/"
    return {
        path[len(prefix) :]: data
        for path, data in fs.snapshot().items()
        if data is not None and path.startswith(prefix)
    }


def _kinds(files: Mapping[str, bytes], leftover: str, incremental: set[str]) -> dict[str, str]:
    segments = sorted(p for p in files if p.startswith(f"{WAL_DIR}/0") and p != leftover)
    assert len(segments) >= 2, f"the log did not rotate after the compaction: {segments}"
    kinds: dict[str, str] = {}
    for path in files:
        directory, name = path.split("/")
        if path == leftover:
            kinds[path] = KINDS[2]
        elif path in segments:
            kinds[path] = KINDS[1] if path == segments[-1] else KINDS[0]
        elif path == f"{WAL_DIR}/START":
            kinds[path] = KINDS[3]
        elif directory == CHECKPOINTS_DIR:
            kinds[path] = KINDS[5] if name in incremental else KINDS[4]
        elif directory == WORKFLOWS_DIR:
            kinds[path] = KINDS[6]
        elif directory == SESSIONS_DIR:
            kinds[path] = KINDS[7]
        else:
            raise AssertionError(f"a file of no known kind: {path}")
    return kinds


def lock_data(fs: SimFileSystem) -> bytes:
    """What the store's ``LOCK`` holds on ``fs`` (the durability hint, format §8.1)."""
    handle = fs.open_lock(f"{STORE}/{LOCK_FILE}")
    try:
        return fs.read_lock_data(handle, HINT_SIZE)
    finally:
        fs.close_lock(handle)


def disk_with(built: BuiltStore, files: Mapping[str, bytes]) -> SimFileSystem:
    """A fresh simulated disk holding the store's directories and ``files``, and ``LOCK``
    holding ``built.hint``."""
    fs = SimFileSystem()
    handle = fs.open_lock(f"{STORE}/{LOCK_FILE}")
    fs.write_lock_data(handle, built.hint)
    fs.close_lock(handle)
    fs.mkdir(os.path.dirname(STORE))
    fs.mkdir(STORE)
    for directory in built.dirs:
        fs.mkdir(f"{STORE}/{directory}")
    for path, data in files.items():
        fd = fs.create_exclusive(f"{STORE}/{path}")
        fs.write(fd, data)
        fs.close(fd)
    return fs


# -- reading and classifying --------------------------------------------------------------------
def read_store(store: LocalStore, fs: SimFileSystem) -> Reading:
    """Read everything a user can read of ``store`` (module docstring), item by item: a read
    that raises is reported (or, outside the WfstateError tree, a defect) and the next one
    goes on. Workflow and checkpoint states are compared by their whole encoding, LSN stamp
    included."""
    reading = Reading()

    def read(item: str, call: Callable[[], object]) -> object | None:
        try:
            value = call()
        except WfstateError as exc:
            reading.failed.add(item)
            reading.errors.append(f"{item}: {type(exc).__name__}: {exc}")
            return None
        except Exception as exc:
            reading.defects.append(f"{item}: {type(exc).__name__}: {exc}")
            return None
        reading.values[item] = value
        return value

    workflows = read("workflows listed", lambda: tuple(store.list_workflows()))
    index = read("checkpoint index", lambda: tuple(store.checkpoints()))
    for workflow_id in workflows if isinstance(workflows, tuple) else ():
        read(f"workflow {workflow_id}", partial(_load, store, workflow_id))
    for info in index if isinstance(index, tuple) else ():
        read(f"checkpoint {info.id}", partial(_checkpoint_state, store, info.id))
    for name in _names(fs, WORKFLOWS_DIR):
        read(f"state file {name}", partial(_state_file, store, name.removesuffix(".state")))
    read("sessions", lambda: tuple(store.sessions()))
    for name in _names(fs, SESSIONS_DIR):
        read(f"session file {name}", partial(_session_file, fs, f"{STORE}/{SESSIONS_DIR}/{name}"))
    checks = read("verify", store.verify)
    if isinstance(checks, list):  # one item per checkpoint: a bad one is a report, not a value
        del reading.values["verify"]
        for check in checks:
            if check.ok and check.matches_log is not False:
                reading.values[f"verify {check.checkpoint.id}"] = check
            else:  # verify reports a bad checkpoint as a result, not an error
                reading.failed.add(f"verify {check.checkpoint.id}")
                reading.errors.append(f"verify {check.checkpoint.id}: {check.problem}")
    stats = read("stats", store.stats)
    if isinstance(stats, StoreStats):
        del reading.values["stats"]  # sizes and counters, not content
        reading.reports.extend(f"bad checkpoint {c}" for c in stats.bad_checkpoints)
    reading.reports.extend(f"log damage: {d}" for d in store.log_damage)
    read("close", store.close)
    reading.values.pop("close", None)
    return reading


def _load(store: LocalStore, workflow_id: str) -> bytes:
    return encode_state(store.load(workflow_id))


def _checkpoint_state(store: LocalStore, checkpoint_id: str) -> bytes:
    return encode_state(store.checkpoint_state(checkpoint_id))


def _state_file(store: LocalStore, workflow_id: str) -> bytes:
    return encode_state(store.read_state_file(workflow_id))


def _session_file(fs: SimFileSystem, path: str) -> SessionInfo:
    return decode_session_file(fs.read_file(path), path)


def _names(fs: SimFileSystem, directory: str) -> list[str]:
    return [n for n in fs.listdir(f"{STORE}/{directory}") if not n.startswith(".")]


class Case(NamedTuple):
    """The verdict on one damaged copy (module docstring), what backs it (the first error,
    defect, report or differing item), and every error and report the reading gave."""

    verdict: Verdict
    why: str
    messages: tuple[str, ...] = ()


def classify(built: BuiltStore, files: Mapping[str, bytes]) -> Case:
    """Open a fresh disk holding ``files``, read it whole, and judge the reading."""
    fs = disk_with(built, files)
    try:
        store = open_store(fs)
    except WfstateError as exc:
        why = f"open: {type(exc).__name__}: {exc}"
        return Case("detected", why, (why,))
    except Exception as exc:
        return Case("other exception", f"open: {type(exc).__name__}: {exc}")
    reading = read_store(store, fs)
    messages = (*reading.errors, *reading.reports)
    if reading.defects:
        return Case("other exception", reading.defects[0], messages)
    differing = [  # a value other than the expected one, an extra item, or one left out
        item
        for item in sorted(set(built.expected) | set(reading.values))
        if reading.values.get(item, _ABSENT) != built.expected.get(item, _ABSENT)
        and item not in reading.failed
    ]
    also = f" (differs: {differing[0]})" if differing else ""
    if reading.failed:
        return Case("detected", reading.errors[0] + also, messages)
    if differing and reading.reports:
        return Case("detected", reading.reports[0] + also, messages)
    if differing:
        return Case("silently wrong", f"{differing[0]} differs and nothing reported damage")
    return Case("recovered", reading.reports[0] if reading.reports else "", messages)


_ABSENT = object()


# -- damage -------------------------------------------------------------------------------------
def bit_indexes(size: int, head: int | None) -> range | list[int]:
    """The bits of a ``size``-byte file to flip: all (``head`` None), or every bit of the
    first ``head`` bytes and a stride of the rest (:data:`SAMPLED_BIT_STRIDE`)."""
    if head is None:
        return range(8 * size)
    start = min(size, head) * 8
    return [*range(start), *range(start, 8 * size, SAMPLED_BIT_STRIDE)]


def cut_offsets(size: int, head: int | None) -> range | list[int]:
    """The sizes to cut a ``size``-byte file to: every one below ``size`` (``head`` None), or
    the first ``head`` and a stride of the rest (:data:`SAMPLED_CUT_STRIDE`)."""
    if head is None:
        return range(size)
    start = min(size, head)
    return [*range(start), *range(start, size, SAMPLED_CUT_STRIDE)]


def damaged_copies(data: bytes, head: int | None) -> Iterator[tuple[str, str, bytes]]:
    """``(damage, label, bytes)`` for each damaged variant of one file's ``data``: every bit
    flipped and every cut (``head`` None), or the sample with ``head`` bytes in full."""
    for bit in bit_indexes(len(data), head):
        buf = bytearray(data)
        buf[bit // 8] ^= 1 << (bit % 8)
        yield "bit", f"bit {bit} (byte {bit // 8})", bytes(buf)
    for size in cut_offsets(len(data), head):
        yield "cut", f"cut to {size} bytes", data[:size]


def sample_heads(built: BuiltStore) -> dict[str, int]:
    """How many leading bytes of each file the sampled run damages in full: the first file of
    each kind :data:`SAMPLED_HEAD_BYTES`, the others none (their layout is the same)."""
    heads: dict[str, int] = {}
    seen: set[str] = set()
    for path in sorted(built.files):
        kind = built.kinds[path]
        heads[path] = 0 if kind in seen else SAMPLED_HEAD_BYTES
        seen.add(kind)
    return heads


def clean_end_cuts(data: bytes) -> set[int]:
    """The sizes that cut a last segment's ``data`` at a record boundary (format §3.1: a clean
    end, indistinguishable from a log that was never longer): the end of the header and of
    every record but the last, located by the independent parser of ``tests.bytesutil``."""
    return {64} | {span.offset + span.size for span in record_spans(data)[:-1]}


def clean_cuts_without_hint(built: BuiltStore) -> Counter[str]:
    """The verdicts of every clean cut of the last segment on a disk whose durability hint a
    reboot took: the documented limit (docs/guarantees.md), silently wrong."""
    (last,) = (p for p, kind in built.kinds.items() if kind == KINDS[1])
    data = built.files[last]
    rebooted = replace(built, hint=b"")
    return Counter(
        classify(rebooted, {**built.files, last: data[:size]}).verdict
        for size in sorted(clean_end_cuts(data))
    )


EXAMPLES_KEPT = 20
"""How many failing cases of each kind a run keeps to show (all are counted)."""


@dataclass
class KindTally:
    """The figures of one kind of file."""

    files: int = 0
    bytes: int = 0
    bits: int = 0
    cuts: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    refused_at_open: int = 0  # detected: opening the store raised
    naming_the_file: int = 0  # detected: an error or report names the damaged file
    detected_differing: int = 0  # detected, and some read returned another value
    clean_end_cuts: int = 0  # cuts of the last segment at a record boundary (format §3.1)
    clean_end_cuts_detected: int = 0  # of those, detected (by the durability hint)
    violations: int = 0  # silently wrong, or raised outside the WfstateError tree
    examples: list[str] = field(default_factory=list)  # the first violations

    def add(self, other: KindTally) -> None:
        self.files += other.files
        self.bytes += other.bytes
        self.bits += other.bits
        self.cuts += other.cuts
        self.verdicts.update(other.verdicts)
        self.refused_at_open += other.refused_at_open
        self.naming_the_file += other.naming_the_file
        self.detected_differing += other.detected_differing
        self.clean_end_cuts += other.clean_end_cuts
        self.clean_end_cuts_detected += other.clean_end_cuts_detected
        self.violations += other.violations
        self.examples.extend(other.examples)


@dataclass
class CorruptionRun:
    """Every case of one run, by kind of file."""

    exhaustive: bool
    tallies: dict[str, KindTally]
    seconds: float

    def total(self) -> KindTally:
        total = KindTally()
        for tally in self.tallies.values():
            total.add(tally)
        return total

    def violations(self) -> list[str]:
        """The failing cases: silently wrong or raised outside the WfstateError tree; and any
        count that does not add up."""
        found: list[str] = []
        for kind, t in self.tallies.items():
            if t.violations:
                found.append(f"{kind}: {t.violations} failing cases, the first ones:")
                found.extend(f"  {example}" for example in t.examples)
            counted = sum(t.verdicts.values())
            if counted != t.bits + t.cuts:
                found.append(f"{kind}: {t.bits + t.cuts} cases, {counted} classified")
        return found


@contextmanager
def _quiet_checkpoint_warnings() -> Iterator[None]:
    """A bad checkpoint is logged as a warning at every open; thousands of cases would flood
    the output (the warning is not what is checked: ``stats()`` and ``verify`` are)."""
    logger = logging.getLogger("wfstate")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_corruption(*, exhaustive: bool, built: BuiltStore | None = None) -> CorruptionRun:
    """Damage every file of ``built`` (default: :func:`build_store`) in every way of the run
    (every bit and every cut, or the sample: :func:`sample_heads` and the strides) and
    classify each case."""
    started = time.monotonic()
    built = build_store() if built is None else built
    tallies = {kind: KindTally() for kind in KINDS}
    heads = sample_heads(built)
    with _quiet_checkpoint_warnings():
        for path in sorted(built.files):
            data = built.files[path]
            kind = built.kinds[path]
            tally = tallies[kind]
            tally.files += 1
            tally.bytes += len(data)
            clean = clean_end_cuts(data) if kind == KINDS[1] else set()
            name = os.path.basename(path)
            head = None if exhaustive else heads[path]
            for damage, label, damaged in damaged_copies(data, head):
                if damage == "bit":
                    tally.bits += 1
                else:
                    tally.cuts += 1
                verdict, why, messages = classify(built, {**built.files, path: damaged})
                tally.verdicts[verdict] += 1
                if verdict == "detected" and why.startswith("open: "):
                    tally.refused_at_open += 1
                if verdict == "detected" and any(name in m for m in messages):
                    tally.naming_the_file += 1
                if verdict == "detected" and "(differs: " in why:
                    tally.detected_differing += 1
                if damage == "cut" and len(damaged) in clean:
                    tally.clean_end_cuts += 1
                    tally.clean_end_cuts_detected += verdict == "detected"
                if verdict in ("silently wrong", "other exception"):
                    tally.violations += 1
                    if len(tally.examples) < EXAMPLES_KEPT:
                        tally.examples.append(f"{path} {label}: {verdict}: {why}")
    return CorruptionRun(exhaustive, tallies, time.monotonic() - started)


# -- docs/reliability.md ------------------------------------------------------------------------
TABLE_HEADER = (
    "| file kind | files | bytes | bits flipped | truncations | detected | of which naming the "
    "damaged file | of which open refused | of which a read differs, damage reported "
    "| recovered | silently wrong | clean cuts of the last segment (format §3.1) "
    "| of which detected | other exceptions |"
)


def table(run: CorruptionRun) -> str:
    """The run's figures as a Markdown table, one row per kind of file and a total."""
    rows = [TABLE_HEADER, "|" + "---|" * 14]
    rows.extend(_row(kind, t) for kind, t in run.tallies.items())
    rows.append(_row("**all**", run.total()))
    return "\n".join(rows)


def _row(kind: str, t: KindTally) -> str:
    v = t.verdicts
    return (
        f"| {kind} | {t.files} | {t.bytes} | {t.bits} | {t.cuts} | {v['detected']} "
        f"| {t.naming_the_file} | {t.refused_at_open} | {t.detected_differing} | {v['recovered']} "
        f"| {v['silently wrong']} | {t.clean_end_cuts} | {t.clean_end_cuts_detected} "
        f"| {v['other exception']} |"
    )


def reliability_section() -> str:
    """Run the exhaustive variant (every bit, every cut, every file) and return its section
    of docs/reliability.md; AssertionError naming the cases if any is silently wrong or raised
    outside the WfstateError tree."""
    built = build_store()
    run = run_corruption(exhaustive=True, built=built)
    violations = run.violations()
    if violations:
        raise AssertionError("store corruption cases failed:\n" + "\n".join(violations))
    total = run.total()
    rebooted = clean_cuts_without_hint(built)
    return (
        "## Corruption of a whole store, every bit and every byte\n\n"
        "A small store written on the simulated disk (two live log segments after a "
        "compaction, `START` with its anchor, a discarded segment a crash left behind, full and "
        "incremental checkpoints, workflow state files from transactions, an ended session's "
        "record file; everything acknowledged; `LOCK`'s durability hint as the writer left "
        "it) is damaged one file at a time, every bit flipped "
        "and every truncation offset, each on a fresh copy, then opened by the default recovery "
        "and read whole (every workflow, the index, every checkpoint's state, every state and "
        "session file, the sessions, `verify()`). *Detected*: an error of the `WfstateError` "
        "tree (a checkpoint `verify()` finds bad counts as one), or a read that differs while "
        "the store reported damage (log damage, a bad checkpoint); *recovered*: every read "
        "equals what was acknowledged; *silently wrong*: a read differs and nothing was "
        "reported. A cut of the last segment exactly at a record boundary reads as a log that "
        "was never longer (format §3.1); the durability hint, which names the last durable "
        "LSN, is what detects it (format §8.1). "
        f"{total.bits + total.cuts} cases in {run.seconds:.0f} s (`tests/storecorruption.py`; "
        "sampled in the default test run, exhaustive with `-m slow`).\n\n"
        + table(run)
        + "\n\nThe limit: the hint is never synced, so a reboot may take it. The same "
        f"{sum(rebooted.values())} clean cuts of the last segment on a disk without the hint: "
        + ", ".join(f"{n} {verdict}" for verdict, n in sorted(rebooted.items()))
        + " (docs/guarantees.md).\n"
    )
