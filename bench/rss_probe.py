"""P7: the RSS growth of opening the big store, for one system, in a process of its own.

``python -m bench.rss_probe SYSTEM ROOT WORKFLOWS PER_WORKFLOW`` (a :class:`BigStore`) prints
one JSON object (:class:`RssProbe`). Run as a fresh subprocess so that nothing the benchmark
process holds (other systems' states, pytest-benchmark, the reference data) counts.

"Before" is measured after every import the open needs, so imports are not counted. Then:

- ``wfstate``: ``LocalStore.open`` of the big store (``open``; policy ``MANUAL_ONLY``, so
  that closing it compacts nothing), then ``load`` of its first workflow (``first_load``),
  both kept referenced;
- ``json_rewrite``: every workflow's JSON file read and decoded, all kept in memory (``open``:
  a JSON-file store has nothing else to open);
- ``sqlite_full``: ``sqlite3.connect`` to the database holding the same mutations and one
  query of its schema (SQLite reads its file lazily; its page cache is bounded, 2 MB default).

Sizes are KiB from ``/proc/self/status`` (``VmRSS`` now, ``VmHWM`` peak, the peak reset just
before "before" through ``/proc/self/clear_refs`` where the kernel allows). Without
``/proc`` (not Linux) both fall back to ``ru_maxrss``, the peak.
"""

from __future__ import annotations

import gc
import os
import resource
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Final

import msgspec

from bench.big_store import BigStore
from bench.peers import JsonStateFiles
from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.model import WorkflowState

_STATUS: Final = "/proc/self/status"
_REPO_ROOT: Final = str(Path(__file__).resolve().parent.parent)


class RssProbe(msgspec.Struct, frozen=True, kw_only=True):
    """What one probe measured, in KiB; ``first_load_kib`` is None for the peers."""

    system: str
    before_kib: int
    open_kib: int
    first_load_kib: int | None
    peak_kib: int
    source: str  # "proc" or "ru_maxrss"

    @property
    def open_growth_kib(self) -> int:
        return self.open_kib - self.before_kib

    @property
    def first_load_growth_kib(self) -> int | None:
        return None if self.first_load_kib is None else self.first_load_kib - self.before_kib

    @property
    def peak_growth_kib(self) -> int:
        return self.peak_kib - self.before_kib


def _status_kib(key: str) -> int | None:
    try:
        with open(_STATUS, encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])  # "VmRSS:   12345 kB"
    except OSError:
        return None
    return None


def _ru_maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def _rss_kib() -> int:
    gc.collect()
    now = _status_kib("VmRSS")
    return _ru_maxrss_kib() if now is None else now


def _peak_kib() -> int:
    peak = _status_kib("VmHWM")
    return _ru_maxrss_kib() if peak is None else peak


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def probe(system: str, big: BigStore) -> RssProbe:
    """Measure ``system`` in this process (meant to be a fresh one)."""
    source = "proc" if _status_kib("VmRSS") is not None else "ru_maxrss"
    held: list[object] = []
    first_load: int | None = None
    gc.collect()
    _reset_peak()
    before = _rss_kib()
    if system == "wfstate":
        # no automatic work: a probe changes nothing (its close must not compact the log the
        # benchmarks after it read: P9 scans the log-only store's)
        store = LocalStore.open(
            big.directory("wfstate"), durability="always", checkpoints=MANUAL_ONLY
        )
        try:
            held.append(store)
            opened = _rss_kib()
            held.append(store.load(big.first_workflow))
            first_load = _rss_kib()
            peak = _peak_kib()
        finally:
            store.close()
    elif system == "json_rewrite":
        files = JsonStateFiles()
        files.open(big.directory("json_rewrite"))
        states: list[WorkflowState] = [files.load(w) for w in files.list_workflows()]
        held.append(states)
        opened = _rss_kib()
        peak = _peak_kib()
    elif system == "sqlite_full":
        conn = sqlite3.connect(big.sqlite_mutations_path)
        try:
            held.append(conn.execute("SELECT name FROM sqlite_master").fetchall())
            opened = _rss_kib()
            peak = _peak_kib()
        finally:
            conn.close()
    else:
        raise ValueError(f"unknown system {system!r}")
    return RssProbe(
        system=system,
        before_kib=before,
        open_kib=opened,
        first_load_kib=first_load,
        peak_kib=max(peak, opened, first_load or 0),
        source=source,
    )


def run_in_subprocess(system: str, big: BigStore, timeout_s: float = 1800) -> RssProbe:
    """Run :func:`probe` for ``system`` in a fresh Python process (this interpreter)."""
    args = [str(big.workflows), str(big.per_workflow)]
    env = {**os.environ, "PYTHONPATH": _REPO_ROOT}
    done = subprocess.run(
        [sys.executable, "-m", "bench.rss_probe", system, big.root, *args],
        cwd=_REPO_ROOT,
        env=env,
        capture_output=True,
        check=False,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace")
        raise RuntimeError(f"rss probe of {system} failed ({done.returncode}):\n{stderr}")
    return msgspec.json.decode(done.stdout, type=RssProbe)


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(f"usage: {argv[0]} SYSTEM ROOT WORKFLOWS PER_WORKFLOW", file=sys.stderr)
        return 2
    system, root = argv[1], argv[2]
    big = BigStore(root=root, workflows=int(argv[3]), per_workflow=int(argv[4]))
    sys.stdout.write(msgspec.json.encode(probe(system, big)).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
