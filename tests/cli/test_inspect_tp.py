"""``kvcore inspect --tp-size T``: each rank's KV heads (split, replicated, impossible), per-tensor, bad usage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

TOP_KEYS = ["quant_method", "plugins", "layers", "anomalies", "verdict", "kv_cache", "summary"]


def _per_head(cli: SimpleNamespace, checkpoint: Callable, heads: int, config_heads: int | None = None) -> Path:
    """Two layers of per-head (``attn_head``) k/v scales, ``(heads, 1, 1)`` bf16, as llm-compressor writes."""
    tensors = {}
    for n in range(2):
        values = torch.arange(1, heads + 1, dtype=torch.float32) * 0.01 * (n + 1)
        tensors[f"model.layers.{n}.self_attn.k_scale"] = values.to(torch.bfloat16).reshape(heads, 1, 1)
        tensors[f"model.layers.{n}.self_attn.v_scale"] = (values * 2).to(torch.bfloat16).reshape(heads, 1, 1)
    config = {"architectures": ["LlamaForCausalLM"], "num_attention_heads": 8,
              "num_key_value_heads": config_heads or heads}
    return checkpoint(tensors, quantization_config=cli.compressed_tensors("attn_head"), config=config)


def _errors(data: dict[str, object]) -> list[str]:
    return [a["message"] for a in data["anomalies"] if a["level"] == "error"]


def _section(stdout: str) -> list[str]:
    """The ``tensor parallel`` section of the human output: its title and indented lines."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("tensor parallel"))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), len(lines))
    return lines[start:end]


@pytest.mark.parametrize(("heads", "tp_size", "expected"), [
    (4, 2, [[0, 1], [2, 3]]),
    (4, 4, [[0], [1], [2], [3]]),
    (4, 1, [[0, 1, 2, 3]]),
    (2, 4, [[0], [0], [1], [1]]),
    (2, 8, [[0], [0], [0], [0], [1], [1], [1], [1]]),
])
def test_json_gives_each_ranks_heads_by_vllms_rule(run_script, cli: SimpleNamespace, checkpoint: Callable,
                                                   heads: int, tp_size: int, expected: list[list[int]]) -> None:
    directory = _per_head(cli, checkpoint, heads)
    result = run_script("inspect", directory, "--tp-size", tp_size, "--json")
    assert result.returncode == 0, result.stderr
    data = cli.as_json(result)
    assert list(data) == [*TOP_KEYS[:4], "tensor_parallel", *TOP_KEYS[4:]]  # documented: after anomalies
    assert data["tensor_parallel"] == {
        "tp_size": tp_size, "kv_heads": heads,
        "ranks": [{"rank": r, "heads": h} for r, h in enumerate(expected)],
    }
    plain = cli.as_json(run_script("inspect", directory, "--json"))
    assert list(plain) == TOP_KEYS  # the key appears only with --tp-size; the others are unchanged
    assert {k: v for k, v in data.items() if k != "tensor_parallel"} == plain


def test_two_ranks_over_four_heads_split_them(run_script, cli: SimpleNamespace, checkpoint: Callable) -> None:
    result = run_script("inspect", _per_head(cli, checkpoint, 4), "--tp-size", "2")
    assert result.returncode == 0, result.stderr
    assert _section(result.stdout) == [
        "tensor parallel (2 ranks), 4 KV heads:",
        "  rank 0: heads 0-1",
        "  rank 1: heads 2-3",
    ]


def test_four_ranks_over_two_heads_replicate_them(run_script, cli: SimpleNamespace, checkpoint: Callable) -> None:
    result = run_script("inspect", _per_head(cli, checkpoint, 2), "--tp-size", "4")
    assert result.returncode == 0, result.stderr
    assert _section(result.stdout) == [
        "tensor parallel (4 ranks), 2 KV heads:",
        "  rank 0: head 0 (replicated on ranks 0-1)",
        "  rank 1: head 0 (replicated on ranks 0-1)",
        "  rank 2: head 1 (replicated on ranks 2-3)",
        "  rank 3: head 1 (replicated on ranks 2-3)",
    ]


def test_three_ranks_over_two_heads_is_an_error_and_exit_1(run_script, cli: SimpleNamespace,
                                                          checkpoint: Callable) -> None:
    directory = _per_head(cli, checkpoint, 2)
    result = run_script("inspect", directory, "--tp-size", "3", "--json")
    assert result.returncode == 1, result.stderr
    data = cli.as_json(result)
    assert data["tensor_parallel"] == {"tp_size": 3, "kv_heads": 2, "ranks": []}
    errors = _errors(data)
    assert len(errors) == 1
    assert "--tp-size 3 does not fit the checkpoint's 2 KV heads" in errors[0]
    assert "model.layers.0.self_attn.k_scale" in errors[0]
    assert "Sizes that fit: 1, 2, 4, 6, 8, ..." in errors[0]
    human = run_script("inspect", directory, "--tp-size", "3")
    assert human.returncode == 1
    assert _section(human.stdout) == [
        "tensor parallel (3 ranks): 2 KV heads cannot be split over 3 ranks (see the error below)"]
    assert errors[0] in human.stdout


def test_per_tensor_scales_are_the_same_on_every_rank(run_script, cli: SimpleNamespace) -> None:
    fixture = cli.FIXTURES / "llmcompressor" / "fp8_kv_tensor"
    result = run_script("inspect", fixture, "--tp-size", "4", "--json")
    assert result.returncode == 0, result.stderr
    data = cli.as_json(result)
    assert data["tensor_parallel"] == {"tp_size": 4, "kv_heads": None,
                                       "ranks": [{"rank": r, "heads": None} for r in range(4)]}
    assert {k: v for k, v in data.items() if k != "tensor_parallel"} == cli.as_json(
        run_script("inspect", fixture, "--json"))
    human = run_script("inspect", fixture, "--tp-size", "4")
    assert human.returncode == 0
    assert _section(human.stdout) == [
        "tensor parallel (4 ranks): no per-head scales; every rank uses the same scales"]


def test_scales_that_disagree_with_config_are_flagged(run_script, cli: SimpleNamespace,
                                                      checkpoint: Callable) -> None:
    # 4 per-head values while config.json says 2 KV heads: a load refuses them (the shape error);
    # the split shown follows the scales, with a warning saying so.
    result = run_script("inspect", _per_head(cli, checkpoint, 4, config_heads=2), "--tp-size", "2", "--json")
    assert result.returncode == 1
    data = cli.as_json(result)
    assert data["tensor_parallel"]["kv_heads"] == 4
    warnings = [a["message"] for a in data["anomalies"] if a["level"] == "warning"]
    assert [w for w in warnings if "hold 4 KV heads" in w and "num_key_value_heads=2" in w]


@pytest.mark.parametrize("bad", ["0", "-1", "x", "1.5", ""])
def test_a_bad_tp_size_is_bad_usage(run_script, cli: SimpleNamespace, bad: str) -> None:
    result = run_script("inspect", cli.FIXTURES / "llmcompressor" / "fp8_kv_tensor", "--tp-size", bad, "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage" in result.stderr and "--tp-size" in result.stderr
