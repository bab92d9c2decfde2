"""Contracts of wfstate.checkpointfile: the checkpoint file of docs/format.md §9.1."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from msgspec.structs import replace

from fixtures.reference_states import big_workflow_state
from tests.test_delta import base_state, related_pairs, states, with_step
from wfstate.checkpointfile import (
    CheckpointHeader,
    DecodedCheckpoint,
    check_state,
    decode_checkpoint,
    encode_checkpoint,
    read_header,
    yielded_state,
)
from wfstate.delta import StateDelta, compute_delta, encode_delta
from wfstate.errors import CorruptionError, FormatVersionError, SchemaVersionError, ValidationError
from wfstate.format import (
    CHECKPOINT_FULL,
    CHECKPOINT_HEADER,
    CHECKPOINT_HEADER_CHECKED,
    CHECKPOINT_INCREMENTAL,
    CODEC_LZ4,
    CODEC_NONE,
    CODEC_ZSTD,
    FORMAT_VERSION,
    xxh3,
)
from wfstate.model import (
    SCHEMA_VERSION,
    StateMetadata,
    Workflow,
    WorkflowState,
    encode_state,
    state_checksum,
)
from wfstate.wal.codec import Compression, decompress

EPOCH = 0x1234_5678_9ABC_DEF0
CK = "ck-00000000000000c1"
PARENT = "ck-00000000000000b0"
PATH = "checkpoints/ck-00000000000000c1.ckpt"
RAW = Compression(codec="none")


def full_file(state: WorkflowState, /, **kw: Any) -> bytes:
    args: dict[str, Any] = {
        "checkpoint_id": CK,
        "workflow_id": state.workflow.id,
        "origin": 3,
        "lsn": 40,
        "epoch": EPOCH,
        "parent": None,
        "state": state,
        "delta": None,
        "state_checksum": state_checksum(state),
    }
    return encode_checkpoint(**{**args, **kw})


def incremental_file(parent: WorkflowState, child: WorkflowState, /, **kw: Any) -> bytes:
    args: dict[str, Any] = {
        "checkpoint_id": CK,
        "workflow_id": child.workflow.id,
        "origin": 3,
        "lsn": 41,
        "epoch": EPOCH,
        "parent": PARENT,
        "state": None,
        "delta": compute_delta(parent, child),
        "state_checksum": state_checksum(child),
    }
    return encode_checkpoint(**{**args, **kw})


def decode(data: bytes) -> DecodedCheckpoint:
    return decode_checkpoint(data, PATH, epoch=EPOCH)


def small_pair() -> tuple[WorkflowState, WorkflowState]:
    parent = base_state()
    return parent, with_step(parent, 2, status="running", attempts=1, started_at=3.0)


def payload_of(data: bytes) -> dict[str, Any]:
    header = read_header(data, PATH)
    raw = decompress(header.codec, data[64:], header.raw_length)
    document = msgspec.msgpack.decode(raw)
    assert isinstance(document, dict)
    return document


def signed(
    data: bytes, *, payload: bytes | None = None, codec: int | None = None, **fields: int
) -> bytes:
    """``data`` with header ``fields`` (and the payload) replaced, every checksum made to match:
    a file that is intact but says something else, to test the rules checksums do not cover."""
    names = [
        "magic",
        "version",
        "header_size",
        "kind",
        "codec",
        "reserved",
        "epoch",
        "lsn",
        "length",
        "raw_length",
        "payload_checksum",
        "state_checksum",
        "header_checksum",
    ]
    values = dict(zip(names, CHECKPOINT_HEADER.unpack_from(data, 0), strict=True))
    body = data[64:]
    if payload is not None:
        body = payload
        values |= {"length": len(body), "raw_length": len(body), "codec": CODEC_NONE}
    if codec is not None:
        values["codec"] = codec
    values["payload_checksum"] = xxh3(body)
    values |= fields
    head = CHECKPOINT_HEADER.pack(*values.values())[:CHECKPOINT_HEADER_CHECKED]
    return head + xxh3(head).to_bytes(8, "little") + body


def corrupt(data: bytes) -> CorruptionError:
    with pytest.raises(CorruptionError) as info:
        decode(data)
    assert info.value.path == PATH
    return info.value


# -- round trips ------------------------------------------------------------------------------


def test_full_checkpoint_round_trips() -> None:
    state = base_state()
    data = full_file(state)
    decoded = decode(data)
    assert decoded == DecodedCheckpoint(
        checkpoint_id=CK,
        workflow_id="wf",
        origin=3,
        parent=None,
        lsn=40,
        kind=CHECKPOINT_FULL,
        state=state,
        delta=None,
        state_checksum=state_checksum(state),
        header_checksum=read_header(data, PATH).header_checksum,
        size=len(data),
    )
    assert yielded_state(decoded, None, PATH) is decoded.state


def test_incremental_checkpoint_round_trips_and_yields_the_child() -> None:
    parent, child = small_pair()
    data = incremental_file(parent, child)
    decoded = decode(data)
    assert decoded.kind == CHECKPOINT_INCREMENTAL
    assert decoded.parent == PARENT
    assert decoded.state is None
    assert decoded.delta == compute_delta(parent, child)
    assert (decoded.lsn, decoded.origin, decoded.workflow_id) == (41, 3, "wf")
    assert yielded_state(decoded, parent, PATH) == child


def test_big_state_round_trips_full_and_incremental() -> None:
    parent = big_workflow_state()
    child = parent
    for i in range(0, 1000, 100):
        child = with_step(child, i, error="retried")
    full = full_file(parent)
    assert read_header(full, PATH).codec == CODEC_ZSTD
    assert decode(full).state == parent
    incremental = incremental_file(parent, child)
    assert len(incremental) < len(full) // 20
    assert yielded_state(decode(incremental), parent, PATH) == child


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(related_pairs())
def test_generated_states_round_trip(pair: tuple[WorkflowState, WorkflowState]) -> None:
    parent, child = pair
    for state in pair:
        decoded = decode(full_file(state, workflow_id=state.workflow.id))
        unstamped = replace(state, metadata=replace(state.metadata, last_lsn=0))
        assert decoded.state == unstamped
        assert encode_state(decoded.state) == encode_state(unstamped)
    decoded = decode(incremental_file(parent, child))
    assert encode_state(yielded_state(decoded, parent, PATH)) == encode_state(child)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states(), states())
def test_unrelated_states_round_trip_as_incremental(
    parent: WorkflowState, child: WorkflowState
) -> None:
    decoded = decode(incremental_file(parent, child))
    assert encode_state(yielded_state(decoded, parent, PATH)) == encode_state(child)


# -- layout -----------------------------------------------------------------------------------


def test_header_fields_and_size() -> None:
    state = base_state()
    data = full_file(state, compression=RAW)
    header = read_header(data, PATH)
    assert header == CheckpointHeader(
        kind=CHECKPOINT_FULL,
        codec=CODEC_NONE,
        epoch=EPOCH,
        lsn=40,
        length=len(data) - 64,
        raw_length=len(data) - 64,
        payload_checksum=xxh3(data[64:]),
        state_checksum=state_checksum(state),
        header_checksum=xxh3(data[:56]),
    )
    assert header.file_size == len(data)
    assert data[:8] == b"WFSTCKPT"
    assert CHECKPOINT_HEADER.unpack_from(data, 0)[1:3] == (FORMAT_VERSION, 64)


def test_payload_keys_are_sorted_and_state_is_the_canonical_encoding() -> None:
    parent, child = small_pair()
    full = payload_of(full_file(child, compression=RAW))
    assert list(full) == sorted(full) == ["id", "origin", "parent", "state", "v", "workflow_id"]
    assert full["parent"] is None
    assert full["v"] == SCHEMA_VERSION
    raw = decompress(
        CODEC_NONE,
        full_file(child, compression=RAW)[64:],
        len(full_file(child, compression=RAW)) - 64,
    )
    assert encode_state(child) in raw
    incremental = payload_of(incremental_file(parent, child, compression=RAW))
    assert list(incremental) == sorted(incremental)
    assert list(incremental) == ["delta", "id", "origin", "parent", "v", "workflow_id"]
    assert incremental["parent"] == PARENT
    raw_incremental = incremental_file(parent, child, compression=RAW)
    assert encode_delta(compute_delta(parent, child)) in decompress(
        CODEC_NONE, raw_incremental[64:], len(raw_incremental) - 64
    )


def test_encoding_is_deterministic() -> None:
    parent, child = small_pair()
    assert full_file(child) == full_file(child)
    assert incremental_file(parent, child) == incremental_file(parent, child)


@pytest.mark.parametrize(
    ("compression", "codec"),
    [
        (None, CODEC_NONE),  # under the default 256-byte threshold
        (Compression(threshold=0), CODEC_ZSTD),
        (Compression(codec="lz4", threshold=0), CODEC_LZ4),
        (Compression(codec="none"), CODEC_NONE),
    ],
)
def test_codec_is_chosen_like_the_logs(compression: Compression | None, codec: int) -> None:
    tiny = WorkflowState(
        metadata=StateMetadata(schema_version=SCHEMA_VERSION, created_at=1.0, updated_at=1.0),
        workflow=Workflow(id="wf", name="W"),
    )
    state = tiny if compression is None else with_step(base_state(), 0, name="A" * 400)
    data = full_file(state, compression=compression)
    assert read_header(data, PATH).codec == codec
    assert decode(data).state == state


def test_a_payload_that_does_not_shrink_is_stored_uncompressed() -> None:
    data = full_file(base_state(), compression=Compression(threshold=0, level=1))
    header = read_header(data, PATH)
    if header.codec != CODEC_NONE:  # compressed only when it shrank
        assert header.length < header.raw_length
    assert decode(data).state == base_state()


# -- damage -----------------------------------------------------------------------------------


def small_files() -> list[bytes]:
    parent, child = small_pair()
    compressed = Compression(threshold=0)
    return [
        full_file(child, compression=RAW),
        incremental_file(parent, child, compression=RAW),
        full_file(child, compression=compressed),
        incremental_file(parent, child, compression=Compression(codec="lz4", threshold=0)),
    ]


@pytest.mark.parametrize("index", range(4), ids=["full", "incremental", "zstd", "lz4"])
def test_every_flipped_bit_is_detected(index: int) -> None:
    data = small_files()[index]
    assert read_header(data, PATH).codec == [CODEC_NONE, CODEC_NONE, CODEC_ZSTD, CODEC_LZ4][index]
    decode(data)
    for i in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            with pytest.raises(CorruptionError):  # the checksum is checked before the version
                decode(bytes(damaged))
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        with pytest.raises(CorruptionError):
            decode(bytes(damaged))


@pytest.mark.parametrize("index", range(4), ids=["full", "incremental", "zstd", "lz4"])
def test_truncation_at_every_length_and_appended_bytes_are_detected(index: int) -> None:
    data = small_files()[index]
    for size in range(len(data)):
        corrupt(data[:size])
    for extra in (b"\x00", bytes(8), b"garbage", data):
        assert "bytes, its header says" in corrupt(data + extra).reason


def test_a_checkpoint_of_another_store_is_refused() -> None:
    data = full_file(base_state())
    with pytest.raises(CorruptionError) as info:
        decode_checkpoint(data, PATH, epoch=EPOCH + 1)
    assert info.value.offset == 16
    assert "epoch" in info.value.reason


def test_a_newer_format_version_is_refused() -> None:
    with pytest.raises(FormatVersionError) as info:
        decode(signed(full_file(base_state()), version=FORMAT_VERSION + 1))
    newer = (PATH, FORMAT_VERSION + 1, FORMAT_VERSION)
    assert (info.value.path, info.value.found, info.value.supported) == newer
    with pytest.raises(FormatVersionError):
        read_header(signed(full_file(base_state()), version=0xFFFF), PATH)


def test_a_damaged_magic_is_named() -> None:
    data = bytearray(full_file(base_state()))
    data[0] ^= 1
    error = corrupt(bytes(data))
    assert (error.offset, "magic" in error.reason) == (0, True)


@pytest.mark.parametrize(
    ("fields", "offset", "words"),
    [
        ({"version": 1}, 8, "format version 1 has no checkpoint files"),
        ({"header_size": 63}, 10, "header size 63"),
        ({"kind": 0}, 12, "unknown checkpoint kind 0"),
        ({"kind": 3}, 12, "unknown checkpoint kind 3"),
        ({"codec": 3}, 13, "unknown codec 3"),
        ({"reserved": 1}, 14, "reserved"),
        ({"length": 0}, 32, "payload length 0"),
        ({"length": 2**30 + 1}, 32, "payload length"),
        ({"raw_length": 0}, 36, "raw payload length 0"),
        ({"raw_length": 2**30 + 1}, 36, "raw payload length"),
        ({"raw_length": 5}, 36, "uncompressed payload"),
        ({"state_checksum": 1}, 48, "checksum"),
        ({"lsn": 2}, 24, "before the workflow's origin 3"),
        ({"kind": CHECKPOINT_INCREMENTAL}, 64, "parent None of an incremental checkpoint"),
    ],
)
def test_header_rules_hold_even_under_a_matching_checksum(
    fields: dict[str, Any], offset: int, words: str
) -> None:
    error = corrupt(signed(full_file(base_state(), compression=RAW), **fields))
    assert error.offset == offset
    assert words in error.reason


def test_a_payload_that_does_not_decompress_is_corruption() -> None:
    data = full_file(base_state(), compression=RAW)
    error = corrupt(signed(data, codec=CODEC_ZSTD, raw_length=len(data) - 64))
    assert (error.offset, "zstd" in error.reason) == (64, True)
    compressed = full_file(base_state(), compression=Compression(threshold=0))
    header = read_header(compressed, PATH)
    error = corrupt(signed(compressed, raw_length=header.raw_length + 1))
    assert error.offset == 64


def test_the_header_checksum_covers_the_state_and_payload_checksums() -> None:
    data = bytearray(full_file(base_state()))
    data[48] ^= 1
    assert corrupt(bytes(data)).offset == 56
    data = bytearray(full_file(base_state()))
    data[40] ^= 1
    assert corrupt(bytes(data)).offset == 56
    data = bytearray(full_file(base_state()))
    data[-1] ^= 1
    assert corrupt(bytes(data)).offset == 40


def full_payload(**changes: Any) -> dict[str, Any]:
    state = base_state()
    document: dict[str, Any] = {
        "id": CK,
        "origin": 3,
        "parent": None,
        "state": msgspec.msgpack.decode(encode_state(state)),
        "v": SCHEMA_VERSION,
        "workflow_id": "wf",
    }
    document.update(changes)
    return {key: value for key, value in document.items() if value is not ...}


def incremental_payload(**changes: Any) -> dict[str, Any]:
    parent, child = small_pair()
    document = full_payload(
        parent=PARENT,
        state=...,
        delta=msgspec.msgpack.decode(encode_delta(compute_delta(parent, child))),
    )
    document.update(changes)
    return {key: value for key, value in document.items() if value is not ...}


def with_payload(document: object, kind: int = CHECKPOINT_FULL) -> bytes:
    return signed(
        full_file(base_state(), compression=RAW),
        payload=msgspec.msgpack.encode(document),
        kind=kind,
    )


@pytest.mark.parametrize(
    ("document", "kind", "words"),
    [
        ([1, 2], CHECKPOINT_FULL, "Expected `object`"),
        ({"id": CK}, CHECKPOINT_FULL, "missing required field `v`"),
        (full_payload(v="1"), CHECKPOINT_FULL, "Expected `int`"),
        (full_payload(id="ck-1"), CHECKPOINT_FULL, "'ck-1' is not a checkpoint id"),
        (full_payload(workflow_id="a/b"), CHECKPOINT_FULL, "workflow_id: an id"),
        (full_payload(origin=-1), CHECKPOINT_FULL, "Expected `int` >= 0 - at `$.origin`"),
        (full_payload(parent=...), CHECKPOINT_FULL, "missing required field `parent`"),
        (full_payload(parent=PARENT), CHECKPOINT_FULL, "a full checkpoint names a parent"),
        (full_payload(state=...), CHECKPOINT_FULL, "a full checkpoint holds a `state`"),
        (
            full_payload(delta=incremental_payload()["delta"]),
            CHECKPOINT_FULL,
            "a full checkpoint holds a `state` and no `delta`",
        ),
        (full_payload(workflow_id="other"), CHECKPOINT_FULL, "the state is of workflow 'wf'"),
        (
            full_payload(state={"metadata": 1}),
            CHECKPOINT_FULL,
            "state: Expected `object`, got `int` - at `$.metadata`",
        ),
        (incremental_payload(parent=None), CHECKPOINT_INCREMENTAL, "parent None"),
        (incremental_payload(origin=0), CHECKPOINT_INCREMENTAL, "origin 0 (imported) in an"),
        (incremental_payload(parent=CK), CHECKPOINT_INCREMENTAL, "names itself as its parent"),
        (incremental_payload(delta=...), CHECKPOINT_INCREMENTAL, "holds a `delta` and no"),
        (
            incremental_payload(state=full_payload()["state"]),
            CHECKPOINT_INCREMENTAL,
            "holds a `delta` and no `state`",
        ),
        (
            incremental_payload(workflow_id="other"),
            CHECKPOINT_INCREMENTAL,
            "the delta is of workflow 'wf'",
        ),
        (
            incremental_payload(delta={"metadata": 1}),
            CHECKPOINT_INCREMENTAL,
            "delta.metadata: Expected `object`",
        ),
    ],
)
def test_payload_rules_hold_even_under_matching_checksums(
    document: object, kind: int, words: str
) -> None:
    error = corrupt(with_payload(document, kind))
    assert error.offset == 64
    assert words in error.reason


def test_the_intact_rebuilt_payloads_are_accepted() -> None:
    state = base_state()
    assert decode(with_payload(full_payload())).state == state
    parent, child = small_pair()
    intact = signed(
        incremental_file(parent, child),
        payload=msgspec.msgpack.encode(incremental_payload()),
    )
    assert yielded_state(decode(intact), parent, PATH) == child


def test_a_full_state_without_its_checksum_is_corruption() -> None:
    error = corrupt(
        signed(full_file(base_state()), state_checksum=state_checksum(base_state()) ^ 1)
    )
    assert error.offset == 48


@pytest.mark.parametrize("v", [SCHEMA_VERSION + 1, 0])
def test_a_payload_of_another_schema_version_is_refused_unread(v: int) -> None:
    # everything but `v` is garbage: a newer document is judged by its version, not its fields
    with pytest.raises(SchemaVersionError) as info:
        decode(with_payload({"v": v, "state": 1, "id": 2}))
    assert info.value.found == v
    assert info.value.supported == SCHEMA_VERSION


@pytest.mark.parametrize("v", [SCHEMA_VERSION + 1, 0])
def test_a_payload_of_another_schema_version_is_refused_where_its_fields_decode(v: int) -> None:
    # the payload decodes in one pass when it can; its `v` is still checked before any use
    with pytest.raises(SchemaVersionError) as info:
        decode(with_payload(full_payload(v=v)))
    assert info.value.found == v


# -- the state an incremental checkpoint yields -----------------------------------------------


def test_a_delta_applied_to_the_wrong_parent_is_corruption() -> None:
    parent, child = small_pair()
    decoded = decode(incremental_file(parent, child))
    other = with_step(parent, 0, error="another history")
    with pytest.raises(CorruptionError) as info:
        yielded_state(decoded, other, PATH)
    assert (info.value.offset, "checksum" in info.value.reason) == (48, True)
    unrelated = replace(parent, agents={})
    removing = decode(
        incremental_file(parent, replace(child, agents={}), state_checksum=0)
    )  # its delta removes agent a1, which `unrelated` does not have
    with pytest.raises(CorruptionError) as info:
        yielded_state(removing, unrelated, PATH)
    assert info.value.offset == 64
    assert "delta.agents_removed[0]" in info.value.reason


def test_check_state_compares_the_state_checksum() -> None:
    parent, child = small_pair()
    decoded = decode(incremental_file(parent, child))
    check_state(decoded, child, PATH)
    with pytest.raises(CorruptionError) as info:
        check_state(decoded, parent, PATH)
    assert info.value.offset == 48
    # last_lsn is not covered: the engine stamps it after the checkpoint's state was taken
    check_state(decoded, replace(child, metadata=replace(child.metadata, last_lsn=99)), PATH)


def test_an_incremental_checkpoint_needs_its_parents_state() -> None:
    parent, child = small_pair()
    with pytest.raises(ValidationError) as info:
        yielded_state(decode(incremental_file(parent, child)), None, PATH)
    assert info.value.field == "parent_state"


# -- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"checkpoint_id": "ck-XYZ"}, "checkpoint_id"),
        ({"checkpoint_id": 5}, "checkpoint_id"),
        ({"workflow_id": ""}, "workflow_id"),
        ({"origin": -1}, "origin"),
        ({"origin": True}, "origin"),
        ({"lsn": 2}, "lsn"),
        ({"lsn": 2**64}, "lsn"),
        ({"epoch": 0}, "epoch"),
        ({"state_checksum": -1}, "state_checksum"),
        ({"state_checksum": "bad"}, "state_checksum"),
        ({"compression": "zstd"}, "compression"),
        ({"state": None}, "state"),
        ({"delta": "x"}, "delta"),
        ({"workflow_id": "other"}, "state.workflow.id"),
        ({"state_checksum": "computed-wrong"}, "state_checksum"),
        ({"last_lsn": 5, "state_checksum": "computed-wrong"}, "state_checksum"),
        ({"schema_version": SCHEMA_VERSION + 1}, "state.metadata.schema_version"),
    ],
)
def test_full_checkpoint_arguments_are_checked(changes: dict[str, Any], field: str) -> None:
    state = base_state()
    if "last_lsn" in changes:
        state = replace(state, metadata=replace(state.metadata, last_lsn=changes.pop("last_lsn")))
    if "schema_version" in changes:
        version = changes.pop("schema_version")
        state = replace(state, metadata=replace(state.metadata, schema_version=version))
    if changes.get("state_checksum") == "computed-wrong":
        changes["state_checksum"] = state_checksum(state) ^ 1
    with pytest.raises(ValidationError) as info:
        full_file(state, **changes)
    assert info.value.field == field


def test_a_full_checkpoint_stores_no_lsn_stamp() -> None:
    """The state is stored with last_lsn 0, so its checksum is the hash of the stored bytes;
    the stamp is the store's to put back (from the entry's lsn)."""
    state = replace(base_state(), metadata=replace(base_state().metadata, last_lsn=39))
    data = full_file(state)
    decoded = decode(data)
    assert decoded.state == base_state()
    assert decoded.state is not None and decoded.state.metadata.last_lsn == 0
    assert read_header(data, PATH).state_checksum == state_checksum(state)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"parent": "nope"}, "parent"),
        ({"parent": CK}, "parent"),
        ({"state": "given"}, "state"),
        ({"delta": None}, "delta"),
        ({"workflow_id": "other"}, "delta.workflow.id"),
        ({"delta": "with steps"}, "delta.workflow.steps"),
    ],
)
def test_incremental_checkpoint_arguments_are_checked(changes: dict[str, Any], field: str) -> None:
    parent, child = small_pair()
    if changes.get("state") == "given":
        changes["state"] = child
    if changes.get("delta") == "with steps":
        changes["delta"] = StateDelta(metadata=child.metadata, workflow=child.workflow)
    with pytest.raises(ValidationError) as info:
        incremental_file(parent, child, **changes)
    assert info.value.field == field
