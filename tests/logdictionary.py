"""Segment dictionaries (docs/format.md §2.1.1, §2.3) under test: payloads, inspection, figures.

What the dictionary tests share: the fixture's step-output records (the ~1 KB payloads P8 is
measured on), a small :class:`DictionaryTrigger` so that a test crosses a dictionary rotation
after a few dozen records, reading each segment's dictionary and each record's codec back with
the reader's own functions, and :func:`reliability_section`, the figures for
``docs/reliability.md``: space saved and append rate with and without dictionaries on fixture
records, and the crash exploration of a workload crossing a dictionary rotation.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections import Counter
from typing import Final

import msgspec

from fixtures.reference_states import big_store_batches
from wfstate.fs import OS_FS, FileSystem
from wfstate.mutations import Mutation, encode_mutations
from wfstate.wal import Compression, Log, LogScan, list_segments
from wfstate.wal.log import DictionaryTrigger
from wfstate.wal.segment import read_head, read_segment_header

SMALL_TRIGGER: Final = DictionaryTrigger(
    min_bytes=8 * 1024, min_samples=24, max_samples=1000, max_bytes=1 << 20, size=4096
)
"""Trains after ~30 fixture records (the default waits for 256 KiB)."""


def fixture_batches(count: int) -> list[list[Mutation]]:
    """``count`` step-output batches of the big store fixture (after its CreateWorkflow)."""
    return list(itertools.islice(big_store_batches(1, max(count, 1)), 1, 1 + count))


def fixture_payloads(count: int) -> list[bytes]:
    """The log payloads of :func:`fixture_batches` (what a store appends, ~1 KB each)."""
    return [encode_mutations(batch) for batch in fixture_batches(count)]


def json_bytes(count: int) -> int:
    """The same batches as JSON (``msgspec.json``, as P8's reference)."""
    return sum(len(msgspec.json.encode(batch)) for batch in fixture_batches(count))


def segment_dictionaries(wal: str, fs: FileSystem = OS_FS) -> list[bytes | None]:
    """Each segment's dictionary (None: it has none), in sequence order, from its header."""
    found: list[bytes | None] = []
    for seg in list_segments(fs, wal):
        found.append(read_segment_header(read_head(fs, seg), seg, None).dictionary)
    return found


def codecs_by_segment(wal: str, fs: FileSystem = OS_FS) -> dict[int, Counter[int]]:
    """Segment seq → how many of its records use each codec."""
    found: dict[int, Counter[int]] = {}
    for seg, _offset, header in LogScan(fs, wal).headers():
        found.setdefault(seg.seq, Counter())[header.codec] += 1
    return found


def append_all(
    wal: str, payloads: list[bytes], compression: Compression, *, segment_size: int
) -> tuple[float, int]:
    """Append ``payloads`` to a new log (durability ``none``); ``(seconds, stored bytes)``."""
    with Log.open(
        wal, durability="none", compression=compression, segment_size=segment_size
    ) as log:
        started = time.perf_counter()
        for payload in payloads:
            log.append(payload)
        elapsed = time.perf_counter() - started
        return elapsed, log.appended_bytes[1]


def space_and_speed(count: int) -> list[tuple[str, float, float, int]]:
    """Per setting: ``(name, % saved against JSON, appends/s, segments)`` for ``count``
    fixture records appended to a fresh log, each read back whole after a reopen."""
    payloads = fixture_payloads(count)
    reference = json_bytes(count)
    rows = []
    settings = [
        ("zstd, one record alone (dictionary=False)", Compression(dictionary=False)),
        ("zstd with segment dictionaries (default)", Compression()),
    ]
    for name, compression in settings:
        with tempfile.TemporaryDirectory() as tmp:
            wal = os.path.join(tmp, "wal")
            seconds, stored = append_all(wal, payloads, compression, segment_size=4 << 20)
            with Log.open(wal) as log:
                if [r.payload for r in log.read()] != payloads:
                    raise AssertionError(f"{name}: the records do not read back")
            segments = len(list_segments(OS_FS, wal))
        rows.append((name, 100 * (1 - stored / reference), count / seconds, segments))
    return rows


def reliability_section() -> str:
    """The ``docs/reliability.md`` section on segment dictionaries (runs the checks: a few
    seconds). ``AssertionError`` when a crash state violates a guarantee, a broken variant goes
    uncaught, or the records do not read back."""
    from tests.crashcheck import dictionary_crash_report  # noqa: PLC0415 (heavy, optional)

    rows = space_and_speed(5000)
    crash = dictionary_crash_report(thorough=True)
    lines = [
        "## Segment dictionaries (format version 3)",
        "",
        "Log records of the big store fixture (~1 KB step outputs) appended to a fresh log with "
        "and without segment dictionaries, read back whole after a reopen; then the crash "
        "simulator explores every crash point of a trace crossing a dictionary rotation "
        "(acknowledged records present, recovery idempotent) and checks that its broken "
        "variants are caught.",
        "",
        "| setting | records | space saved against JSON | appends/s (durability none) | segments |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, saved, rate, segments in rows:
        lines.append(f"| {name} | 5,000 | {saved:.1f} % | {rate:,.0f} | {segments} |")
    lines += [
        "",
        "| crash workload | crash states | crash points | violations |",
        "|---|---:|---:|---:|",
    ]
    for workload, states, points, violations in crash.workloads:
        lines.append(f"| {workload} | {states:,} | {points:,} | {violations} |")
    lines += ["", "| broken variant | caught in |", "|---|---:|"]
    for variant, caught, states in crash.broken:
        lines.append(f"| {variant} | {caught:,} of {states:,} states |")
    return "\n".join(lines) + "\n"
