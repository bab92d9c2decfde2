"""Schema versions of batch documents and their upgrades (wfstate/schema.py, docs/format.md §5.1).

Old documents are written here by hand, as raw MessagePack in a fictitious version-0 layout,
and read through a chain passed as a parameter: the chain wfstate ships is empty while
SCHEMA_VERSION is 1, and nothing here changes a module global.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from msgspec.structs import replace

from wfstate.backends.local import LocalStore
from wfstate.errors import SchemaVersionError, ValidationError, WfstateError
from wfstate.format import RECORD_BATCH, WAL_DIR
from wfstate.model import SCHEMA_VERSION, WorkflowState, WorkflowStep, encode_state
from wfstate.mutations import (
    CreateWorkflow,
    DeleteWorkflow,
    Mutation,
    ReplaceState,
    SetWorkflowStatus,
    apply,
    decode_mutations,
    encode_mutations,
)
from wfstate.schema import BATCH_UPGRADES, FIRST_SCHEMA_VERSION, SchemaUpgrades
from wfstate.wal import Log

WF = "wf-1"
NEWER = SCHEMA_VERSION + 1


def document(body: object, v: object) -> bytes:
    """A batch document written by hand (docs/format.md §5.1)."""
    return msgspec.msgpack.encode({"v": v, "m": body})


def a_state() -> WorkflowState:
    created = apply(
        None,
        CreateWorkflow(
            workflow_id=WF, name="Report", steps=(WorkflowStep(id="a", name="A"),), at=1.0
        ),
    )
    assert created is not None
    return created


def with_schema_version(state: WorkflowState, version: int) -> WorkflowState:
    return replace(state, metadata=replace(state.metadata, schema_version=version))


def marker(version: int) -> Any:
    def step(body: list[int]) -> list[int]:
        return [*body, version]

    return step


# -- the registry -----------------------------------------------------------------------------


def test_the_shipped_chain_ends_at_schema_version_and_reaches_back_to_the_first_version() -> None:
    # Fails when SCHEMA_VERSION is bumped without an upgrade from every earlier version.
    assert BATCH_UPGRADES.current == SCHEMA_VERSION
    assert BATCH_UPGRADES.oldest == FIRST_SCHEMA_VERSION == 1


def test_a_chain_applies_its_upgrades_in_order_from_the_documents_version() -> None:
    chain = SchemaUpgrades([(3, marker(3)), (1, marker(1)), (2, marker(2))], current=4)
    assert (chain.oldest, chain.current) == (1, 4)
    assert chain.upgrade([], 1, field="doc") == [1, 2, 3]
    assert chain.upgrade([], 2, field="doc") == [2, 3]
    assert chain.upgrade([], 3, field="doc") == [3]
    body: list[int] = []
    assert chain.upgrade(body, 4, field="doc") is body  # a current body is returned as it is


def test_a_chain_without_upgrades_reads_only_its_current_version() -> None:
    chain = SchemaUpgrades(current=3)
    assert (chain.oldest, chain.current) == (3, 3)
    assert chain.upgrade("body", 3, field="doc") == "body"
    with pytest.raises(SchemaVersionError):
        chain.upgrade("body", 2, field="doc")


def test_two_upgrades_from_the_same_version_are_refused() -> None:
    with pytest.raises(ValidationError) as info:
        SchemaUpgrades([(1, marker(1)), (2, marker(2)), (1, marker(1))], current=3)
    assert info.value.field == "upgrades[2]"
    assert "a second upgrade from version 1" in info.value.message
    assert "upgrades[0]" in info.value.message


@pytest.mark.parametrize(
    ("versions", "missing"),
    [((1, 3), 2), ((0, 1, 3), 2), ((1, 2), 3), ((0,), 1)],
)
def test_a_gap_in_the_chain_is_refused(versions: tuple[int, ...], missing: int) -> None:
    with pytest.raises(ValidationError) as info:
        SchemaUpgrades([(v, marker(v)) for v in versions], current=4)
    assert info.value.field == "upgrades"
    assert f"no upgrade from version {missing} to {missing + 1}" in info.value.message


@pytest.mark.parametrize(
    ("entry", "text"),
    [
        ((4, marker(4)), "0 .. 3"),  # would upgrade past the end of the chain
        ((-1, marker(-1)), "not -1"),
        ((True, marker(1)), "not True"),
        (("1", marker(1)), "not '1'"),
        ((1, "not callable"), "callable"),
        ((1,), "pair"),
        ([1, marker(1)], "pair"),
    ],
)
def test_a_bad_entry_is_refused_naming_it(entry: Any, text: str) -> None:
    with pytest.raises(ValidationError) as info:
        SchemaUpgrades([(3, marker(3)), entry], current=4)
    assert info.value.field == "upgrades[1]"
    assert text in info.value.message


@pytest.mark.parametrize("current", [0, -1, True, 1.0, "1"])
def test_a_bad_current_version_is_refused(current: Any) -> None:
    with pytest.raises(ValidationError) as info:
        SchemaUpgrades(current=current)
    assert info.value.field == "current"


def test_a_chain_is_immutable() -> None:
    chain = SchemaUpgrades([(1, marker(1))], current=2)
    with pytest.raises(AttributeError):
        chain._current = 5
    with pytest.raises(AttributeError):
        chain.current = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del chain._steps
    assert (chain.oldest, chain.current) == (1, 2)


def test_check_refuses_newer_and_unreachable_versions_naming_them() -> None:
    chain = SchemaUpgrades([(2, marker(2))], current=3)
    chain.check(2, field="doc")
    chain.check(3, field="doc")
    with pytest.raises(SchemaVersionError) as newer:
        chain.check(4, field="doc")
    assert (newer.value.found, newer.value.supported, newer.value.oldest) == (4, 3, 2)
    assert newer.value.field == "doc"
    assert str(newer.value) == (
        "doc: schema version 4 is newer than the newest supported version 3 "
        "(written by a newer wfstate)"
    )
    with pytest.raises(SchemaVersionError) as older:
        chain.check(1, field="doc")
    assert (older.value.found, older.value.supported, older.value.oldest) == (1, 3, 2)
    assert "no upgrade from version 1 is registered" in str(older.value)
    assert "reads versions 2 to 3" in str(older.value)


def test_errors_of_an_upgrade_propagate_unchanged() -> None:
    refused = ValidationError("mutations", "not a valid version-1 body")

    def refuse(body: Any) -> Any:
        raise refused

    def buggy(body: Any) -> Any:
        return body["missing"]

    with pytest.raises(ValidationError) as info:
        SchemaUpgrades([(1, refuse)], current=2).upgrade({}, 1, field="doc")
    assert info.value is refused
    with pytest.raises(KeyError):
        SchemaUpgrades([(1, buggy)], current=2).upgrade({}, 1, field="doc")


def test_a_schema_version_error_is_not_a_validation_error() -> None:
    # A store reports ValidationError from a logged batch as corruption; a newer document is
    # not corrupt, so it must not be caught as one.
    error = SchemaVersionError("mutations", 2, supported=1, oldest=1)
    assert isinstance(error, WfstateError)
    assert not isinstance(error, ValidationError)
    assert not error.retryable


# -- the current document ---------------------------------------------------------------------


def test_the_batch_document_layout_is_pinned() -> None:
    # docs/format.md §5.1 gives these bytes; a change here is a schema change.
    assert encode_mutations([]) == bytes.fromhex("82 a1 76 01 a1 6d 90")
    data = encode_mutations([DeleteWorkflow(workflow_id="w", at=1.5)])
    assert data == (
        bytes.fromhex("82 a1 76 01 a1 6d 91 83")  # {"v": 1, "m": [ {3 keys
        + b"\xa2op\xafdelete_workflow"
        + b"\xabworkflow_id\xa1w"
        + b"\xa2at\xcb"
        + bytes.fromhex("3ff8000000000000")  # 1.5 as a float64
    )
    assert msgspec.msgpack.decode(data) == {
        "v": SCHEMA_VERSION,
        "m": [{"op": "delete_workflow", "workflow_id": "w", "at": 1.5}],
    }


def test_a_hand_written_current_document_decodes() -> None:
    body = [{"op": "set_workflow_status", "workflow_id": WF, "at": 2, "status": "running"}]
    assert decode_mutations(document(body, SCHEMA_VERSION)) == [
        SetWorkflowStatus(workflow_id=WF, status="running", at=2.0)
    ]


# -- newer documents are refused, never misread -------------------------------------------------


@pytest.mark.parametrize("found", [NEWER, NEWER + 7, 2**64 - 1])
def test_a_newer_document_is_refused_naming_both_versions(found: int) -> None:
    # The body is a valid current body: without the version check it would decode
    # "successfully" into the current Structs, which is exactly the misreading refused here.
    body = msgspec.msgpack.decode(encode_mutations([DeleteWorkflow(workflow_id=WF, at=1.0)]))["m"]
    with pytest.raises(SchemaVersionError) as info:
        decode_mutations(document(body, found))
    assert (info.value.found, info.value.supported) == (found, SCHEMA_VERSION)
    assert info.value.field == "mutations"
    assert f"schema version {found} is newer than the newest supported version 1" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        msgspec.msgpack.encode({"v": NEWER}),  # no body at all
        msgspec.msgpack.encode({"v": NEWER, "m": {"a": "map"}, "x": 1}),  # a body of another kind
        msgspec.msgpack.encode({"v": NEWER, "batch": b"\x00"}),  # a different envelope
    ],
    ids=["no body", "another body", "another envelope"],
)
def test_a_newer_document_is_refused_by_its_version_whatever_else_it_holds(data: bytes) -> None:
    with pytest.raises(SchemaVersionError) as info:
        decode_mutations(data)
    assert info.value.found == NEWER


def test_a_newer_document_is_refused_by_a_chain_with_upgrades_too() -> None:
    chain = SchemaUpgrades([(0, lambda body: body)])
    body = msgspec.msgpack.decode(encode_mutations([DeleteWorkflow(workflow_id=WF, at=1.0)]))["m"]
    with pytest.raises(SchemaVersionError):
        decode_mutations(document(body, NEWER), upgrades=chain)


def test_a_chain_ending_at_another_version_is_refused() -> None:
    # A chain ending at version 2 would let a version-2 document be read as version-1 Structs.
    body = msgspec.msgpack.decode(encode_mutations([DeleteWorkflow(workflow_id=WF, at=1.0)]))["m"]
    for chain in (SchemaUpgrades([(1, lambda b: b)], current=NEWER), SchemaUpgrades(current=NEWER)):
        with pytest.raises(ValidationError) as info:
            decode_mutations(document(body, NEWER), upgrades=chain)
        assert info.value.field == "upgrades"
        assert f"ends at schema version {NEWER}" in info.value.message


def test_a_newer_batch_in_the_log_stops_the_store_from_opening(tmp_path: Path) -> None:
    path = tmp_path / "store"
    wal = path / WAL_DIR
    body = msgspec.msgpack.decode(encode_mutations([DeleteWorkflow(workflow_id=WF, at=1.0)]))["m"]
    with Log.open(str(wal)) as log:
        log.append(
            encode_mutations([CreateWorkflow(workflow_id=WF, name="n", at=0)]), record_type=2
        )
        log.append(document(body, NEWER), record_type=RECORD_BATCH)
    before = {name: (wal / name).read_bytes() for name in os.listdir(wal)}
    with pytest.raises(SchemaVersionError) as info:  # not reported as corruption
        LocalStore.open(str(path))
    assert (info.value.found, info.value.supported) == (NEWER, SCHEMA_VERSION)
    assert {name: (wal / name).read_bytes() for name in os.listdir(wal)} == before


# -- older documents are upgraded on load ---------------------------------------------------------


def v0_state(state: WorkflowState) -> dict[str, Any]:
    """``state`` as a fictitious version-0 writer embedded it: the v1 map, version 0."""
    raw: dict[str, Any] = msgspec.msgpack.decode(encode_state(state))
    raw["metadata"]["schema_version"] = 0
    return raw


def v0_document(state: WorkflowState) -> bytes:
    """A batch in the fictitious version-0 layout: a map of "changes" with other key names."""
    changes = [
        {"kind": "create_workflow", "wf": WF, "time": 1, "name": "Report"},
        {"kind": "set_workflow_status", "wf": WF, "time": 2, "status": "running"},
        {"kind": "replace_state", "wf": WF, "time": 3, "state": v0_state(state)},
    ]
    return document({"changes": changes}, 0)


def upgrade_from_v0(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Version 0 → 1: "changes" → the array, kind/wf/time → op/workflow_id/at, states to 1."""
    batch = []
    for change in body["changes"]:
        mutation = {
            "op": change.pop("kind"),
            "workflow_id": change.pop("wf"),
            "at": change.pop("time"),
            **change,
        }
        if mutation["op"] == "replace_state":
            mutation["state"]["metadata"]["schema_version"] = 1
        batch.append(mutation)
    return batch


