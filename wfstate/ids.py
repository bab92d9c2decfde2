"""The one rule for workflow, step, agent and session ids.

Ids end up in file names, log records and error messages, so an id is accepted only if it is
safe as a single path component and printable:

- a ``str`` (not bytes, not a number);
- non-empty and at most :data:`MAX_ID_LENGTH` characters;
- no control character (code point below 32, or 127);
- no path separator (``/`` or ``\\``);
- not ``.`` or ``..``. With separators excluded, an id is exactly one path component, so this
  also excludes every ``..`` component.

Anything else (spaces, dots inside a name, non-ASCII letters) is allowed.
"""

from __future__ import annotations

import re
from typing import Final

from wfstate.errors import ValidationError

MAX_ID_LENGTH: Final = 128
"""The longest id accepted, in characters."""

_SEPARATORS: Final = ("/", "\\")
_FORBIDDEN: Final = re.compile(r"[\x00-\x1f\x7f/\\]")


def validate_id(value: object, field: str) -> str:
    """Return ``value`` if it is a valid id; otherwise raise ``ValidationError(field, ...)``.

    The error message names the rule that failed (type, empty, length, control character,
    path separator, dot name) and, where it helps, the offending character and its index.
    """
    if not isinstance(value, str):
        raise ValidationError(field, f"an id must be a str, not {type(value).__name__}")
    if not value:
        raise ValidationError(field, "an id must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValidationError(
            field, f"an id must be at most {MAX_ID_LENGTH} characters, not {len(value)}"
        )
    if _FORBIDDEN.search(value) is None:  # the common case, one C-level scan
        if value in (".", ".."):
            raise ValidationError(field, f"an id must not be the path component {value!r}")
        return value
    for index, char in enumerate(value):
        code = ord(char)
        if code < 32 or code == 127:
            raise ValidationError(
                field, f"an id must not contain control character U+{code:04X} (index {index})"
            )
        if char in _SEPARATORS:
            raise ValidationError(
                field, f"an id must not contain the path separator {char!r} (index {index})"
            )
    if value in (".", ".."):
        raise ValidationError(field, f"an id must not be the path component {value!r}")
    return value
