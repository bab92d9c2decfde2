"""The main demo: a writer is killed mid-stream and nothing it acknowledged is lost.

A child process appends step outputs to a log under durability ``always`` and reports each
acknowledged LSN over a pipe; the parent kills it with SIGKILL at a random moment, appends the
kind of half-written garbage a power cut leaves at the end of a log, reopens the log, and checks
that every acknowledged record is there, byte for byte.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import msgspec

from wfstate.format import WAL_DIR
from wfstate.fs import OS_FS
from wfstate.wal import Log, list_segments


def _payload(lsn_hint: int) -> bytes:
    return msgspec.msgpack.encode(
        {"step": f"step-{lsn_hint}", "status": "completed", "output": f"result {lsn_hint} " * 20}
    )


def _child(wal: str) -> None:
    with Log.open(wal, durability="always", segment_size=64 * 1024) as log:
        i = 0
        while True:
            i += 1
            lsn = log.append(_payload(i))
            sys.stdout.write(f"{lsn}\n")
            sys.stdout.flush()


def run_demo(directory: str, *, records: int, seed: int | None) -> int:
    """Run the demo in ``directory``; returns 0 when every acknowledged record survived."""
    rng = random.Random(seed)
    wal = os.path.join(directory, WAL_DIR)
    kill_after = rng.randint(records // 2, records)
    print(f"store: {directory}")
    print(
        f"1. a writer process appends step outputs (durability=always); killed after ~{kill_after}"
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "wfstate.demo", "--child", wal],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acked: list[int] = []
    for line in child.stdout:
        acked.append(int(line))
        if len(acked) >= kill_after:
            break
    time.sleep(rng.random() / 200)  # let it get somewhere in the middle of the next append
    child.send_signal(signal.SIGKILL)
    child.wait()
    print(f"2. SIGKILL: the writer had {len(acked)} acknowledged appends (last LSN {acked[-1]})")

    last = list_segments(OS_FS, wal)[-1]
    torn = bytes(rng.getrandbits(8) for _ in range(rng.randint(40, 700)))
    fd = OS_FS.open_append(last.path)
    OS_FS.write(fd, torn)
    OS_FS.close(fd)
    print(
        f"3. simulating a power cut: {len(torn)} half-written bytes left at the end of {last.name}"
    )

    with Log.open(wal) as log:
        for damage in log.recovery:
            print(
                f"4. recovery: {damage.kind} at {os.path.basename(damage.path)} offset "
                f"{damage.offset}: {damage.length} bytes cut ({damage.reason}); kept beside it"
            )
        survived = {r.lsn: r.payload for r in log.read()}
    missing = [lsn for lsn in acked if lsn not in survived]
    wrong = [lsn for lsn in acked if lsn in survived and survived[lsn] != _payload(lsn)]
    print(
        f"5. reopened: {len(survived)} records in the log; "
        f"{len(acked) - len(missing) - len(wrong)} of {len(acked)} acknowledged records intact"
    )
    if missing or wrong:
        print(f"FAILED: missing {missing[:10]}, wrong {wrong[:10]}")
        return 1
    print("OK: every acknowledged record survived the kill and the torn write.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wfstate demo", description=__doc__)
    parser.add_argument("--dir", help="store directory (default: a new temporary directory)")
    parser.add_argument("--records", type=int, default=400, help="about how many appends")
    parser.add_argument("--seed", type=int, default=None, help="make the kill point repeatable")
    parser.add_argument("--child", metavar="WAL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    directory = args.dir or tempfile.mkdtemp(prefix="wfstate-demo-")
    return run_demo(directory, records=max(args.records, 2), seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