FROM_V0 = SchemaUpgrades([(0, upgrade_from_v0)])


def test_an_old_document_is_upgraded_on_decode() -> None:
    state = a_state()
    expected: list[Mutation] = [
        CreateWorkflow(workflow_id=WF, name="Report", at=1.0),
        SetWorkflowStatus(workflow_id=WF, status="running", at=2.0),
        ReplaceState(workflow_id=WF, state=state, at=3.0),
    ]
    data = v0_document(state)
    assert decode_mutations(data, upgrades=FROM_V0) == expected
    # every load upgrades again; the stored bytes are the input, never rewritten
    assert decode_mutations(data, upgrades=FROM_V0) == expected
    assert msgspec.msgpack.decode(data)["v"] == 0


def test_an_old_document_without_a_registered_upgrade_is_refused() -> None:
    data = v0_document(a_state())
    with pytest.raises(SchemaVersionError) as info:
        decode_mutations(data)  # the shipped chain starts at version 1
    assert (info.value.found, info.value.supported, info.value.oldest) == (0, SCHEMA_VERSION, 1)
    assert "no upgrade from version 0 is registered" in str(info.value)


def test_each_upgrade_sees_the_body_of_its_version_and_runs_once_per_load() -> None:
    seen: list[Any] = []

    def spy(body: Any) -> Any:
        seen.append(msgspec.msgpack.encode(body))
        return upgrade_from_v0(body)

    data = v0_document(a_state())
    decode_mutations(data, upgrades=SchemaUpgrades([(0, spy)]))
    decode_mutations(data, upgrades=SchemaUpgrades([(0, spy)]))
    assert seen == [msgspec.msgpack.encode(msgspec.msgpack.decode(data)["m"])] * 2


