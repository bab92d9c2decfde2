"""Session export and import (docs/format.md §11.4, §9.8): a session moves between stores
whole, an import checks everything before writing anything, and a tampered or truncated
bundle is refused with the reason."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from wfstate.backends.local import LocalStore
from wfstate.bundle import Manifest, decode_bundle
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.errors import (
    CorruptionError,
    FormatVersionError,
    NotFoundError,
    SchemaVersionError,
    ValidationError,
)
from wfstate.format import xxh3
from wfstate.model import WorkflowState, WorkflowStep
from wfstate.mutations import CreateWorkflow, Mutation, PutStepOutput, SetStepStatus
from wfstate.payload import ENCODER


def create(workflow_id: str) -> list[Mutation]:
    steps = tuple(WorkflowStep(id=f"s{i}", name=f"s{i}") for i in range(3))
    return [CreateWorkflow(workflow_id=workflow_id, name=workflow_id, steps=steps, at=0)]


def done(workflow_id: str, i: int) -> list[Mutation]:
    return [
        SetStepStatus(workflow_id=workflow_id, step_id=f"s{i}", status="running", at=0),
        PutStepOutput(workflow_id=workflow_id, step_id=f"s{i}", data={"i": i}, at=0),
        SetStepStatus(workflow_id=workflow_id, step_id=f"s{i}", status="completed", at=0),
    ]


def open_store(path: Path, **kwargs: Any) -> LocalStore:
    kwargs.setdefault("checkpoints", MANUAL_ONLY)
    return LocalStore.open(str(path), clock=lambda: 2000.0, lock_timeout=0.2, **kwargs)


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "LOCK" and not p.name.endswith(".lock")
    }


def body(state: WorkflowState) -> tuple[object, ...]:
    """What a move keeps: everything but the store's bookkeeping (metadata)."""
    return (state.workflow, state.agents, state.outputs, state.context, state.performance)


def exported(tmp_path: Path, *, end: bool = True) -> tuple[bytes, dict[str, WorkflowState], str]:
    """A session of two workflows with a full and an incremental checkpoint, exported."""
    with open_store(tmp_path / "source") as store:
        session = store.start_session("alice", {"run": 7})
        for w in ("a", "b"):
            store.commit(create(w), session=session)
        store.commit(done("a", 0), session=session)
        store.checkpoint("a", description="first", tags=("t1",))
        store.commit(done("a", 1), session=session)
        store.checkpoint("a")  # incremental: exported full
        store.commit(create("unrelated"))
        if end:
            session.end()
        else:
            session.close()
        states = {w: store.load(w) for w in ("a", "b")}
        data = store.export_session(session.id)
        return data, states, session.id


def test_a_session_moves_to_another_store_whole(tmp_path: Path) -> None:
    data, states, session_id = exported(tmp_path)
    with open_store(tmp_path / "source") as source:
        source_checkpoints = {i.id: source.checkpoint_state(i.id) for i in source.checkpoints()}
        of_a = {i.id for i in source.checkpoints("a")}
        assert len(of_a) == 3 and len(source.checkpoints("b")) == 1  # the end's final ones too
        (source_info,) = source.sessions()
    target = tmp_path / "target"
    with open_store(target) as store, open_store(target) as other:
        store.commit(create("local"))
        info = store.import_session(data)
        assert (info.id, info.user, info.metadata, info.status) == (
            session_id,
            "alice",
            {"run": 7},
            "ended",
        )
        assert (info.started, info.ended) == (source_info.started, source_info.ended)
        assert info.workflows == ("a", "b")
        assert store.list_workflows() == ["a", "b", "local"]
        for w in ("a", "b"):
            assert body(store.load(w)) == body(states[w])
            assert store.read_state_file(w) == store.load(w)
            assert body(other.load(w)) == body(states[w])  # read from the TXN record
        imported = store.checkpoints("a")
        assert {i.id for i in imported} == of_a
        assert {i.id for i in store.checkpoints()} == set(source_checkpoints)
        for ck in store.checkpoints():
            assert ck.origin == 0 and ck.parent is None
            assert body(store.checkpoint_state(ck.id)) == body(source_checkpoints[ck.id])
        first = next(i for i in imported if i.description == "first")
        assert first.tags == ("t1",)
        assert all(c.ok and c.matches_log is None for c in store.verify())
        assert other.sessions() == [info]
        assert not any(name.endswith(".tmp") for name in tree(target))
        # an imported checkpoint is restorable, never a load base
        store.restore(first.id)
        assert body(store.load("a")) == body(source_checkpoints[first.id])
        restored = store.load("a")
        store.compact()  # the anchor now carries imported entries (v 2)
    with open_store(target, cache_bytes=0) as store:
        assert store.load("a") == restored and body(store.load("b")) == body(states["b"])
        assert {i.id for i in store.checkpoints() if i.origin == 0} == set(source_checkpoints)
        assert store.sessions() == [info]


