"""The reference data in fixtures/ is deterministic and has the sizes BENCHMARKS.md documents."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import subprocess
import sys
import types
from pathlib import Path

import msgspec
import pytest

from fixtures import reference_data as rd
from fixtures.reference_data import (
    big_state,
    big_store_mutations,
    step_output,
    step_output_bytes,
)

ROOT = Path(__file__).resolve().parent.parent

# Sample spanning many workflows and steps, including the largest indexes the big store uses.
SAMPLE = [(w, s) for w in (0, 1, 7, 42, 99) for s in range(0, 1000, 7)]


def _json_len(obj: object) -> int:
    return len(msgspec.json.encode(obj))


def _digest(pairs: list[tuple[int, int]]) -> str:
    h = hashlib.sha256()
    for w, s in pairs:
        h.update(step_output_bytes(w, s))
    return h.hexdigest()


def test_same_bytes_twice() -> None:
    for w, s in SAMPLE[:50]:
        assert step_output_bytes(w, s) == step_output_bytes(w, s)
    assert msgspec.json.encode(big_state(50)) == msgspec.json.encode(big_state(50))


def test_independent_of_global_random_state() -> None:
    random.seed(1)
    first = [step_output_bytes(w, s) for w, s in SAMPLE[:20]]
    random.seed(2)
    random.random()
    second = [step_output_bytes(w, s) for w, s in SAMPLE[:20]]
    assert first == second


def test_independent_of_call_order() -> None:
    forward = {p: step_output_bytes(*p) for p in SAMPLE[:30]}
    backward = {p: step_output_bytes(*p) for p in reversed(SAMPLE[:30])}
    assert forward == backward


@pytest.mark.parametrize("hashseed", ["0", "12345"])
def test_same_bytes_in_a_fresh_interpreter(hashseed: str) -> None:
    """A new process (fresh ``random`` state, another hash seed) produces the same bytes."""
    code = (
        "import hashlib, msgspec\n"
        "from fixtures.reference_data import big_state, step_output_bytes\n"
        f"sample = {SAMPLE!r}\n"
        "h = hashlib.sha256()\n"
        "for w, s in sample:\n"
        "    h.update(step_output_bytes(w, s))\n"
        "print(h.hexdigest())\n"
        "print(hashlib.sha256(msgspec.json.encode(big_state(100))).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    here = hashlib.sha256(msgspec.json.encode(big_state(100))).hexdigest()
    assert out == [_digest(SAMPLE), here]


def test_bytes_are_pinned() -> None:
    """Benchmark results are only comparable across runs if the data never drifts.

    If you change the generator on purpose, update the digest and say so in the changelog:
    earlier benchmark numbers no longer compare.
    """
    assert hashlib.sha256(step_output_bytes(0, 0)).hexdigest() == PINNED_STEP_0_0
    assert _digest(SAMPLE) == PINNED_SAMPLE


PINNED_STEP_0_0 = "c69a824cdf94b67a368bb9aa11f5290ab80975f3265dc25baef9eb27bac6c19d"
PINNED_SAMPLE = "2975ffaef2e3216b47b2660bdd8b5713876d0c0d481d3881fddb3437fbdb7937"


def test_step_output_shape() -> None:
    out = step_output(3, 17)
    assert list(out) == [
        "workflow_id",
        "step_id",
        "agent_id",
        "model",
        "summary",
        "scores",
        "tokens",
        "tags",
    ]
    assert out["workflow_id"] == "wf-000003"
    assert out["step_id"] == "step-000017"
    assert isinstance(out["agent_id"], str) and out["agent_id"].startswith("agent-")
    summary = out["summary"]
    assert isinstance(summary, str)
    assert 110 <= len(summary.split()) <= 130
    scores = out["scores"]
    assert isinstance(scores, list) and len(scores) == 8
    assert all(isinstance(x, float) and 0.0 <= x < 1.0 for x in scores)
    tokens = out["tokens"]
    assert isinstance(tokens, dict)
    assert tokens["total"] == tokens["prompt"] + tokens["completion"]
    tags = out["tags"]
    assert isinstance(tags, list) and len(tags) == 4 and len(set(tags)) == 4


def test_msgpack_bytes_round_trip() -> None:
    for w, s in SAMPLE[:20]:
        assert msgspec.msgpack.decode(step_output_bytes(w, s)) == step_output(w, s)


def test_step_outputs_differ() -> None:
    """The benchmarks cycle through 64 outputs; they must be distinct documents."""
    payloads = {step_output_bytes(0, s) for s in range(64)}
    assert len(payloads) == 64
    assert step_output_bytes(0, 1) != step_output_bytes(1, 0)


def test_step_output_size_about_1kb() -> None:
    sizes = [_json_len(step_output(w, s)) for w, s in SAMPLE]
    assert min(sizes) >= 800, min(sizes)
    assert max(sizes) <= 1300, max(sizes)
    mean = sum(sizes) / len(sizes)
    assert 950 <= mean <= 1150, mean


def test_big_state_size() -> None:
    state = big_state()
    size = _json_len(state)
    assert 1_000_000 <= size <= 1_600_000, size
    steps = state["steps"]
    assert isinstance(steps, dict) and len(steps) == 1000
    assert list(steps)[:2] == ["step-000000", "step-000001"]
    record = steps["step-000999"]
    assert isinstance(record, dict)
    assert record["output"] == step_output(rd.BIG_STATE_WORKFLOW_INDEX, 999)


def test_big_state_steps_argument() -> None:
    assert big_state(0)["steps"] == {}
    small = big_state(10)["steps"]
    assert isinstance(small, dict) and len(small) == 10


def test_big_store_mutations_is_lazy_and_complete() -> None:
    gen = big_store_mutations()
    assert isinstance(gen, types.GeneratorType)
    head = list(itertools.islice(gen, 3))
    assert [(w, s) for w, s, _ in head] == [
        ("wf-000000", "step-000000"),
        ("wf-000001", "step-000000"),
        ("wf-000002", "step-000000"),
    ]
    assert head[1][2] == step_output(1, 0)

    small = list(big_store_mutations(workflows=3, per_workflow=4))
    assert len(small) == 12
    assert len({(w, s) for w, s, _ in small}) == 12
    assert small[-1][:2] == ("wf-000002", "step-000003")
    for w, s, out in small:
        assert out["workflow_id"] == w and out["step_id"] == s


def test_big_store_size_estimate() -> None:
    """~100 MB of JSON over 100,000 mutations, estimated from every 97th mutation.

    Mutation ``i`` is step ``i // 100`` of workflow ``i % 100`` (checked just above), so the
    sample is drawn directly rather than by generating all 100,000.
    """
    sample = [step_output(i % 100, i // 100) for i in range(0, 100_000, 97)]
    mean = sum(_json_len(out) for out in sample) / len(sample)
    total = mean * 100_000
    assert 90e6 <= total <= 120e6, total


@pytest.mark.parametrize(("w", "s"), [(-1, 0), (0, -1), (1 << 20, 0), (0, 1 << 24)])
def test_rejects_out_of_range_indexes(w: int, s: int) -> None:
    with pytest.raises(ValueError):
        step_output(w, s)
