"""A session bundle (docs/format.md §11.4): a session, its workflows and their checkpoints as
one self-checking MessagePack document, for moving a session between stores.

:func:`encode_bundle` makes one from files the exporting store wrote; :func:`decode_bundle`
verifies *everything* a bundle holds before the importing store writes anything: the outer
map, the manifest checksum, every file's presence, size and checksum, that no file is missing
or extra, the versions, and that every file decodes, verifies (checksums, the exporting
store's epoch) and agrees with the manifest. A bundle that fails any rule raises
``CorruptionError`` whose ``path`` names the part (``bundle``, ``manifest``,
``files[<name>]``) and whose ``reason`` says what is wrong; nothing is ever half-read.
Bundles are plain MessagePack (msgspec), never pickle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple, TypeVar

import msgspec

from wfstate.checkpointfile import DecodedCheckpoint, decode_checkpoint
from wfstate.checkpointindex import CheckpointInfo, check_entry
from wfstate.errors import CorruptionError, FormatVersionError, SchemaVersionError, ValidationError
from wfstate.format import (
    CHECKPOINT_FULL,
    FORMAT_VERSION,
    checkpoint_file_name,
    checkpoint_path,
    session_file_name,
    state_file_name,
    xxh3,
)
from wfstate.model import SCHEMA_VERSION, WorkflowState
from wfstate.payload import ENCODER, decode_versioned
from wfstate.sessions import (
    SessionInfo,
    SessionRecord,
    decode_session_file,
    session_info,
    session_record,
)
from wfstate.statetable import stamped_with

_T = TypeVar("_T")

BUNDLE_VERSION: Final = 1
"""The bundle and manifest layout version (docs/format.md §11.4)."""


class BundleFile(msgspec.Struct, frozen=True, array_like=True):
    """A file as the manifest lists it: ``[name, size, checksum]``."""

    name: str
    size: int
    checksum: int


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What a bundle holds (docs/format.md §11.4); fields in sorted order, so written sorted."""

    checkpoints: tuple[CheckpointInfo, ...]
    created: float
    epoch: int
    files: tuple[BundleFile, ...]
    format_version: int
    schema_version: int
    session: SessionRecord
    v: int
    workflows: tuple[str, ...]


class _Bundle(msgspec.Struct, frozen=True, kw_only=True):
    files: dict[str, bytes]
    manifest: bytes
    manifest_checksum: int
    v: int


class Bundle(NamedTuple):
    """A bundle that passed :func:`decode_bundle`: the session (as the exporting store had
    it), each bundled workflow's state (stamped with the exporting store's LSN), and each
    checkpoint's entry with the state its file yields."""

    session: SessionInfo
    states: dict[str, WorkflowState]
    checkpoints: list[tuple[CheckpointInfo, WorkflowState]]
    created: float


def checkpoint_name(info: CheckpointInfo) -> str:
    return checkpoint_path(info.file)


def encode_bundle(
    *,
    session: SessionInfo,
    epoch: int,
    created: float,
    workflows: Sequence[str],
    checkpoints: Sequence[CheckpointInfo],
    files: Mapping[str, bytes],
) -> bytes:
    """The bundle of ``files`` (names as docs/format.md §11.4 lists them: the session record
    file, a state file per workflow, a full checkpoint file per entry of ``checkpoints``,
    whose ``file``/``size``/``checksum`` describe it), written by the store ``epoch``."""
    listed = tuple(BundleFile(name, len(files[name]), xxh3(files[name])) for name in sorted(files))
    manifest = ENCODER.encode(
        Manifest(
            checkpoints=tuple(sorted(checkpoints, key=lambda info: info.id)),
            created=created,
            epoch=epoch,
            files=listed,
            format_version=FORMAT_VERSION,
            schema_version=SCHEMA_VERSION,
            session=session_record(session),
            v=BUNDLE_VERSION,
            workflows=tuple(sorted(workflows)),
        )
    )
    return ENCODER.encode(
        _Bundle(
            files=dict(files),
            manifest=manifest,
            manifest_checksum=xxh3(manifest),
            v=BUNDLE_VERSION,
        )
    )


