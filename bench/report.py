"""Collects the benchmark results of one run and renders the ratio tables.

Timings on shared machines hold only as ratios measured side by side in one run
(BENCHMARKS.md), so the tables put each system beside the peers it is judged against: one for
the log workloads (P1, P2; a row per system), one for the store workloads (P3-P9, with P5, P5b,
P7 and P8 on two wfstate big stores: log only, and built with the default checkpoint policy; a
row per workload, a column per system). Targets are reported; :func:`seed_target_misses` is
what the CI gate (``bench/gate.py``) fails on. The seed targets of P5 and P7 are judged on the
default-policy store (what a user who changes no setting has), P8's on the log (every batch of
the big store, compressed as a log compresses by default); the log-only rows show the worst
case of a store whose application turned automatic checkpoints off, and are not gated.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

import msgspec

#: ``WFSTATE_BENCH_QUICK=1``: fewer rounds and commits (CI, smoke runs).
QUICK = os.environ.get("WFSTATE_BENCH_QUICK", "").strip() not in ("", "0")

#: Rows of the table, in order; systems with no result in this run are left out.
ROW_ORDER = ("floor", "floor_locked", "group_floor", "sqlite_full", "json_rewrite", "wfstate")

#: wfstate targets from BENCHMARKS.md, as ratios to the peers measured in the same run.
P1_TARGET = 1.25  # wfstate p50 <= 1.25 x floor
P2_VS_SQLITE = 3.0  # wfstate commits/s >= 3 x sqlite_full
P2_VS_GROUP_FLOOR = 0.8  # wfstate commits/s >= 0.8 x group_floor
P3_VS_SQLITE = 0.5  # wfstate save <= 0.5 x sqlite_full (single-row blob)
P4_VS_JSON = 1.0  # wfstate fresh-handle load <= 1.0 x json_rewrite
P5_VS_JSON = 1.0  # wfstate reopen + load all <= 1.0 x json_rewrite
P5B_MAX_MS = 50.0  # wfstate reopen + first load <= 50 ms
P6_FULL_MAX_MS = 10.0  # wfstate full checkpoint of the big state <= 10 ms
P6_INCREMENTAL_MAX_MS = 2.0  # wfstate incremental checkpoint after 10 changed steps <= 2 ms
P7_MAX_MB = 50.0  # wfstate RSS growth with the big store open < 50 MB

#: Seed targets from BENCHMARKS.md: absolute bounds on wfstate's own numbers (strict "<").
#: CI fails a quick run that misses one (``bench/gate.py``, on :func:`missed_seed_targets`).
P3_SEED_MS = 500.0
P4_SEED_MS = 200.0
P5_SEED_MS = 1000.0
P6_SEED_MS = 100.0  # the full checkpoint
P7_SEED_MB = 50.0


@dataclass(frozen=True)
class Bound:
    """A target: ``value < limit`` (``strict``) or ``value <= limit``; with ``higher`` (more is
    better: a throughput, a space saving) ``value > limit`` or ``value >= limit``.

    ``relative``: the value is wfstate's number divided by the row's peer's (a ratio);
    otherwise wfstate's own number in the row's unit.
    """

    limit: float
    strict: bool = False
    relative: bool = False
    higher: bool = False

    def describe(self, unit: str, peer: str | None) -> str:
        sign = (">" if self.higher else "<") + ("" if self.strict else "=")
        if self.relative:
            return f"{sign} {self.limit:.1f}x {peer}"
        return f"{sign} {self.limit:g} {unit}"

    def met(self, value: float) -> bool:
        if self.higher:
            return value > self.limit if self.strict else value >= self.limit
        return value < self.limit if self.strict else value <= self.limit

    def shortfall(self, value: float, unit: str) -> str:
        """How far ``value`` is on the wrong side of the limit: ``"+12.3 ms (1.02x the limit)"``;
        for a ratio (``relative``) only the second part."""
        times = value / self.limit if self.limit else float("inf")
        if self.relative:
            return f"({times:.2f}x the limit)"
        gap = abs(value - self.limit)
        return f"{'-' if self.higher else '+'}{gap:.1f} {unit} ({times:.2f}x the limit)"


@dataclass(frozen=True)
class StoreRow:
    """One workload of the store table: what is measured, its unit, peer, data and targets.

    ``data``: what the number was measured on, ``"big state"`` (1,000 steps, the same in quick
    and full mode) or ``"big store"`` (:attr:`Results.big_store_shape`), shown in the table.
    """

    key: str
    label: str
    unit: str
    peer: str | None  # wfstate / this peer is the ratio column
    seed: Bound | None = None  # BENCHMARKS.md seed target (absolute, on wfstate's number)
    target: Bound | None = None  # BENCHMARKS.md wfstate target
    data: str = "big state"


def _seeded(limit: float) -> Bound:
    return Bound(limit, strict=True)


#: P8: space saved (%) by wfstate's files against the same data as JSON: seed > 60 %, target
#: >= 70 %. P9: log bytes scanned per second by the check ``verify`` makes of the log.
P8_SEED_PCT = 60.0
P8_TARGET_PCT = 70.0
P9_TARGET_MB_S = 500.0

_P8_SEED = Bound(P8_SEED_PCT, strict=True, higher=True)
_P8_TARGET = Bound(P8_TARGET_PCT, higher=True)

#: The store workloads in table order. Times are medians; P7 sizes come from a fresh process.
STORE_ROWS: tuple[StoreRow, ...] = (
    StoreRow(
        "P3",
        "P3 save big state durably",
        "ms",
        "sqlite_full",
        seed=_seeded(P3_SEED_MS),
        target=Bound(P3_VS_SQLITE, relative=True),
    ),
    StoreRow(
        "P4",
        "P4 load big state, fresh handle",
        "ms",
        "json_rewrite",
        seed=_seeded(P4_SEED_MS),
        target=Bound(P4_VS_JSON, relative=True),
    ),
    StoreRow(
        "P5",
        "P5 reopen big store + load all, log only",
        "ms",
        "json_rewrite",
        target=Bound(P5_VS_JSON, relative=True),
        data="big store",
    ),
    StoreRow(
        "P5+ck",
        "P5 ... default checkpoint policy",
        "ms",
        "json_rewrite",
        seed=_seeded(P5_SEED_MS),
        target=Bound(P5_VS_JSON, relative=True),
        data="big store",
    ),
    StoreRow(
        "P5+crash",
        "P5 ... default policy, after a crash",
        "ms",
        "json_rewrite",
        target=Bound(P5_VS_JSON, relative=True),
        data="big store",
    ),
    StoreRow(
        "P5b",
        "P5b reopen big store + load first, log only",
        "ms",
        "json_rewrite",
        target=Bound(P5B_MAX_MS),
        data="big store",
    ),
    StoreRow(
        "P5b+ck",
        "P5b ... default checkpoint policy",
        "ms",
        "json_rewrite",
        target=Bound(P5B_MAX_MS),
        data="big store",
    ),
    StoreRow(
        "P5b+crash",
        "P5b ... default policy, after a crash",
        "ms",
        "json_rewrite",
        target=Bound(P5B_MAX_MS),
        data="big store",
    ),
    StoreRow(
        "P6",
        "P6 full checkpoint of big state",
        "ms",
        "json_rewrite",
        seed=_seeded(P6_SEED_MS),
        target=Bound(P6_FULL_MAX_MS),
    ),
    StoreRow(
        "P6 incr",
        "P6 incremental, 10 steps changed",
        "ms",
        "json_rewrite",
        target=Bound(P6_INCREMENTAL_MAX_MS),
    ),
    StoreRow(
        "P7",
        "P7 RSS growth, big store open, log only",
        "MB",
        "json_rewrite",
        target=Bound(P7_MAX_MB, strict=True),
        data="big store",
    ),
    StoreRow("P7+load", "P7 ... and first workflow loaded", "MB", None, data="big store"),
    StoreRow("P7 peak", "P7 peak RSS growth during open", "MB", None, data="big store"),
    StoreRow(
        "P7+ck",
        "P7 ... default checkpoint policy",
        "MB",
        "json_rewrite",
        seed=_seeded(P7_SEED_MB),
        target=Bound(P7_MAX_MB, strict=True),
        data="big store",
    ),
    StoreRow(
        "P7+ck+load",
        "P7 ... default policy, first workflow loaded",
        "MB",
        None,
        data="big store",
    ),
    StoreRow(
        "P8",
        "P8 space saved: log vs its batches as JSON",
        "%",
        None,
        seed=_P8_SEED,
        target=_P8_TARGET,
        data="big store",
    ),
    StoreRow(
        "P8+ck",
        "P8 ... default policy: all files vs the states as JSON",
        "%",
        None,
        data="big store",
    ),
    StoreRow("P8 codec", "P8 ... log codec alone (msgpack -> stored)", "%", None, data="big store"),
    StoreRow(
        "P8 MB", "P8 bytes on disk, log-only big store", "MB", "json_rewrite", data="big store"
    ),
    StoreRow(
        "P8+ck MB",
        "P8 bytes on disk, default-policy big store",
        "MB",
        "json_rewrite",
        data="big store",
    ),
    StoreRow(
        "P9",
        "P9 verify's log scan, MB/s of log bytes",
        "MB/s",
        "floor",
        target=Bound(P9_TARGET_MB_S, higher=True),
        data="big store",
    ),
    StoreRow(
        "P9 verify",
        "P9 ... whole `wfstate verify`, MB/s of log",
        "MB/s",
        "floor",
        data="big store",
    ),
)

#: Columns of the store table, in order.
STORE_SYSTEMS = ("floor", "sqlite_full", "json_rewrite", "wfstate")


#: The scaling curves (issue 8): how a cost grows with the size of what is stored.
#: curve -> (what one number is, the size's unit, the sizes of a full run).
SCALING_CURVES: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "commit": (
        "p50 ms of one durable commit of one step output into a workflow of N steps",
        "steps",
        (10, 100, 1_000, 10_000),
    ),
    "load": (
        "median ms to open a fresh handle and load a workflow of N steps",
        "steps",
        (10, 100, 1_000, 10_000),
    ),
    "recovery": (
        "median ms to reopen a store whose log holds N records until its first workflow is read",
        "records",
        (10_000, 100_000, 1_000_000),
    ),
}

#: Columns of the scaling tables, in order.
SCALING_SYSTEMS = ("sqlite_full", "json_rewrite", "wfstate")


@dataclass
class Results:
    p1_p50_s: dict[str, float] = field(default_factory=dict)
    p2_commits_per_s: dict[str, float] = field(default_factory=dict)
    #: Store workloads: row key (:data:`STORE_ROWS`) -> system -> value in the row's unit.
    store: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Scaling curves: curve (:data:`SCALING_CURVES`) -> size -> system -> ms.
    scaling: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    #: What the big store of P5-P9 was in this run: ``(workflows, steps per workflow)``.
    big_store_shape: tuple[int, int] | None = None
    big_store_label: str = ""
    data_dir: str = ""
    quick: bool = QUICK
    #: :func:`machine_label` of the run, set when the results are saved.
    machine: str = ""

    def record(self, key: str, system: str, value: float) -> None:
        """Record ``system``'s number for store row ``key``, in that row's unit."""
        if key not in {row.key for row in STORE_ROWS}:
            raise KeyError(f"no store row {key!r}")
        self.store.setdefault(key, {})[system] = value

    def record_scaling(self, curve: str, size: int, system: str, ms: float) -> None:
        if curve not in SCALING_CURVES:
            raise KeyError(f"no scaling curve {curve!r}")
        self.scaling.setdefault(curve, {}).setdefault(size, {})[system] = ms

    def empty(self) -> bool:
        return not (self.p1_p50_s or self.p2_commits_per_s or self.store or self.scaling)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @staticmethod
    def from_json(data: bytes | str) -> Results:
        return msgspec.json.decode(data, type=Results)


RESULTS = Results()

#: Where the results of a run are kept inside pytest-benchmark's ``--benchmark-json`` file.
JSON_KEY = "wfstate_results"


def load_results(benchmark_json: str) -> Results:
    """The :class:`Results` a run saved in its ``--benchmark-json`` file (``bench/conftest.py``)."""
    with open(benchmark_json, "rb") as f:
        document = msgspec.json.decode(f.read(), type=_RunFile)
    if document.wfstate_results is None:
        raise ValueError(f"{benchmark_json}: no {JSON_KEY!r} (not a run of bench/?)")
    return document.wfstate_results


class _RunFile(msgspec.Struct):
    """The part of a ``--benchmark-json`` file :func:`load_results` reads."""

    wfstate_results: Results | None = None


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _filesystem(path: str) -> str:
    """``fstype device`` of the mount holding ``path`` (Linux), or ``?``."""
    best, found = "", "?"
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                device, mount, fstype, *_ = line.split()
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, found = mount, f"{fstype} on {device}"
    except OSError:
        pass
    return found


def machine_label(data_dir: str) -> str:
    where = data_dir or os.getcwd()
    return (
        f"{platform.node()} | {platform.system()} {platform.release()} | "
        f"{os.cpu_count()} cpus | Python {platform.python_version()} | "
        f"data dir {_filesystem(os.path.realpath(where))}"
    )


#: A table: the header row first, then the rows, every cell text.
Table = list[tuple[str, ...]]


def text_table(rows: Table, left: int = 1) -> list[str]:
    """``rows`` (the first is the header) as aligned text: ``left`` columns left-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(r: tuple[str, ...]) -> str:
        cells = [
            v.ljust(w) if i < left else v.rjust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(rows[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]


def markdown_table(rows: Table, left: int = 1) -> list[str]:
    """``rows`` as a Markdown table: ``left`` columns left-aligned, the others right."""
    align = ["---" if i < left else "---:" for i in range(len(rows[0]))]

    def line(cells: tuple[str, ...] | list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(rows[0]), line(align)] + [line(r) for r in rows[1:]]


def machine_of(results: Results) -> str:
    return results.machine or machine_label(results.data_dir)


def render(results: Results, *, quick: bool) -> list[str]:
    """The tables as lines of text (what a run prints)."""
    out: list[str] = []
    if results.p1_p50_s or results.p2_commits_per_s:
        out += [*text_table(log_table(results)), "", *log_target_lines(results), ""]
    if results.store:
        out += [*text_table(store_table(results), left=3), *store_notes(results), ""]
    for curve in SCALING_CURVES:
        if curve in results.scaling:
            out += [f"scaling, {curve}: {SCALING_CURVES[curve][0]}"]
            out += [*text_table(scaling_table(results, curve)), ""]
    mode = "quick mode (WFSTATE_BENCH_QUICK=1)" if quick else "full mode"
    out.append(f"{mode}; machine: {machine_of(results)}")
    return out


def log_table(results: Results) -> Table:
    """P1 and P2: a row per system, its ratios to the peers it is judged against."""
    p1, p2 = results.p1_p50_s, results.p2_commits_per_s
    floor = p1.get("floor")
    sqlite = p2.get("sqlite_full")
    group = p2.get("group_floor")
    header = ("system", "P1 p50 us", "P1 /floor", "P2 commits/s", "P2 /sqlite", "P2 /group_floor")
    rows: Table = [header]
    for name in ROW_ORDER:
        if name not in p1 and name not in p2:
            continue
        a, c = p1.get(name), p2.get(name)
        rows.append(
            (
                name,
                _num(None if a is None else a * 1e6, ".0f"),
                _ratio(a, floor),
                _num(c, ".0f"),
                _ratio(c, sqlite),
                _ratio(c, group),
            )
        )
    return rows


def log_target_lines(results: Results) -> list[str]:
    """The P1/P2 wfstate targets, each ``ok`` or ``MISSED`` (none of them is a seed target)."""
    p1, p2 = results.p1_p50_s, results.p2_commits_per_s
    checks: list[str] = []

    def check(label: str, value: float | None, base: float | None, bound: float, ge: bool) -> None:
        if value is None or base is None or base == 0:
            return
        r = value / base
        ok = r >= bound if ge else r <= bound
        sign = ">=" if ge else "<="
        verdict = "ok" if ok else f"MISSED by {abs(r - bound):.2f}x"
        checks.append(f"{label} {r:.3f}x (target {sign} {bound}x) {verdict}")

    check("P1 wfstate/floor", p1.get("wfstate"), p1.get("floor"), P1_TARGET, ge=False)
    w = p2.get("wfstate")
    check("P2 wfstate/sqlite", w, p2.get("sqlite_full"), P2_VS_SQLITE, ge=True)
    check("P2 wfstate/group_floor", w, p2.get("group_floor"), P2_VS_GROUP_FLOOR, ge=True)
    return ["wfstate targets (reported, not asserted): " + "; ".join(checks)] if checks else []


def _store_ratio(row: StoreRow, values: dict[str, float]) -> float | None:
    wfstate = values.get("wfstate")
    base = values.get(row.peer) if row.peer is not None else None
    if wfstate is None or base is None or base == 0:
        return None
    return wfstate / base


def _judge(row: StoreRow, bound: Bound | None, values: dict[str, float]) -> str:
    """``"<= 0.5x sqlite_full: ok"``, ``"< 500 ms: MISSED +12.0 ms (1.02x the limit)"``;
    ``"-"`` without a bound; ``": ?"`` without numbers."""
    if bound is None:
        return "-"
    value = _store_ratio(row, values) if bound.relative else values.get("wfstate")
    if value is None:
        verdict = "?"
    elif bound.met(value):
        verdict = "ok"
    else:
        verdict = "MISSED " + bound.shortfall(value, row.unit)
    return f"{bound.describe(row.unit, row.peer)}: {verdict}"


def data_label(row: StoreRow, results: Results) -> str:
    """What ``row`` was measured on in this run (quick mode may use a smaller big store)."""
    if row.data == "big store" and results.big_store_shape is not None:
        workflows, steps = results.big_store_shape
        return f"big store {workflows}x{steps:,}"
    if row.data == "big state":
        return "big state 1,000 steps"
    return row.data


def store_table(results: Results) -> Table:
    """P3-P9: a row per workload, wfstate beside its peers, the ratio and both targets."""
    header = (
        "workload",
        "unit",
        "data",
        *STORE_SYSTEMS,
        "wfstate/peer",
        "seed target (wfstate)",
        "wfstate target",
    )
    rows: Table = [header]
    for row in STORE_ROWS:
        values = results.store.get(row.key)
        if not values:
            continue
        ratio = _store_ratio(row, values)
        rows.append(
            (
                row.label,
                row.unit,
                data_label(row, results),
                *(_num(values.get(system), ".1f") for system in STORE_SYSTEMS),
                "-" if ratio is None else f"{ratio:.2f}x {row.peer}",
                _judge(row, row.seed, values),
                _judge(row, row.target, values),
            )
        )
    return rows


def store_notes(results: Results) -> list[str]:
    """What the store table's rows mean, for the rows this run has."""
    out: list[str] = []
    misses = seed_target_misses(results)
    out.append("seed targets missed: " + ("; ".join(misses) if misses else "none"))
    if results.big_store_label:
        out.append(f"P5-P9 {results.big_store_label}")
    if any(row.key.endswith("+ck") and row.key in results.store for row in STORE_ROWS):
        out.append(
            "'default checkpoint policy' rows: wfstate on the big store built with the "
            "default CheckpointPolicy (automatic checkpoints every 1,000 batches of a "
            "workflow, a compaction every every_log_bytes logged, retention after it); "
            "'log only' rows: the same batches with automatic checkpoints off (MANUAL_ONLY), "
            "not gated; the peers' numbers are the same in both rows"
        )
    if any(row.key.endswith("+crash") and row.key in results.store for row in STORE_ROWS):
        out.append(
            "'after a crash' rows: the default-policy store copied before its close, as a "
            "crash leaves it: its clean close compacts the log (compact_on_close_bytes), "
            "this copy's reopen scans the log since the last automatic compaction; not gated"
        )
    if any(row.key.startswith("P6") and row.key in results.store for row in STORE_ROWS):
        out.append(
            "P6: wfstate LocalStore.checkpoint; the peers have no checkpoint: theirs is the "
            "snapshot they would write instead, the whole state saved durably (as in P3)"
        )
    if any(row.key.startswith("P8") and row.key in results.store for row in STORE_ROWS):
        out.append(
            "P8: % = space saved = 1 - bytes / the same data as JSON (msgspec.json): for the "
            "log-only store, its segment files vs its batches as JSON (what sqlite_full's "
            "mutation rows hold); default policy, all its files (the checkpoints retention "
            "keeps, with their history, + the log left) vs the final states as JSON "
            "(json_rewrite's files, whose own saving is 0 by definition); "
            "sqlite_full: its database file; codec alone: Log.appended_bytes (msgpack payload "
            "vs stored, framing excluded); default compression settings (zstd level 3, "
            "a dictionary per segment for records up to 4 KiB)"
        )
    if any(row.key.startswith("P9") and row.key in results.store for row in STORE_ROWS):
        out.append(
            "P9: MB/s of the log-only big store's segment bytes (hot page cache). wfstate: the "
            "log part of verify (wfstate.wal.LogScan in skip_corrupted mode: every record's "
            "chained checksum checked and its payload decompressed); whole verify: "
            "verification.verify_store (also opens the store and builds every workflow); "
            "floor: read the same files and xxh3-64 them; sqlite_full: PRAGMA integrity_check "
            "on its mutation database, MB/s of its own file"
        )
    return out


def scaling_table(results: Results, curve: str) -> Table:
    """One curve: a row per size, a column per system, wfstate's ratio to each peer."""
    _what, unit, _sizes = SCALING_CURVES[curve]
    points = results.scaling.get(curve, {})
    systems = [s for s in SCALING_SYSTEMS if any(s in v for v in points.values())]
    peers = [s for s in systems if s != "wfstate"]
    header = (unit, *(f"{s} ms" for s in systems), *(f"wfstate/{p}" for p in peers))
    rows: Table = [header]
    for size in sorted(points):
        values = points[size]
        rows.append(
            (
                f"{size:,}",
                *(_num(values.get(s), ".2f") for s in systems),
                *(_ratio(values.get("wfstate"), values.get(p)) for p in peers),
            )
        )
    return rows


#: The seeded rows a gated run must have measured (a gate does not pass on a workload skipped).
SEEDED_ROWS: tuple[str, ...] = tuple(row.key for row in STORE_ROWS if row.seed is not None)


def missed_seed_targets(results: Results) -> dict[str, str]:
    """The seed targets wfstate missed in ``results``: row key → the miss, with by how much
    (empty: every one measured was met). Rows not measured are not misses here:
    :func:`seed_target_gaps`."""
    misses: dict[str, str] = {}
    for row in STORE_ROWS:
        values = results.store.get(row.key, {})
        wfstate = values.get("wfstate")
        if row.seed is None or wfstate is None or row.seed.met(wfstate):
            continue
        misses[row.key] = (
            f"{row.key} {wfstate:.1f} {row.unit} at {data_label(row, results)} "
            f"(seed {row.seed.describe(row.unit, None)}, missed by "
            f"{row.seed.shortfall(wfstate, row.unit)})"
        )
    return misses


def seed_target_misses(results: Results) -> list[str]:
    """The misses of :func:`missed_seed_targets`, in the table's row order."""
    return list(missed_seed_targets(results).values())


def target_misses(results: Results) -> list[str]:
    """wfstate's own targets (BENCHMARKS.md's last column) missed in the store table, each
    with by how much; the P1/P2 ones are in :func:`log_target_lines`."""
    misses: list[str] = []
    for row in STORE_ROWS:
        values = results.store.get(row.key, {})
        if row.target is None:
            continue
        judged = _judge(row, row.target, values)
        if "MISSED" in judged:
            misses.append(f"{row.label} ({data_label(row, results)}): {judged}")
    return misses


def seed_target_gaps(results: Results) -> list[str]:
    """The seeded rows with no wfstate number in ``results`` (not run, or failed)."""
    return [key for key in SEEDED_ROWS if "wfstate" not in results.store.get(key, {})]
