"""The shadow file system: it behaves as the OS does for every operation of the seam, and never
changes the disk it reads (the two properties ``recover`` without ``--apply`` rests on)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wfstate.fs import OS_FS, FileSystem
from wfstate.shadowfs import ShadowFileSystem


def tree(root: Path) -> dict[str, str]:
    """Every file and directory below ``root``: its content digest, or ``dir``."""
    out: dict[str, str] = {}
    for directory, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(directory, d), root)] = "dir"
        for f in files:
            path = os.path.join(directory, f)
            out[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def seed_tree(root: Path) -> None:
    (root / "a").mkdir(parents=True)
    (root / "a" / "one").write_bytes(b"first file " * 50)
    (root / "a" / "two").write_bytes(b"")
    (root / "b").mkdir()
    (root / "b" / "three").write_bytes(bytes(range(256)) * 20)


FILES = ["a/one", "a/two", "b/three", "a/new", "b/new", "c/x"]
NAMES = [*FILES, "a"]  # a directory where a file is expected: the errors must match too
DIRS = ["a", "b", "c", "a/sub"]

op = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(NAMES), st.binary(max_size=300)),
    st.tuples(st.just("append"), st.sampled_from(NAMES), st.binary(max_size=300)),
    st.tuples(st.just("truncate"), st.sampled_from(NAMES), st.integers(0, 6000)),
    # the store never renames or unlinks a directory
    st.tuples(st.just("replace"), st.sampled_from(FILES), st.sampled_from(FILES)),
    st.tuples(st.just("unlink"), st.sampled_from(FILES), st.none()),
    st.tuples(st.just("mkdir"), st.sampled_from(DIRS), st.none()),
)


def run(fs: FileSystem, root: str, ops: list[tuple[str, str, object]]) -> list[str]:
    """Apply ``ops``; what each did (the result, or the error's errno), for comparison."""
    seen: list[str] = []
    for kind, name, arg in ops:
        path = os.path.join(root, name)
        try:
            if kind == "create":
                fd = fs.create_exclusive(path)
                assert isinstance(arg, bytes)
                fs.write(fd, arg)
                fs.fsync(fd)
                fs.close(fd)
            elif kind == "append":
                fd = fs.open_append(path)
                assert isinstance(arg, bytes)
                fs.write(fd, arg)
                fs.fdatasync(fd)
                fs.close(fd)
            elif kind == "truncate":
                fd = fs.open_append(path)
                assert isinstance(arg, int)
                fs.truncate(fd, arg)
                fs.close(fd)
            elif kind == "replace":
                assert isinstance(arg, str)
                fs.replace(path, os.path.join(root, arg))
            elif kind == "unlink":
                fs.unlink(path)
            else:
                fs.mkdir(path)
                fs.fsync_dir(path)
            seen.append("ok")
        except OSError as exc:
            seen.append(f"errno {exc.errno}")
    return seen


def view(fs: FileSystem, root: str) -> dict[str, object]:
    """Everything ``fs`` shows below ``root``: listings, contents, sizes, ranges."""
    out: dict[str, object] = {}
    stack = [root]
    while stack:
        directory = stack.pop()
        names = fs.listdir(directory)
        out[directory] = names
        for name in names:
            path = os.path.join(directory, name)
            if fs.is_dir(path):
                stack.append(path)
            else:
                data = fs.read_file(path)
                out[path] = (data, fs.file_size(path), fs.read_range(path, 7, 100), fs.exists(path))
    return out


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(op, max_size=25))
def test_the_shadow_behaves_as_the_os_and_leaves_the_disk_unchanged(
    tmp_path: Path, ops: list[tuple[str, str, object]]
) -> None:
    real, base = tmp_path / "real", tmp_path / "base"
    for d in (real, base):
        shutil.rmtree(d, ignore_errors=True)
        seed_tree(d)
    before = tree(base)
    shadow = ShadowFileSystem()
    assert run(shadow, str(base), ops) == run(OS_FS, str(real), ops)
    assert {k.replace(str(base), "R"): v for k, v in view(shadow, str(base)).items()} == {
        k.replace(str(real), "R"): v for k, v in view(OS_FS, str(real)).items()
    }
    assert tree(base) == before


def test_a_descriptor_follows_its_file_through_a_rename(tmp_path: Path) -> None:
    seed_tree(tmp_path)
    shadow = ShadowFileSystem()
    fd = shadow.open_append(str(tmp_path / "a" / "two"))
    shadow.replace(str(tmp_path / "a" / "two"), str(tmp_path / "b" / "moved"))
    shadow.write(fd, b"after the rename")
    shadow.close(fd)
    assert shadow.read_file(str(tmp_path / "b" / "moved")) == b"after the rename"
    assert not shadow.exists(str(tmp_path / "a" / "two"))
    assert (tmp_path / "a" / "two").read_bytes() == b""


def test_a_lock_held_by_another_holder_of_the_real_file_is_seen(tmp_path: Path) -> None:
    lock_path = str(tmp_path / "LOCK")
    Path(lock_path).write_bytes(b"")
    held = OS_FS.open_lock(lock_path)
    assert OS_FS.try_lock(held)
    shadow = ShadowFileSystem()
    mine = shadow.open_lock(lock_path)
    try:
        # flock locks belong to the open file description: a second one is refused
        assert not shadow.try_lock(mine)
        OS_FS.unlock(held)
        assert shadow.try_lock(mine)
        shadow.write_lock_data(mine, b"pid 1")
        assert shadow.read_lock_data(mine, 5) == b"pid 1"
        assert Path(lock_path).read_bytes() == b""  # lock data stays in memory
        shadow.unlock(mine)
    finally:
        shadow.close_lock(mine)
        OS_FS.close_lock(held)


def test_a_lock_file_the_disk_does_not_have_is_private_and_not_created(tmp_path: Path) -> None:
    shadow = ShadowFileSystem()
    lock = shadow.open_lock(str(tmp_path / "new.lock"))
    assert shadow.try_lock(lock)
    assert not shadow.try_lock(lock)
    shadow.unlock(lock)
    shadow.close_lock(lock)
    assert not (tmp_path / "new.lock").exists()


def test_a_bad_descriptor_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        ShadowFileSystem().write(3, b"x")
    assert info.value.errno == 9  # EBADF
