"""The crash simulator double (tests/simfs.py) behaves like the OS and builds the crash states
DESIGN.md §3 allows: each test here would fail if the simulator were wrong in that respect."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.simfs import Fault, FaultOp, SimFileSystem, Write
from wfstate.fs import OS_FS, FileSystem, atomic_write, make_dirs

KINDS = {"prefix", "synced-only", "drop-one", "lost-entry", "torn"}


def kind(label: str) -> str:
    return label.split(":", 1)[0]


def states(fs: SimFileSystem, at: int | None = None) -> list[tuple[str, SimFileSystem]]:
    return list(fs.crash_states(fs.op_count if at is None else at))


def every_state(fs: SimFileSystem, start: int = 0) -> Iterator[tuple[int, str, SimFileSystem]]:
    for at in fs.crash_points():
        if at >= start:
            for label, state in fs.crash_states(at):
                yield at, label, state


def content(fs: FileSystem, path: str) -> bytes | None:
    return fs.read_file(path) if fs.exists(path) else None


def durable_store() -> SimFileSystem:
    """A simulator holding a durable empty directory /s."""
    fs = SimFileSystem()
    make_dirs(fs, "/s")
    return fs


def durable_file(fs: SimFileSystem, path: str, data: bytes) -> None:
    fd = fs.create_exclusive(path)
    fs.write(fd, data)
    fs.fsync(fd)
    fs.close(fd)
    fs.fsync_dir(os.path.dirname(path))


# ------------------------------------------------------------------------ OS-like behaviour


def _observe(call: Callable[[], object]) -> object:
    try:
        result = call()
    except OSError as e:
        return (type(e).__name__, e.errno)
    return result if isinstance(result, bytes | bool | list | type(None)) else "ok"


def _script(fs: FileSystem, root: str) -> list[object]:
    """A tour of every FileSystem operation and its errors; returns what it observed."""
    j = os.path.join
    obs: list[object] = []
    see = obs.append
    make_dirs(fs, j(root, "a", "b"))
    see(fs.is_dir(j(root, "a", "b")))

    fd = fs.create_exclusive(j(root, "f"))
    fs.write(fd, b"hello")
    fs.write(fd, memoryview(b" world"))
    fs.fsync(fd)
    fs.fdatasync(fd)
    fs.close(fd)
    see(fs.read_file(j(root, "f")))
    see(_observe(lambda: fs.create_exclusive(j(root, "f"))))
    see(_observe(lambda: fs.create_exclusive(j(root, "a"))))
    see(_observe(lambda: fs.create_exclusive(j(root, "missing", "x"))))
    see(_observe(lambda: fs.create_exclusive(j(root, "f", "x"))))

    # open_append writes at the end whatever the position; dup shares the open file.
    fd = fs.open_append(j(root, "f"))
    fs.write(fd, b"!")
    fd2 = fs.dup(fd)
    fs.write(fd2, b"?")
    fs.truncate(fd, 3)
    fs.write(fd, b"Z")
    fs.close(fd)
    fs.write(fd2, b"Y")
    fs.close(fd2)
    see(fs.read_file(j(root, "f")))
    see(fs.file_size(j(root, "f")))

    # create_exclusive writes at a position that ftruncate does not move.
    fd = fs.create_exclusive(j(root, "g"))
    fs.write(fd, b"abcdef")
    fs.truncate(fd, 2)
    fs.write(fd, b"X")
    fs.truncate(fd, 10)
    fd2 = fs.dup(fd)
    fs.write(fd2, b"12")
    fs.write(fd, b"34")
    fs.close(fd)
    fs.close(fd2)
    see(fs.read_file(j(root, "g")))
    fd = fs.create_exclusive(j(root, "a", "h"))
    fs.write(fd, b"")
    see(_observe(lambda: fs.truncate(fd, -1)))
    fs.close(fd)
    see(fs.read_file(j(root, "a", "h")))

    see(_observe(lambda: fs.read_file(j(root, "nope"))))
    see(_observe(lambda: fs.read_file(j(root, "a"))))
    see(_observe(lambda: fs.file_size(j(root, "nope"))))
    see(_observe(lambda: fs.listdir(j(root, "f"))))
    see(_observe(lambda: fs.listdir(j(root, "nope"))))
    see(_observe(lambda: fs.open_append(j(root, "nope"))))
    see(_observe(lambda: fs.open_append(j(root, "a"))))
    see(_observe(lambda: fs.mkdir(j(root, "a"))))
    see(_observe(lambda: fs.mkdir(j(root, "f"))))
    see(_observe(lambda: fs.mkdir(j(root, "nope", "x"))))
    see(_observe(lambda: fs.fsync_dir(j(root, "f"))))
    see(_observe(lambda: fs.fsync_dir(j(root, "nope"))))
    see(_observe(lambda: fs.unlink(j(root, "nope"))))
    see(_observe(lambda: fs.unlink(j(root, "a"))))
    for path in ("f", "a", "a/b", "nope", "f/x", "nope/x"):
        see((path, fs.exists(j(root, path)), fs.is_dir(j(root, path))))
    see(fs.exists(j(root, "a", "b", "..", "h")))

    # Renames: over an existing file, across directories, onto itself, and the errors.
    fs.replace(j(root, "g"), j(root, "f"))
    fs.replace(j(root, "f"), j(root, "a", "f2"))
    fs.replace(j(root, "a", "f2"), j(root, "a", "f2"))
    see(fs.read_file(j(root, "a", "f2")))
    see(_observe(lambda: fs.replace(j(root, "nope"), j(root, "x"))))
    see(_observe(lambda: fs.replace(j(root, "a", "f2"), j(root, "nope", "x"))))
    see(_observe(lambda: fs.replace(j(root, "a", "f2"), j(root, "a", "b"))))
    see(_observe(lambda: fs.replace(j(root, "a", "b"), j(root, "a", "f2"))))
    see(_observe(lambda: fs.replace(j(root, "a", "b"), j(root, "a", "b", "c"))))
    fs.mkdir(j(root, "full"))
    fs.mkdir(j(root, "full", "x"))
    fs.mkdir(j(root, "empty"))
    see(_observe(lambda: fs.replace(j(root, "a", "b"), j(root, "full"))))
    fs.replace(j(root, "a", "b"), j(root, "empty"))
    fs.replace(j(root, "full"), j(root, "a", "moved"))
    see(fs.listdir(j(root, "a", "moved")))

    for name in ("b", "A", "a0", "_", ".hidden", "~"):
        fs.mkdir(j(root, "a", "moved", name))
    see(fs.listdir(j(root, "a", "moved")))
    fs.unlink(j(root, "a", "f2"))
    fs.fsync_dir(j(root, "a"))
    see(fs.listdir(j(root, "a")))
    atomic_write(fs, j(root, "aw"), b"one")
    atomic_write(fs, j(root, "aw"), b"two!")
    see(fs.read_file(j(root, "aw")))
    see(fs.listdir(root))
    return obs


def test_behaves_like_the_os(tmp_path: Path) -> None:
    expected = _script(OS_FS, str(tmp_path / "store"))
    sim = SimFileSystem()
    assert _script(sim, "/store") == expected


def test_closed_descriptor_is_ebadf_and_relative_paths_are_refused() -> None:
    fs = durable_store()
    fd = fs.create_exclusive("/s/f")
    fs.close(fd)
    for call in (
        lambda: fs.write(fd, b"x"),
        lambda: fs.fsync(fd),
        lambda: fs.close(fd),
        lambda: fs.dup(fd),
    ):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EBADF
    with pytest.raises(ValueError):
        fs.exists("s/f")


def test_root_and_make_dirs() -> None:
    fs = SimFileSystem()
    assert fs.is_dir("/") and fs.listdir("/") == []
    assert fs.crash_points() == range(1)
    make_dirs(fs, "//store/./x/../y/")
    assert fs.listdir("/store") == ["y"]
    with pytest.raises(FileExistsError):
        fs.mkdir("/")
    # make_dirs syncs each parent: the tree is on every crash state of its last op.
    for _label, state in states(fs):
        assert state.is_dir("/store/y")


# ------------------------------------------------------------------------ crash states


def test_prefix_state_is_the_live_content_after_every_op() -> None:
    """A process crash after op N leaves exactly what the file system showed after op N."""
    fs = durable_store()
    rng = random.Random(7)
    seen = {fs.op_count: fs.snapshot()}
    files = ["/s/a", "/s/b", "/s/d/c"]
    fs.mkdir("/s/d")
    seen[fs.op_count] = fs.snapshot()
    for step in range(120):
        path = rng.choice(files)
        action = rng.randrange(7)
        if not fs.exists(path):
            fs.close(fs.create_exclusive(path))
        elif action == 0:
            atomic_write(fs, path, rng.randbytes(rng.randrange(1, 3000)))
        elif action == 1:
            fs.replace(path, rng.choice(files))
        elif action == 2:
            fs.unlink(path)
        elif action == 3:
            fs.fsync_dir(os.path.dirname(path))
        else:
            fd = fs.open_append(path)
            fs.write(fd, bytes([step]) * rng.randrange(1, 1500))
            if action == 4:
                fs.fdatasync(fd)
            if action == 5:
                fs.truncate(fd, rng.randrange(fs.file_size(path) + 1))
            fs.close(fd)
        seen[fs.op_count] = fs.snapshot()
    for at in fs.crash_points():
        label, state = next(fs.crash_states(at))
        assert label == "prefix"
        if at in seen:
            assert state.snapshot() == seen[at], at


def test_unsynced_write_is_in_prefix_and_missing_from_some_state() -> None:
    fs = durable_store()
    durable_file(fs, "/s/f", b"head")
    fd = fs.open_append("/s/f")
    fs.write(fd, b"x" * 100)
    i = fs.op_count - 1
    assert isinstance(fs.trace[i], Write)
    by_label = {label: state.read_file("/s/f") for label, state in states(fs)}
    assert by_label["prefix"] == b"head" + b"x" * 100
    assert by_label["synced-only"] == b"head"
    assert by_label[f"torn:{i}:zeros"] == b"head" + bytes(100)
    # drop-one:i is the same disk as synced-only, so it is not yielded again.
    assert set(by_label) == {"prefix", "synced-only", f"torn:{i}:zeros"}


def test_synced_write_is_in_every_later_state() -> None:
    fs = durable_store()
    fd = fs.create_exclusive("/s/f")
    fs.fsync_dir("/s")
    fs.write(fd, b"acked" * 300)
    fs.fdatasync(fd)
    acked_at = fs.op_count
    fs.write(fd, b"later" * 300)  # pending, may be lost or torn
    other = fs.create_exclusive("/s/g")
    fs.write(other, b"g" * 2000)
    fs.unlink("/s/f")  # pending too: the file may or may not be there
    n = 0
    for at, label, state in every_state(fs, start=acked_at):
        data = content(state, "/s/f")
        if at < fs.op_count:
            assert data is not None, (at, label)
        if data is not None:
            n += 1
            assert data.startswith(b"acked" * 300), (at, label)
    assert n > 10
    assert any(content(s, "/s/f") is None for _l, s in states(fs))


def test_create_without_dir_fsync_is_missing_in_some_state() -> None:
    fs = durable_store()
    fd = fs.create_exclusive("/s/f")
    create_f = fs.op_count - 1
    fs.write(fd, b"data")
    fs.fsync(fd)
    fs.close(fs.create_exclusive("/s/g"))
    got = {label: (content(s, "/s/f"), s.exists("/s/g")) for label, s in states(fs)}
    assert got["prefix"] == (b"data", True)
    assert got["synced-only"] == (None, False)
    assert got[f"lost-entry:{create_f}"] == (None, True)
    assert got[f"lost-entry:{create_f + 3}"] == (b"data", False)
    fs.fsync_dir("/s")
    assert [content(s, "/s/f") for _l, s in states(fs)] == [b"data"]


def test_mkdir_without_dir_fsync_loses_the_directory_and_what_is_in_it() -> None:
    fs = durable_store()
    fs.mkdir("/s/d")
    durable_file(fs, "/s/d/f", b"inside")  # synced in /s/d, but /s/d itself is not durable
    got = [state.exists("/s/d/f") for _l, state in states(fs)]
    assert True in got and False in got
    fs.fsync_dir("/s")
    assert all(state.read_file("/s/d/f") == b"inside" for _l, state in states(fs))


def test_rename_without_dir_fsync_can_come_back_as_the_old_file() -> None:
    fs = durable_store()
    atomic_write(fs, "/s/f", b"old")
    durable_file(fs, "/s/new.tmp", b"new")
    fs.fsync_dir("/s")
    fs.replace("/s/new.tmp", "/s/f")
    got = {label: (content(s, "/s/f"), content(s, "/s/new.tmp")) for label, s in states(fs)}
    assert got["prefix"] == (b"new", None)
    assert (b"old", b"new") in got.values()
    assert [kind(label) for label in got] == ["prefix", "synced-only"]
    fs.fsync_dir("/s")
    assert [(content(s, "/s/f"), s.exists("/s/new.tmp")) for _l, s in states(fs)] == [
        (b"new", False)
    ]


def test_rename_across_directories_needs_both_directories_synced() -> None:
    fs = durable_store()
    make_dirs(fs, "/s/a")
    make_dirs(fs, "/s/b")
    durable_file(fs, "/s/a/x", b"x")
    fs.replace("/s/a/x", "/s/b/x")
    fs.fsync_dir("/s/b")
    places = {(s.exists("/s/a/x"), s.exists("/s/b/x")) for _l, s in states(fs)}
    assert places == {(False, True), (True, False)}
    fs.fsync_dir("/s/a")
    places = {(s.exists("/s/a/x"), s.exists("/s/b/x")) for _l, s in states(fs)}
    assert places == {(False, True)}


def test_unlink_without_dir_fsync_can_be_undone() -> None:
    fs = durable_store()
    durable_file(fs, "/s/f", b"f")
    fs.unlink("/s/f")
    assert {content(s, "/s/f") for _l, s in states(fs)} == {None, b"f"}


def test_a_later_rename_does_not_remove_a_name_that_a_lost_rename_left_to_another_file() -> None:
    fs = durable_store()
    durable_file(fs, "/s/a", b"old")
    durable_file(fs, "/s/tmp", b"new")
    fs.replace("/s/tmp", "/s/a")
    lost = fs.op_count - 1
    fs.replace("/s/a", "/s/b")
    got = {label: s.snapshot() for label, s in states(fs)}
    assert got[f"lost-entry:{lost}"] == {
        "/": None,
        "/s": None,
        "/s/a": b"old",
        "/s/b": b"new",
        "/s/tmp": b"new",  # a hard link: both names of the one file
    }


def test_writes_to_a_file_without_a_durable_entry_are_invisible() -> None:
    fs = durable_store()
    fd = fs.create_exclusive("/s/f")
    fs.write(fd, b"1" * 1000)
    fs.fsync(fd)
    fs.write(fd, b"2" * 1000)
    for label, state in states(fs):
        assert state.listdir("/s") in (["f"], []), label
    assert any(state.listdir("/s") == [] for _l, state in states(fs))


# ------------------------------------------------------------------------ atomic_write


@pytest.mark.parametrize("size", [0, 3, 700, 9000])
def test_atomic_write_leaves_old_or_new_whole_after_every_op(size: int) -> None:
    fs = durable_store()
    old = b"old-content" * 50
    atomic_write(fs, "/s/f", old)
    start = fs.op_count
    new = bytes(random.Random(size).randrange(1, 256) for _ in range(size))
    atomic_write(fs, "/s/f", new)
    counts = {k: 0 for k in KINDS}
    for at, label, state in every_state(fs, start=start):
        counts[kind(label)] += 1
        assert content(state, "/s/f") in (old, new), (at, label)
        if at == fs.op_count:
            assert content(state, "/s/f") == new, label
    assert counts["prefix"] == fs.op_count - start + 1
    assert counts["lost-entry"] > 0
    assert any(content(s, "/s/f") == old for _l, s in states(fs, fs.op_count - 1))


def test_atomic_write_of_a_new_file_leaves_nothing_or_the_whole_file() -> None:
    fs = durable_store()
    atomic_write(fs, "/s/f", b"n" * 5000)
    got = {content(s, "/s/f") for _at, _l, s in every_state(fs)}
    assert got == {None, b"n" * 5000}


def _broken_atomic_write(fs: FileSystem, path: str, data: bytes) -> None:
    """atomic_write without the fsync of the temp file: the bug ext4 users met in 2009."""
    tmp = path + ".tmp"
    fd = fs.create_exclusive(tmp)
    fs.write(fd, data)
    fs.close(fd)
    fs.replace(tmp, path)
    fs.fsync_dir(os.path.dirname(path))


def test_a_broken_atomic_write_is_caught() -> None:
    fs = durable_store()
    old, new = b"o" * 3000, bytes(range(256)) * 12
    atomic_write(fs, "/s/f", old)
    _broken_atomic_write(fs, "/s/f", new)
    bad = {
        (label, content(s, "/s/f"))
        for _at, label, s in every_state(fs)
        if content(s, "/s/f") not in (None, old, new)
    }
    contents = {c for _l, c in bad}
    assert b"" in contents  # the rename persisted, the data did not
    assert bytes(len(new)) in contents  # grown, all zeros
    assert any(c is not None and 0 < len(c) < len(new) for c in contents)  # partial
    assert {kind(label) for label, _c in bad} >= {"synced-only", "torn"}


# ------------------------------------------------------------------------ torn writes


def _torn_contents(fs: SimFileSystem, path: str) -> dict[str, bytes]:
    return {
        label.split(":", 2)[2]: s.read_file(path)
        for label, s in states(fs)
        if kind(label) == "torn"
    }


def test_torn_write_variants_split_at_512_byte_file_offsets() -> None:
    fs = durable_store()
    head = b"H" * 100
    durable_file(fs, "/s/f", head)
    data = bytes(random.Random(1).randrange(1, 256) for _ in range(3000))
    fd = fs.open_append("/s/f")
    fs.write(fd, data)  # file bytes 100..3100: 512-byte pieces end at 512, 1024, ..., 3072
    torn = _torn_contents(fs, "/s/f")
    assert set(torn) == {"zeros", "512:keep3-zeros", "512:short1", "512:garbage3", "512:hole3"}
    new = head + data
    assert torn["zeros"] == head + bytes(3000)
    assert torn["512:keep3-zeros"] == new[:1536] + bytes(3100 - 1536)
    assert torn["512:short1"] == new[:512]
    assert torn["512:hole3"] == new[:1536] + bytes(512) + new[2048:]
    garbage = torn["512:garbage3"]
    assert len(garbage) == 3100 and garbage[:1536] == new[:1536] and garbage[2048:] == new[2048:]
    assert garbage[1536:2048] not in (new[1536:2048], bytes(512))


def test_torn_write_over_several_pages_loses_the_last_page() -> None:
    fs = durable_store()
    durable_file(fs, "/s/f", b"")
    fd = fs.open_append("/s/f")
    data = b"p" * 10000
    fs.write(fd, data)
    torn = _torn_contents(fs, "/s/f")
    assert torn["4096:short2"] == data[:8192]
    assert len(torn) <= 6


def test_a_write_inside_one_sector_only_tears_to_zeros() -> None:
    fs = durable_store()
    durable_file(fs, "/s/f", b"")
    fd = fs.open_append("/s/f")
    fs.write(fd, b"small")
    assert _torn_contents(fs, "/s/f") == {"zeros": bytes(5)}


def test_torn_overwrite_keeps_old_bytes_where_nothing_landed() -> None:
    fs = durable_store()
    at_zero = fs.create_exclusive("/s/f")  # position 0
    fs.fsync_dir("/s")
    appender = fs.open_append("/s/f")
    fs.write(appender, b"A" * 1024)
    fs.fsync(appender)
    fs.write(at_zero, b"B" * 1024)  # pending overwrite of bytes 0..1024
    got = {label: s.read_file("/s/f") for label, s in states(fs)}
    assert got["prefix"] == b"B" * 1024
    assert got["synced-only"] == b"A" * 1024
    torn = {label.split(":", 2)[2]: c for label, c in got.items() if kind(label) == "torn"}
    # "zeros" equals synced-only and "short1" equals "keep1-zeros": not yielded again.
    assert set(torn) == {"512:keep1-zeros", "512:garbage0", "512:hole0"}
    assert torn["512:keep1-zeros"] == b"B" * 512 + b"A" * 512
    assert torn["512:hole0"] == b"A" * 512 + b"B" * 512
    assert torn["512:garbage0"][512:] == b"B" * 512


def test_torn_garbage_is_deterministic_per_seed() -> None:
    def garbage(seed: int) -> bytes:
        fs = SimFileSystem(seed=seed)
        make_dirs(fs, "/s")
        durable_file(fs, "/s/f", b"")
        fd = fs.open_append("/s/f")
        fs.write(fd, b"\x01" * 2048)
        return _torn_contents(fs, "/s/f")["512:garbage1"]

    assert garbage(1) == garbage(1)
    assert garbage(1) != garbage(2)


def test_torn_variants_are_bounded_per_write() -> None:
    fs = durable_store()
    durable_file(fs, "/s/f", b"")
    fd = fs.open_append("/s/f")
    for size in (1, 511, 513, 4096, 4097, 20000, 100000):
        fs.write(fd, b"w" * size)
    per_write: dict[str, int] = {}
    for label, _s in states(fs):
        if kind(label) == "torn":
            index = label.split(":")[1]
            per_write[index] = per_write.get(index, 0) + 1
    assert per_write and max(per_write.values()) <= 6


# ------------------------------------------------------------------------ dedup and labels


def test_identical_disks_are_yielded_once() -> None:
    fs = durable_store()
    durable_file(fs, "/s/f", b"")
    fd = fs.open_append("/s/f")
    fs.write(fd, bytes(1000))  # zeros: torn "zeros" and "hole" equal the prefix
    labels = [label for label, _s in states(fs)]
    assert "prefix" in labels
    assert not any(label.endswith((":zeros", "hole0")) for label in labels)
    fs.fsync(fd)
    assert [label for label, _s in states(fs)] == ["prefix"]


def test_no_two_states_of_one_crash_point_are_equal_and_labels_name_known_kinds() -> None:
    fs = durable_store()
    atomic_write(fs, "/s/f", b"1" * 2000)
    fd = fs.create_exclusive("/s/log")
    fs.write(fd, b"a" * 700)
    fs.write(fd, b"b" * 700)
    fs.replace("/s/f", "/s/g")
    fs.mkdir("/s/d")
    fs.fdatasync(fd)
    fs.write(fd, b"c" * 5000)
    found: set[str] = set()
    for at in fs.crash_points():
        snaps = []
        for label, state in fs.crash_states(at):
            found.add(kind(label))
            assert kind(label) in KINDS
            snaps.append(sorted(state.snapshot().items()))
        assert len(snaps) == len({repr(s) for s in snaps}), at
    assert found == KINDS


def test_crash_state_is_a_fresh_durable_disk() -> None:
    fs = durable_store()
    fd = fs.create_exclusive("/s/f")
    fs.write(fd, b"pending")
    (label, state), *_ = states(fs)
    assert label == "prefix"
    assert state.op_count == 0 and state.trace == ()
    assert [lbl for lbl, _s in state.crash_states(0)] == ["prefix"]
    with pytest.raises(OSError) as info:
        state.write(fd, b"x")  # the parent's descriptors do not exist there
    assert info.value.errno == errno.EBADF
    # It supports every operation again, and crash states of its own.
    fd = state.open_append("/s/f")
    state.write(fd, b"+more")
    assert {s.read_file("/s/f") for _l, s in state.crash_states(state.op_count)} >= {
        b"pending",
        b"pending+more",
    }
    atomic_write(state, "/s/f", b"replaced")
    assert state.read_file("/s/f") == b"replaced"
    assert fs.read_file("/s/f") == b"pending"  # the parent is unaffected


def test_crash_states_rejects_points_outside_the_trace() -> None:
    fs = durable_store()
    with pytest.raises(ValueError):
        fs.crash_states(fs.op_count + 1)
    with pytest.raises(ValueError):
        fs.crash_states(-1)


# ------------------------------------------------------------------------ fault injection


def test_inject_fails_the_nth_call_of_that_kind_only() -> None:
    fs = durable_store()
    fd = fs.create_exclusive("/s/f")
    fs.inject("write", 2)
    fs.write(fd, b"1")
    before = fs.op_count
    with pytest.raises(OSError) as info:
        fs.write(fd, b"2")
    assert info.value.errno == errno.EIO
    assert fs.op_count == before and fs.read_file("/s/f") == b"1"  # wrote nothing
    fs.write(fd, b"3")  # a one-shot fault
    fs.fsync(fd)  # other kinds are not counted
    assert fs.read_file("/s/f") == b"13"


def test_persistent_fault_fails_every_later_call_with_its_errno() -> None:
    fs = SimFileSystem(faults=[Fault("create", 2, persistent=True, errno=errno.ENOSPC)])
    make_dirs(fs, "/s")
    fs.close(fs.create_exclusive("/s/a"))
    for name in ("b", "c", "d"):
        with pytest.raises(OSError) as info:
            fs.create_exclusive(f"/s/{name}")
        assert info.value.errno == errno.ENOSPC
    assert fs.listdir("/s") == ["a"]
    with pytest.raises(ValueError):
        Fault("write", 0)


@pytest.mark.parametrize("op", ["replace", "unlink", "mkdir", "truncate"])
def test_failed_entry_or_truncate_op_changes_nothing(op: FaultOp) -> None:
    fs = durable_store()
    durable_file(fs, "/s/f", b"data")
    fd = fs.open_append("/s/f")
    before = (fs.snapshot(), fs.op_count)
    calls: dict[str, Callable[[], None]] = {
        "replace": lambda: fs.replace("/s/f", "/s/g"),
        "unlink": lambda: fs.unlink("/s/f"),
        "mkdir": lambda: fs.mkdir("/s/d"),
        "truncate": lambda: fs.truncate(fd, 0),
    }
    fs.inject(op, 1)
    with pytest.raises(OSError):
        calls[op]()
    assert (fs.snapshot(), fs.op_count) == before


def test_failed_fsync_persists_nothing_even_after_a_later_successful_fsync() -> None:
    fs = durable_store()
    durable_file(fs, "/s/f", b"")
    fd = fs.open_append("/s/f")
    fs.write(fd, b"lost?" * 200)
    fs.inject("fdatasync", 1)
    with pytest.raises(OSError):
        fs.fdatasync(fd)
    fs.write(fd, b"after" * 200)
    fs.fsync(fd)  # succeeds, like Linux after a writeback error was reported once
    got = {label: s.read_file("/s/f") for label, s in states(fs)}
    assert got["prefix"] == b"lost?" * 200 + b"after" * 200
    assert got["synced-only"] == bytes(1000) + b"after" * 200
    assert all(c.endswith(b"after" * 200) for c in got.values())


def test_failed_fsync_dir_leaves_the_entry_pending_for_good() -> None:
    fs = durable_store()
    durable_file(fs, "/s/f", b"x")
    fs.replace("/s/f", "/s/g")
    fs.inject("fsync_dir", 1)
    with pytest.raises(OSError):
        fs.fsync_dir("/s")
    fs.fsync_dir("/s")
    assert {(s.exists("/s/f"), s.exists("/s/g")) for _l, s in states(fs)} == {
        (False, True),
        (True, False),
    }