def test_an_upgraded_body_is_checked_as_the_current_version() -> None:
    data = v0_document(a_state())
    wrong = SchemaUpgrades([(0, lambda body: [{"op": "explode", "workflow_id": WF, "at": 1}])])
    with pytest.raises(ValidationError) as info:
        decode_mutations(data, upgrades=wrong)
    assert info.value.field == "mutations"
    assert info.value.message.startswith("after the upgrade from schema version 0: ")
    unencodable = SchemaUpgrades([(0, lambda body: [object()])])
    with pytest.raises(ValidationError) as info:
        decode_mutations(data, upgrades=unencodable)
    assert "cannot be encoded" in info.value.message


# -- embedded states carry the document's version ---------------------------------------------


def test_an_upgrade_that_leaves_an_embedded_state_behind_is_refused() -> None:
    def forgets_states(body: dict[str, Any]) -> list[dict[str, Any]]:
        batch = upgrade_from_v0(body)
        batch[2]["state"]["metadata"]["schema_version"] = 0
        return batch

    with pytest.raises(ValidationError) as info:
        decode_mutations(v0_document(a_state()), upgrades=SchemaUpgrades([(0, forgets_states)]))
    # 0 is out of range for a current state, so msgspec's path names it
    assert info.value.field == "mutations"
    assert "$[2].state.metadata.schema_version" in info.value.message


