"""Collects the benchmark results of one run and renders the ratio table.

Timings on shared machines hold only as ratios measured side by side in one run
(BENCHMARKS.md), so the table puts each system beside the peers it is judged against.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

#: ``WFSTATE_BENCH_QUICK=1``: fewer rounds and commits (CI, smoke runs).
QUICK = os.environ.get("WFSTATE_BENCH_QUICK", "").strip() not in ("", "0")

#: Rows of the table, in order; systems with no result in this run are left out.
ROW_ORDER = ("floor", "floor_locked", "group_floor", "sqlite_full", "json_rewrite", "wfstate")

#: wfstate targets from BENCHMARKS.md, as ratios to the peers measured in the same run.
P1_TARGET = 1.25  # wfstate p50 <= 1.25 x floor
P2_VS_SQLITE = 3.0  # wfstate commits/s >= 3 x sqlite_full
P2_VS_GROUP_FLOOR = 0.8  # wfstate commits/s >= 0.8 x group_floor


@dataclass
class Results:
    p1_p50_s: dict[str, float] = field(default_factory=dict)
    p2_commits_per_s: dict[str, float] = field(default_factory=dict)
    data_dir: str = ""

    def empty(self) -> bool:
        return not (self.p1_p50_s or self.p2_commits_per_s)


RESULTS = Results()


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


def render(results: Results, *, quick: bool) -> list[str]:
    """The table as lines of text."""
    p1, p2 = results.p1_p50_s, results.p2_commits_per_s
    floor = p1.get("floor")
    sqlite = p2.get("sqlite_full")
    group = p2.get("group_floor")
    header = ("system", "P1 p50 us", "P1 /floor", "P2 commits/s", "P2 /sqlite", "P2 /group_floor")
    rows: list[tuple[str, ...]] = [header]
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
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        cells = [r[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    out = [line(rows[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows[1:]]
    out.append("")
    out += _targets(results)
    mode = "quick mode (WFSTATE_BENCH_QUICK=1)" if quick else "full mode"
    out.append(f"{mode}; machine: {machine_label(results.data_dir)}")
    return out


def _targets(results: Results) -> list[str]:
    p1, p2 = results.p1_p50_s, results.p2_commits_per_s
    checks: list[str] = []

    def check(label: str, value: float | None, base: float | None, bound: float, ge: bool) -> None:
        if value is None or base is None or base == 0:
            return
        r = value / base
        ok = r >= bound if ge else r <= bound
        sign = ">=" if ge else "<="
        checks.append(f"{label} {r:.3f}x (target {sign} {bound}x) {'ok' if ok else 'MISSED'}")

    check("P1 wfstate/floor", p1.get("wfstate"), p1.get("floor"), P1_TARGET, ge=False)
    w = p2.get("wfstate")
    check("P2 wfstate/sqlite", w, p2.get("sqlite_full"), P2_VS_SQLITE, ge=True)
    check("P2 wfstate/group_floor", w, p2.get("group_floor"), P2_VS_GROUP_FLOOR, ge=True)
    return ["wfstate targets (reported, not asserted): " + "; ".join(checks)] if checks else []
