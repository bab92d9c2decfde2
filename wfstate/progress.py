"""Progress reporting for long operator commands: a bar on a terminal, nothing otherwise.

Library code takes a :class:`Progress` and wraps its long loops in it; the default,
:func:`quiet`, passes the items through. The command line passes :func:`terminal_bar`, a
``tqdm`` bar on standard error that shows only when standard error is a terminal (so logs and
``--json`` output stay clean).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Protocol, TextIO, TypeVar

from tqdm import tqdm

__all__ = ["Progress", "quiet", "terminal_bar"]

T = TypeVar("T")


class Progress(Protocol):
    """Wrap ``items`` (``total`` of them, when known) while reporting ``label``."""

    def __call__(
        self, items: Iterable[T], *, label: str, total: int | None = None
    ) -> Iterable[T]: ...


def quiet(items: Iterable[T], *, label: str, total: int | None = None) -> Iterable[T]:
    """No reporting: the items as they are."""
    return items


class _Bar:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, items: Iterable[T], *, label: str, total: int | None = None) -> Iterable[T]:
        if not self._stream.isatty():
            return items
        return tqdm(items, desc=label, total=total, file=self._stream, leave=False, unit="")


def terminal_bar(stream: TextIO | None = None) -> Progress:
    """A progress bar on ``stream`` (standard error) when it is a terminal, else :func:`quiet`."""
    return _Bar(sys.stderr if stream is None else stream)