def test_an_imported_active_session_is_crashed_until_taken_over(tmp_path: Path) -> None:
    data, _states, session_id = exported(tmp_path, end=False)
    with open_store(tmp_path / "target") as store:
        info = store.import_session(data)
        assert info.status == "active" and info.token == 1
        (crashed,) = store.detect_crashed_sessions()
        assert crashed.session == info
        session = store.resume_session(session_id)
        assert session.token == 2
        store.commit(done("b", 0), session=session)
        session.end()
        assert store.sessions()[0].status == "ended"


def test_export_refuses_bad_ids_and_unknown_sessions(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        with pytest.raises(ValidationError) as info:
            store.export_session("nope")
        assert info.value.field == "session_id"
        with pytest.raises(NotFoundError):
            store.export_session("se-0123456789abcdef")


def test_an_import_that_clashes_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    data, _states, _session_id = exported(tmp_path)
    target = tmp_path / "target"
    with open_store(target) as store:
        store.import_session(data)
        before = tree(target)
        with pytest.raises(ValidationError) as info:
            store.import_session(data)
        assert info.value.field == "bundle.session"
        assert tree(target) == before
    other = tmp_path / "other"
    with open_store(other) as store:
        store.commit(create("b"))
        before = tree(other)
        with pytest.raises(ValidationError) as info:
            store.import_session(data)
        assert info.value.field == "bundle.workflows[1]"
        assert tree(other) == before and store.sessions() == []


# -- tampering ------------------------------------------------------------------------------------

REFUSED = (CorruptionError, FormatVersionError, SchemaVersionError)


def refused(store: LocalStore, root: Path, data: bytes) -> BaseException:
    before = tree(root)
    with pytest.raises(REFUSED) as info:
        store.import_session(data)
    assert tree(root) == before
    return info.value


def reencoded(data: bytes, **changes: Any) -> bytes:
    """The bundle with outer fields replaced (``manifest`` may be a dict: it is encoded and
    its checksum recomputed, as a careful forger would)."""
    outer = msgspec.msgpack.decode(data)
    manifest = changes.pop("manifest", None)
    if manifest is not None:
        outer["manifest"] = ENCODER.encode(manifest)
        outer["manifest_checksum"] = xxh3(outer["manifest"])
    outer.update(changes)
    return ENCODER.encode(outer)


def test_every_flipped_byte_and_every_truncation_is_refused(tmp_path: Path) -> None:
    data, _states, _session_id = exported(tmp_path)
    target = tmp_path / "target"
    with open_store(target) as store:
        for i in range(len(data)):
            flipped = bytearray(data)
            flipped[i] ^= 0x41
            refused(store, target, bytes(flipped))
        for n in range(len(data)):
            refused(store, target, data[:n])
        assert store.sessions() == [] and store.list_workflows() == []
        store.import_session(data)  # the intact bundle still imports


def test_a_dropped_extra_or_changed_file_is_refused_naming_it(tmp_path: Path) -> None:
    data, _states, _session_id = exported(tmp_path)
    outer = msgspec.msgpack.decode(data)
    target = tmp_path / "target"
    with open_store(target) as store:
        files = dict(outer["files"])
        del files["workflows/b.state"]
        error = refused(store, target, reencoded(data, files=files))
        assert isinstance(error, CorruptionError) and error.path == "files[workflows/b.state]"
        assert "not in the bundle" in error.reason
        files = dict(outer["files"]) | {"workflows/x.state": b"x"}
        error = refused(store, target, reencoded(data, files=files))
        assert isinstance(error, CorruptionError) and "not in the manifest" in error.reason
        files = dict(outer["files"])
        files["workflows/a.state"] = files["workflows/a.state"][:-1] + b"\0"
        error = refused(store, target, reencoded(data, files=files))
        assert isinstance(error, CorruptionError) and error.path == "files[workflows/a.state]"


def test_a_changed_manifest_is_refused_even_with_a_matching_checksum(tmp_path: Path) -> None:
    data, _states, _session_id = exported(tmp_path)
    outer = msgspec.msgpack.decode(data)
    manifest = msgspec.msgpack.decode(outer["manifest"])
    target = tmp_path / "target"

    def variant(**changes: Any) -> BaseException:
        with open_store(target) as store:
            return refused(store, target, reencoded(data, manifest={**manifest, **changes}))

    # the checksum alone: changed manifest bytes, stale checksum
    stale = reencoded(data, manifest={**manifest, "created": 1.0})
    stale = reencoded(stale, manifest_checksum=outer["manifest_checksum"])
    with open_store(target) as store:
        error = refused(store, target, stale)
    assert isinstance(error, CorruptionError) and error.path == "manifest"
    assert "checksum" in error.reason
    # consistent forgeries: every part must agree with the files
    session = dict(manifest["session"])
    assert "differs" in str(variant(session={**session, "user": "mallory"}))
    assert "not the session's" in str(variant(workflows=["b", "a"]))
    assert "do not match its contents" in str(variant(workflows=["a", "b", "c"]))
    assert "do not match its contents" in str(variant(workflows=["a"]))
    entries = [dict(e) for e in manifest["checkpoints"]]
    other = "a" if entries[0]["workflow_id"] == "b" else "b"
    for field, value in (("lsn", entries[0]["lsn"] + 1), ("workflow_id", other), ("size", 1)):
        forged = [{**entries[0], field: value}, *entries[1:]]
        assert "does not read as" in str(variant(checkpoints=forged))
    files = [f for f in manifest["files"] if f[0] != "workflows/b.state"]
    assert "do not match" in str(variant(files=files)) or "not in the manifest" in str(
        variant(files=files)
    )
    assert isinstance(variant(epoch=manifest["epoch"] ^ 1), CorruptionError)
    assert isinstance(variant(v=2), SchemaVersionError)
    assert isinstance(variant(format_version=99), FormatVersionError)
    assert isinstance(variant(schema_version=99), SchemaVersionError)


def test_a_bundle_decodes_to_what_was_exported(tmp_path: Path) -> None:
    data, states, session_id = exported(tmp_path)
    bundle = decode_bundle(data)
    assert bundle.session.id == session_id and sorted(bundle.states) == ["a", "b"]
    for w, state in bundle.states.items():
        assert state == states[w]
    manifest = msgspec.msgpack.decode(msgspec.msgpack.decode(data)["manifest"], type=Manifest)
    assert [f.name for f in manifest.files] == sorted(
        [f"sessions/{session_id}.session", "workflows/a.state", "workflows/b.state"]
        + [f"checkpoints/{i.file}" for i in manifest.checkpoints]
    )
    assert not os.path.exists(tmp_path / "target")
