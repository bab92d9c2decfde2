"""Schema versions of stored documents, and the upgrades that carry old documents forward.

Every document wfstate stores carries the schema version it was written in. Today that is the
batch document of a ``BATCH`` log record (docs/format.md §5.1): its ``v`` covers the whole
body, including the states embedded in it. This code reads documents of
:data:`~wfstate.model.SCHEMA_VERSION` as they are. An older document is carried forward by
*upgrades*, one per version step, applied in order; a newer one is refused with
:class:`~wfstate.errors.SchemaVersionError` and never misread; an older one for which no
upgrade is registered is refused the same way.

The upgrade contract (every upgrade function follows it)
    An upgrade *from version N* is called with the body of a version-N document as plain
    MessagePack data, exactly as ``msgspec.msgpack.decode`` returns it (dicts, lists, str,
    int, float, bool, None, bytes), before any conversion to Structs. It returns the body of
    the same document in the layout of version N+1, again as plain data msgspec can encode.
    For a batch the body is the array of mutation maps (the document's ``m``; the chain, not
    the function, keeps track of ``v``), and the upgrade also rewrites every state embedded in
    it, setting its ``metadata.schema_version`` to N+1: after the last upgrade every embedded
    state must name the current version, or the document is refused.

    - **Pure.** The result depends on the argument only: no I/O, no clock, no globals, no
      randomness. The argument is a fresh value owned by the call, so the function may modify
      it in place and return it, but must keep no reference to it.
    - **Runs on every load of an old document.** The log is never rewritten to a new version
      (its records are checksummed and chained); an old record stays old, and is upgraded
      again at every open, until a checkpoint or compaction writes its state anew.
    - **Errors.** A body that is not a valid version-N body raises
      :class:`~wfstate.errors.ValidationError` (the store reports that record as corrupt).
      Any other exception is a bug in the upgrade and propagates unchanged.

Registries
    :class:`SchemaUpgrades` is an immutable chain of upgrades ending at one version (its
    ``current``), checked when it is built: no two upgrades from the same version, no gap.
    :data:`BATCH_UPGRADES` is the chain wfstate ships for batch documents; code that reads
    batches takes the chain as a parameter (``decode_mutations(data, upgrades=...)``) whose
    default is this one, so tests pass their own chain and no module global ever changes.

Adding a schema version (the checklist)
    Bump :data:`~wfstate.model.SCHEMA_VERSION` to N+1; write ``_batch_from_N`` here and add
    ``(N, _batch_from_N)`` to :data:`BATCH_UPGRADES`; keep a hand-written version-N document in
    ``tests/test_schema.py`` and check that it decodes to the expected current Structs. The
    chain must keep reaching back to version 1, the first version ever written (a test checks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, TypeAlias

from wfstate.errors import SchemaVersionError, ValidationError
from wfstate.model import SCHEMA_VERSION

Upgrade: TypeAlias = Callable[[Any], Any]
"""An upgrade function: the plain-data body of a version-N document → that of version N+1."""

FIRST_SCHEMA_VERSION: Final = 1
"""The schema version of the first documents wfstate wrote; the built-in chain starts here."""


def _is_version(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class SchemaUpgrades:
    """An immutable, validated chain of upgrades from :attr:`oldest` to :attr:`current`.

    ``upgrades`` is a sequence of ``(from_version, function)`` pairs, in any order; each
    function upgrades a body from ``from_version`` to ``from_version + 1`` (see the module's
    contract). ``current`` is the version the chain ends at: the version of the Structs the
    upgraded body is read as, so a chain a decoder uses must have ``current ==
    SCHEMA_VERSION`` (the decoder checks). With no upgrades, only ``current`` is readable.

    Raises ValidationError, naming the field, when ``current`` is not an int ≥ 1 (``current``);
    an entry is not a pair, its version not an int in ``0 .. current - 1``, or its function not
    callable (``upgrades[i]``); two entries upgrade from the same version (``upgrades[i]``, the
    second one); or the versions leave a gap before ``current`` (``upgrades``, naming the
    missing step).
    """

    __slots__ = ("_current", "_oldest", "_steps")

    _current: int
    _oldest: int
    _steps: tuple[Upgrade, ...]

    def __init__(
        self, upgrades: Iterable[tuple[int, Upgrade]] = (), *, current: int = SCHEMA_VERSION
    ) -> None:
        if not _is_version(current) or current < 1:
            raise ValidationError("current", f"must be an int >= 1, not {current!r}")
        by_version: dict[int, tuple[int, Upgrade]] = {}
        for i, entry in enumerate(upgrades):
            field = f"upgrades[{i}]"
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise ValidationError(field, f"must be a (from_version, function) pair: {entry!r}")
            version, function = entry
            if not _is_version(version) or version >= current:
                raise ValidationError(
                    field,
                    f"the version upgraded from must be an int in 0 .. {current - 1} "
                    f"(the chain ends at version {current}), not {version!r}",
                )
            if not callable(function):
                raise ValidationError(field, f"the upgrade must be callable, not {function!r}")
            if version in by_version:
                first = by_version[version][0]
                raise ValidationError(
                    field,
                    f"a second upgrade from version {version} (the first is upgrades[{first}])",
                )
            by_version[version] = (i, function)
        oldest = min(by_version, default=current)
        for version in range(oldest, current):
            if version not in by_version:
                raise ValidationError(
                    "upgrades",
                    f"no upgrade from version {version} to {version + 1}: the chain from version "
                    f"{oldest} to {current} has a gap",
                )
        object.__setattr__(self, "_current", current)
        object.__setattr__(self, "_oldest", oldest)
        object.__setattr__(self, "_steps", tuple(by_version[v][1] for v in range(oldest, current)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __repr__(self) -> str:
        return f"SchemaUpgrades(oldest={self._oldest}, current={self._current})"

    @property
    def current(self) -> int:
        """The version every upgraded body ends at (and the only one read without upgrades)."""
        return self._current

    @property
    def oldest(self) -> int:
        """The oldest version this chain upgrades from (``current`` when it has no upgrades)."""
        return self._oldest

    def check(self, version: int, *, field: str) -> None:
        """Raise SchemaVersionError unless a document of ``version`` can be read.

        ``version`` > :attr:`current`: newer than this code (never read, never guessed at);
        ``version`` < :attr:`oldest`: no upgrade is registered from it. ``field`` names the
        document in the error.
        """
        if not self._oldest <= version <= self._current:
            raise SchemaVersionError(field, version, supported=self._current, oldest=self._oldest)

    def upgrade(self, body: Any, version: int, *, field: str) -> Any:
        """The body of a version-``version`` document carried forward to :attr:`current`.

        Checks ``version`` first (:meth:`check`), then applies the upgrades from ``version``
        upwards, in order, each to the result of the one before; a current body is returned
        as it is. Errors of the upgrades propagate unchanged (see the module's contract).
        """
        self.check(version, field=field)
        for step in self._steps[version - self._oldest :]:
            body = step(body)
        return body


BATCH_UPGRADES: Final = SchemaUpgrades(())
"""The upgrades wfstate ships for batch documents (docs/format.md §5.1), ending at
:data:`~wfstate.model.SCHEMA_VERSION`. Empty while that is 1: no older version exists."""
