"""Tiny Llama checkpoints for vLLM, written by the tests: bf16 weights, KV-cache scales named per format.

Sizes fit vLLM's CPU backend (an fp8 KV cache needs head_size divisible by 32) and need no hub:
vocab 256, hidden 128, 2 layers, 4 heads, 2 KV heads, head_dim 32. The scales are float32
values that bf16 cannot hold, so a scale rounded through the model dtype shows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from kvcore.testing import write_checkpoint

REPO = Path(__file__).resolve().parents[3]
GENUINE = REPO / "tests" / "fixtures" / "real"
LAYERS, HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTERMEDIATE, VOCAB = 2, 4, 2, 32, 128, 256, 256
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "vocab_size": VOCAB,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
}
KV_SCHEME = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
COMPRESSED_TENSORS = {"quant_method": "compressed-tensors", "format": "dense", "config_groups": {}, "ignore": [],
                      "kv_cache_scheme": KV_SCHEME}
ACME = {"quant_method": "acme-kv", "kv_cache_dtype": "fp8_e4m3"}
ATTN = "model.layers.{}.self_attn.attn"


def k_scale(layer: int) -> float:
    return float(torch.tensor(0.0123 + 0.01 * layer, dtype=torch.float32))


def v_scale(layer: int) -> float:
    return float(torch.tensor(0.0456 + 0.01 * layer, dtype=torch.float32))


EXPECTED = {ATTN.format(i): [k_scale(i), v_scale(i)] for i in range(LAYERS)}
"""``{attention: [k_scale, v_scale]}`` of every checkpoint written here."""

NAMES: dict[str, tuple[dict, Callable[[int], dict[str, float]]]] = {
    # An invented third-party format (examples/kvcore-acme): no engine knows these names.
    "acme": (ACME, lambda i: {"k_proj.kscale": k_scale(i), "v_proj.vscale": v_scale(i)}),
    # compressed-tensors with llm-compressor's legacy names: vLLM's stacked rename breaks them.
    "ct-legacy": (COMPRESSED_TENSORS, lambda i: {"k_proj.output_scale": k_scale(i), "v_proj.output_scale": v_scale(i)}),
    # compressed-tensors with current names: vLLM loads it by itself.
    "ct-current": (COMPRESSED_TENSORS, lambda i: {"k_scale": k_scale(i), "v_scale": v_scale(i)}),
}


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.05).to(torch.bfloat16)

    def ones() -> torch.Tensor:
        return torch.ones(HIDDEN, dtype=torch.bfloat16)

    tensors = {"model.embed_tokens.weight": rand(VOCAB, HIDDEN), "model.norm.weight": ones(),
               "lm_head.weight": rand(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": rand(HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": rand(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": rand(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": rand(HIDDEN, HEADS * HEAD_DIM),
            p + "mlp.gate_proj.weight": rand(INTERMEDIATE, HIDDEN),
            p + "mlp.up_proj.weight": rand(INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": rand(HIDDEN, INTERMEDIATE),
            p + "input_layernorm.weight": ones(),
            p + "post_attention_layernorm.weight": ones(),
        }
    return tensors


def write(directory: Path, kind: str) -> Path:
    """The tiny Llama with ``kind``'s quantization config and KV-cache scale names (see :data:`NAMES`)."""
    quant, scales = NAMES[kind]
    tensors = weights()
    for i in range(LAYERS):
        for name, value in scales(i).items():
            tensors[f"model.layers.{i}.self_attn.{name}"] = torch.tensor([value], dtype=torch.float32)
    return write_checkpoint(directory, tensors, quantization_config=quant, config=CONFIG)
