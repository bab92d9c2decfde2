"""Only ``wfstate/fs.py`` touches the file system: every other module goes through the seam, so
the crash simulator sees every operation (DESIGN.md §2, §10)."""

from __future__ import annotations

import ast
from pathlib import Path

import wfstate

PACKAGE = Path(wfstate.__file__).parent
SEAM = PACKAGE / "fs.py"

OS_CALLS = {
    "write", "pwrite", "writev", "read", "pread", "open", "fsync", "fdatasync", "sync",
    "replace", "rename", "renames", "unlink", "remove", "rmdir", "removedirs", "mkdir",
    "makedirs", "truncate", "ftruncate", "link", "symlink", "dup", "dup2", "close", "lseek",
}  # fmt: skip
PATH_METHODS = {
    "write_bytes", "write_text", "read_bytes", "read_text", "open", "unlink", "rename",
    "replace", "touch", "mkdir", "rmdir",
}  # fmt: skip
MODULES = {"shutil", "io", "tempfile", "mmap", "sqlite3"}


def raw_io_calls(source: str) -> list[str]:
    """Every direct file-system call in ``source``: ``os.X`` for X in OS_CALLS, builtin
    ``open``, pathlib write/read/rename-style methods, and imports of shutil/io/tempfile."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                found.append(f"line {node.lineno}: open()")
            elif isinstance(func, ast.Attribute):
                owner = func.value
                if isinstance(owner, ast.Name) and owner.id == "os" and func.attr in OS_CALLS:
                    found.append(f"line {node.lineno}: os.{func.attr}()")
                elif func.attr in PATH_METHODS and not (
                    # the seam itself, and class constructors such as Log.open(...)
                    (isinstance(owner, ast.Name) and (owner.id == "fs" or owner.id[:1].isupper()))
                    # a FileSystem held as an attribute (self._fs.unlink(...))
                    or (isinstance(owner, ast.Attribute) and owner.attr in {"fs", "_fs"})
                    # str.replace(a, b) and msgspec.structs.replace(obj, field=...) are not
                    # Path.replace(target) / Path.rename(target)
                    or (
                        func.attr in {"replace", "rename"}
                        and (len(node.args) != 1 or bool(node.keywords))
                    )
                ):
                    found.append(f"line {node.lineno}: .{func.attr}()")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for name in [*names, module]:
                if name is not None and name.split(".")[0] in MODULES:
                    found.append(f"line {node.lineno}: import {name}")
                if module == "os" and isinstance(node, ast.ImportFrom):
                    for alias in node.names:
                        if alias.name in OS_CALLS:
                            found.append(f"line {node.lineno}: from os import {alias.name}")
    return found


# Modules allowed to start processes or make temp dirs for the operator (never store files).
EXEMPT = {PACKAGE / "demo.py": {"import tempfile"}}


def test_no_module_but_the_seam_does_raw_file_io() -> None:
    offenders: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == SEAM:
            continue
        allowed = EXEMPT.get(path, set())
        calls = [c for c in raw_io_calls(path.read_text()) if c.split(": ", 1)[1] not in allowed]
        if calls:
            offenders[str(path.relative_to(PACKAGE))] = calls
    assert offenders == {}


def test_the_checker_sees_raw_io() -> None:
    bad = """
import os, shutil
from os import fsync
def f(p, fd):
    os.fsync(fd)
    os.replace(p, p + ".x")
    with open(p, "wb") as fh:
        fh.write(b"x")
    p.write_bytes(b"x")
    p.rename(q)
"""
    calls = raw_io_calls(bad)
    assert len(calls) == 7, calls
    harmless = "def f(s, st):\n    s.replace('a', 'b')\n    structs.replace(st, x=1)\n"
    assert raw_io_calls(harmless) == []
    assert raw_io_calls("def f(fs, fd):\n    fs.write(fd, b'x')\n    fs.replace('a', 'b')\n") == []


def test_the_seam_itself_does_the_io() -> None:
    calls = raw_io_calls(SEAM.read_text())
    assert any("os.fdatasync" in c for c in calls)
    assert any("os.replace" in c for c in calls)