@pytest.mark.parametrize("embedded", [NEWER, 7])
def test_a_document_whose_embedded_state_names_another_version_is_refused(embedded: int) -> None:
    state = a_state()
    raw = msgspec.msgpack.decode(encode_state(state))
    raw["metadata"]["schema_version"] = embedded
    body = [
        {"op": "delete_workflow", "workflow_id": "other", "at": 1.0},
        {"op": "replace_state", "workflow_id": WF, "at": 2.0, "state": raw},
    ]
    with pytest.raises(ValidationError) as info:
        decode_mutations(document(body, SCHEMA_VERSION))
    assert info.value.field == "mutations[1].state.metadata.schema_version"
    raw["metadata"]["schema_version"] = SCHEMA_VERSION  # the same document, consistent
    assert len(decode_mutations(document(body, SCHEMA_VERSION))) == 2


def test_a_batch_embedding_a_state_of_another_version_is_not_written() -> None:
    state = a_state()
    stale = ReplaceState(workflow_id=WF, state=with_schema_version(state, NEWER), at=2.0)
    with pytest.raises(ValidationError) as info:
        encode_mutations([DeleteWorkflow(workflow_id="x", at=1.0), stale])
    assert info.value.field == "mutations[1].state.metadata.schema_version"
    with pytest.raises(ValidationError) as info:
        apply(state, stale)
    assert info.value.field == "mutation.state.metadata.schema_version"
    assert "upgrade the state first" in info.value.message
    # a current one is written, and the result names the current version
    current = ReplaceState(workflow_id=WF, state=state, at=2.0)
    assert decode_mutations(encode_mutations([current])) == [current]
    result = apply(state, current)
    assert result is not None
    assert result.metadata.schema_version == SCHEMA_VERSION


def test_a_store_reads_old_batches_with_the_chain_it_is_opened_with(tmp_path: Path) -> None:
    path = tmp_path / "store"
    state = a_state()
    with Log.open(str(path / WAL_DIR)) as log:
        log.append(v0_document(state), record_type=RECORD_BATCH)
    with pytest.raises(SchemaVersionError):  # the shipped chain cannot read version 0
        LocalStore.open(str(path))
    with LocalStore.open(str(path), upgrades=FROM_V0) as store:
        loaded = store.load(WF)
        assert loaded.workflow == state.workflow
        assert loaded.metadata.schema_version == SCHEMA_VERSION


@pytest.mark.parametrize(
    "upgrades",
    [None, [(0, upgrade_from_v0)], SchemaUpgrades(current=SCHEMA_VERSION + 1)],
    ids=["none", "not a chain", "ends elsewhere"],
)
def test_a_store_refuses_a_bad_chain_before_touching_the_directory(
    tmp_path: Path, upgrades: Any
) -> None:
    with pytest.raises(ValidationError) as info:
        LocalStore.open(str(tmp_path / "store"), upgrades=upgrades)
    assert info.value.field == "upgrades"
    assert not (tmp_path / "store").exists()
