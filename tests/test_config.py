"""StoreConfig, the presets and resolve_config: validation naming the field, and the options
reaching the store and its log."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from wfstate import CheckpointPolicy, Compression, CreateWorkflow, LocalStore, ValidationError
from wfstate.config import (
    OPTIONS,
    PRESETS,
    PRODUCTION,
    StoreConfig,
    resolve_config,
)
from wfstate.wal import Log


def _spy_log_open(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record the keyword arguments each ``Log.open`` receives (then open for real)."""
    calls: list[dict[str, Any]] = []
    real: Callable[..., Log] = Log.open

    def spy(path: str, **kwargs: Any) -> Log:
        calls.append(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(Log, "open", spy)
    return calls


def _create(workflow_id: str) -> CreateWorkflow:
    return CreateWorkflow(workflow_id=workflow_id, name=workflow_id, at=0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_opens_a_store_with_its_options(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = PRESETS[name]
    calls = _spy_log_open(monkeypatch)
    store = LocalStore.open(str(tmp_path / name), **config.open_kwargs())
    try:
        store.commit([_create("w1")])
        assert store.load("w1").workflow.name == "w1"
        (log_kwargs,) = calls
        for option in ("durability", "compression", "segment_size", "max_record_size", "mode"):
            assert log_kwargs[option] == getattr(config, option), option
        assert log_kwargs["lock_timeout"] == config.lock_timeout
        assert store._policy is config.checkpoints
        assert store._table._budget == config.cache_bytes
    finally:
        store.close()


def test_durability_reaches_the_log(tmp_path: Path) -> None:
    """Under ``none`` a commit returns before any sync; under ``always`` only after one."""
    lazy = LocalStore.open(str(tmp_path / "dev"), **resolve_config("development").open_kwargs())
    try:
        lsn = lazy.commit([_create("w1")])
        assert lazy._log.durable_lsn < lsn
    finally:
        lazy.close()
    safe = LocalStore.open(str(tmp_path / "prod"), **resolve_config("production").open_kwargs())
    try:
        lsn = safe.commit([_create("w1")])
        assert safe._log.durable_lsn >= lsn
    finally:
        safe.close()


def test_production_is_the_stores_own_defaults() -> None:
    """The production preset (and ``StoreConfig()``) equals ``LocalStore.open``'s defaults,
    and ``open_kwargs`` names exactly parameters of ``LocalStore.open``."""
    parameters = inspect.signature(LocalStore.open).parameters
    assert set(PRODUCTION.open_kwargs()) == set(OPTIONS)
    for option, value in PRODUCTION.open_kwargs().items():
        default = parameters[option].default
        if option == "compression":  # the log's default for None
            default = Compression() if default is None else default
        assert value == default, option
    assert StoreConfig() == PRODUCTION


def test_presets_are_honest_about_durability() -> None:
    assert PRESETS["production"].durability == "always"
    assert PRESETS["production"].compression == Compression(codec="zstd", level=3)
    assert PRESETS["production"].checkpoints.retention.keep_last == 10
    assert PRESETS["development"].durability == "none"
    assert PRESETS["high_throughput"].durability == "interval"
    assert PRESETS["high_throughput"].compression.codec == "lz4"
    ht, prod = PRESETS["high_throughput"], PRESETS["production"]
    assert ht.segment_size > prod.segment_size
    assert ht.checkpoints.every_batches is not None and prod.checkpoints.every_batches is not None
    assert ht.checkpoints.every_batches > prod.checkpoints.every_batches


def test_presets_cannot_be_replaced() -> None:
    with pytest.raises(TypeError):
        PRESETS["production"] = StoreConfig(durability="none")  # type: ignore[index]


def test_overrides_apply_on_top_of_the_preset() -> None:
    policy = CheckpointPolicy(every_batches=5)
    config = resolve_config(
        "high_throughput", durability="always", segment_size=8192, checkpoints=policy
    )
    assert config.durability == "always"
    assert config.segment_size == 8192
    assert config.checkpoints is policy
    assert config.compression == PRESETS["high_throughput"].compression  # untouched
    assert resolve_config() is PRODUCTION
    assert resolve_config("development") is PRESETS["development"]


def test_an_overridden_config_reaches_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy_log_open(monkeypatch)
    config = resolve_config("production", segment_size=8192, durability="interval")
    with LocalStore.open(str(tmp_path / "s"), **config.open_kwargs()):
        pass
    assert calls[0]["segment_size"] == 8192
    assert calls[0]["durability"] == "interval"


def test_unknown_preset_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        resolve_config("fast")
    assert caught.value.field == "preset"
    for name in PRESETS:
        assert name in caught.value.message


def test_unknown_option_is_named_and_valid_ones_listed() -> None:
    with pytest.raises(ValidationError) as caught:
        resolve_config("production", sync_interval_ms=50)
    assert caught.value.field == "sync_interval_ms"
    assert "unknown option" in caught.value.message
    for option in OPTIONS:
        assert option in caught.value.message


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("durability", "sometimes"),
        ("durability", None),
        ("compression", {"codec": "lz4"}),
        ("compression", "zstd"),
        ("segment_size", 4095),
        ("segment_size", "16MiB"),
        ("segment_size", True),
        ("max_record_size", 0),
        ("max_record_size", (1 << 30) + 1),
        ("checkpoints", {"every_batches": 10}),
        ("lock_timeout", -1),
        ("lock_timeout", float("inf")),
        ("lock_timeout", float("nan")),
        ("lock_timeout", "30"),
        ("cache_bytes", -1),
        ("cache_bytes", 1.5),
        ("mode", "best_effort"),
    ],
)
def test_a_bad_value_is_rejected_naming_the_option_and_nothing_is_created(
    option: str, value: object, tmp_path: Path
) -> None:
    path = tmp_path / "store"
    override: dict[str, Any] = {option: value}
    with pytest.raises(ValidationError) as caught:
        config = resolve_config("development", **override)
        LocalStore.open(str(path), **config.open_kwargs())
    assert caught.value.field == option
    assert not path.exists()
    with pytest.raises(ValidationError) as direct:  # a StoreConfig cannot hold it either
        StoreConfig(**override)
    assert direct.value.field == option


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("durability", "sometimes"),
        ("segment_size", 10),
        ("max_record_size", 0),
        ("mode", "optimistic"),
        ("lock_timeout", -1.0),
        ("compression", "zstd"),
        ("clock", 5),
    ],
)
def test_local_store_open_rejects_bad_options_before_creating_anything(
    tmp_path: Path, option: str, value: object
) -> None:
    path = tmp_path / "store"
    with pytest.raises(ValidationError) as info:
        LocalStore.open(str(path), **{option: value})  # type: ignore[arg-type]
    assert info.value.field == option
    assert not path.exists()


def test_config_is_immutable_and_encodes() -> None:
    with pytest.raises(AttributeError):
        PRODUCTION.durability = "none"  # type: ignore[misc]
    assert msgspec.json.decode(msgspec.json.encode(PRODUCTION))["durability"] == "always"
