"""Versioned MessagePack payloads of the store's own log records (docs/format.md §9.3, §9.4,
§9.6, §10.2, §11.1): one encoder and one decoding rule for all of them.

Every such payload is a map written with its keys sorted and carrying its layout version
under ``v``. Decoding reads ``v`` first: a version newer than the reader's is refused with
``SchemaVersionError`` and never decoded further, so a newer document is never misread as a
current one; anything malformed is ``ValidationError`` naming the payload (the store reports
the record holding it as corruption).
"""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec

from wfstate.errors import SchemaVersionError, ValidationError

ENCODER: Final = msgspec.msgpack.Encoder(order="sorted")
"""Writes payload maps with their keys sorted (the order the golden fixtures pin)."""

_T = TypeVar("_T")


class _Versioned(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    v: int


def decode_versioned(data: bytes, kind: type[_T], what: str, newest: int) -> _T:
    """``data`` decoded as ``kind`` when its ``v`` is at most ``newest`` (module docstring);
    ``what`` names the payload in errors."""
    try:
        version = msgspec.msgpack.decode(data, type=_Versioned).v
    except msgspec.DecodeError as exc:
        raise ValidationError(what, f"malformed: {exc}") from exc
    if version > newest:
        raise SchemaVersionError(what, version, supported=newest, oldest=newest)
    try:
        return msgspec.msgpack.decode(data, type=kind)
    except msgspec.DecodeError as exc:
        raise ValidationError(what, f"malformed: {exc}") from exc