def decode_bundle(data: bytes) -> Bundle:
    """Verify a whole bundle (module docstring) and return what it holds. ``CorruptionError``
    naming the part for any damage or inconsistency; ``FormatVersionError`` /
    ``SchemaVersionError`` for a bundle of a newer format or another schema version (there
    is no upgrade for the states of checkpoint files). Reads nothing but ``data``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValidationError("data", f"a bundle is bytes, not {type(data).__name__}")
    outer = _decode(bytes(data), _Bundle, "bundle")
    if xxh3(outer.manifest) != outer.manifest_checksum:
        raise CorruptionError("manifest", 0, "the manifest checksum does not match")
    manifest = _decode(outer.manifest, Manifest, "manifest")
    if manifest.format_version > FORMAT_VERSION:
        raise FormatVersionError("manifest", manifest.format_version, FORMAT_VERSION)
    if manifest.schema_version != SCHEMA_VERSION:
        raise SchemaVersionError(
            "manifest.schema_version",
            manifest.schema_version,
            supported=SCHEMA_VERSION,
            oldest=SCHEMA_VERSION,
        )
    files = _check_files(manifest, outer.files)
    session = _check_session(manifest, files)
    states: dict[str, WorkflowState] = {}
    for workflow_id in manifest.workflows:
        name = state_file_name(workflow_id)
        decoded, state = _full(files[name], name, manifest.epoch)
        if decoded.workflow_id != workflow_id:
            raise CorruptionError(f"files[{name}]", 0, f"holds workflow {decoded.workflow_id!r}")
        states[workflow_id] = state
    checkpoints: list[tuple[CheckpointInfo, WorkflowState]] = []
    for i, info in enumerate(manifest.checkpoints):
        checkpoints.append((info, _check_checkpoint(info, i, manifest, files)))
    return Bundle(session=session, states=states, checkpoints=checkpoints, created=manifest.created)


def _decode(data: bytes, kind: type[_T], part: str) -> _T:
    try:
        decoded = decode_versioned(data, kind, part, BUNDLE_VERSION)
    except ValidationError as exc:
        raise CorruptionError(part, 0, exc.message) from exc
    if getattr(decoded, "v", 0) < 1:
        raise CorruptionError(part, 0, "version below 1: no writer produces it")
    return decoded


def _check_files(manifest: Manifest, files: dict[str, bytes]) -> dict[str, bytes]:
    """Every listed file present with its size and checksum, no other file, and exactly the
    names the manifest's session, workflows and checkpoints call for."""
    names = [f.name for f in manifest.files]
    if names != sorted(set(names)):
        raise CorruptionError("manifest", 0, "files are not sorted by name, or repeat")
    for listed in manifest.files:
        part = f"files[{listed.name}]"
        content = files.get(listed.name)
        if content is None:
            raise CorruptionError(part, 0, "listed in the manifest but not in the bundle")
        if len(content) != listed.size:
            raise CorruptionError(part, 0, f"{len(content)} bytes, the manifest says {listed.size}")
        if xxh3(content) != listed.checksum:
            raise CorruptionError(part, 0, "checksum does not match the manifest")
    for name in sorted(set(files) - set(names)):
        raise CorruptionError(f"files[{name}]", 0, "in the bundle but not in the manifest")
    wanted = {session_file_name(manifest.session.id)}
    wanted.update(state_file_name(w) for w in manifest.workflows)
    wanted.update(checkpoint_name(info) for info in manifest.checkpoints)
    if len(wanted) != len(names) or wanted != set(names):
        missing, extra = sorted(wanted - set(names)), sorted(set(names) - wanted)
        raise CorruptionError(
            "manifest", 0, f"its files do not match its contents: missing {missing}, extra {extra}"
        )
    return files


def _check_session(manifest: Manifest, files: dict[str, bytes]) -> SessionInfo:
    name = session_file_name(manifest.session.id)
    try:
        from_file = decode_session_file(files[name], f"files[{name}]")
    except ValidationError as exc:
        raise CorruptionError(f"files[{name}]", 0, exc.message) from exc
    session = session_info(manifest.session)
    if from_file != session:
        raise CorruptionError(f"files[{name}]", 0, "differs from the manifest's session")
    if list(manifest.workflows) != sorted(set(manifest.workflows)) or not set(
        manifest.workflows
    ) <= set(session.workflows):
        raise CorruptionError(
            "manifest", 0, "workflows are not sorted, repeat, or not the session's"
        )
    return session


def _full(data: bytes, name: str, epoch: int) -> tuple[DecodedCheckpoint, WorkflowState]:
    """A full checkpoint-layout file of the bundle, verified, and its state stamped with its
    LSN."""
    decoded = decode_checkpoint(data, f"files[{name}]", epoch=epoch)
    if decoded.kind != CHECKPOINT_FULL or decoded.state is None:
        raise CorruptionError(f"files[{name}]", 0, "not a full checkpoint file")
    return decoded, stamped_with(decoded.state, decoded.lsn)


def _check_checkpoint(
    info: CheckpointInfo, i: int, manifest: Manifest, files: dict[str, bytes]
) -> WorkflowState:
    part = f"manifest.checkpoints[{i}]"
    try:
        check_entry(info)
    except ValidationError as exc:
        raise CorruptionError(part, 0, str(exc)) from exc
    if info.parent is not None or info.file != checkpoint_file_name(info.id):
        raise CorruptionError(part, 0, "a bundled checkpoint is full, in <id>.ckpt")
    if info.workflow_id not in manifest.workflows:
        raise CorruptionError(part, 0, f"of workflow {info.workflow_id!r}, not bundled")
    if i and info.id <= manifest.checkpoints[i - 1].id:
        raise CorruptionError("manifest", 0, "checkpoints are not sorted by id, or repeat")
    name = checkpoint_name(info)
    data = files[name]
    decoded, state = _full(data, name, manifest.epoch)
    if (
        decoded.workflow_id != info.workflow_id
        or decoded.origin != info.origin
        or decoded.checkpoint_id != info.id
        or decoded.lsn != info.lsn
        or decoded.header_checksum != info.checksum
        or len(data) != info.size
    ):
        raise CorruptionError(f"files[{name}]", 0, f"does not read as {part}")
    return state
