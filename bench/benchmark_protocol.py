"""The part of pytest-benchmark's ``benchmark`` fixture the benchmarks use, typed for mypy."""

from __future__ import annotations

from typing import Any, Protocol


class _Stats(Protocol):
    def __getitem__(self, key: str) -> float: ...


class Benchmark(Protocol):
    """The part of pytest-benchmark's ``benchmark`` fixture used here."""

    extra_info: dict[str, Any]
    stats: _Stats | None

    def pedantic(
        self,
        target: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        setup: Any = None,
        teardown: Any = None,
        rounds: int = 1,
        warmup_rounds: int = 0,
        iterations: int = 1,
    ) -> Any: ...
