"""A small Llama-like checkpoint and the vLLM-style tensor-parallel model of one rank of it.

The model holds rank ``r`` of ``T``'s share, as vLLM builds it: column-parallel weights
(``q/k/v/gate/up_proj``) carry ``tp_dim = 0``, row-parallel ones (``o_proj``, ``down_proj``)
``tp_dim = 1``, embeddings, norms and ``lm_head`` are replicated (no ``tp_dim``), and
``kvcore.Attention`` gets the per-rank head counts; with more ranks than KV heads each rank
holds one KV head (replicated over ``T / H_kv`` ranks). The expectations (:func:`chunk`,
:func:`heads`) restate the rules of API.md "Tensor parallelism" independently of kvcore.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from shared_support import read_all  # noqa: F401 - shared helper, used through this module
from torch import nn

import kvcore
from kvcore.testing import write_checkpoint

Q_HEADS, HEAD_DIM, HIDDEN, INTER, VOCAB, LAYERS = 8, 8, 32, 96, 48, 2  # INTER: T = 2, 3, 4 divide it
FILL = -7.0
"""Every parameter starts at this value, so that a block the load never wrote shows."""
PROJ = ("q_proj", "k_proj", "v_proj")
SCALES = ("k_scale", "v_scale", "q_scale")


def config(kv_heads: int, q_heads: int = Q_HEADS) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "num_attention_heads": q_heads, "num_key_value_heads": kv_heads, "head_dim": HEAD_DIM,
        "intermediate_size": INTER, "num_hidden_layers": LAYERS, "vocab_size": VOCAB,
        "tie_word_embeddings": False,
    }  # fmt: skip


def quant_config(per_head: bool) -> dict[str, Any]:
    """compressed-tensors with an fp8 KV cache, per KV head (``attn_head``) or per tensor."""
    scheme = {"num_bits": 8, "type": "float", "strategy": "attn_head" if per_head else "tensor",
              "dynamic": False, "symmetric": True}  # fmt: skip
    return {"quant_method": "compressed-tensors", "format": "dense", "kv_cache_scheme": scheme}


def checkpoint_tensors(cfg: Mapping[str, Any], per_head: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random bf16 weights (q/k/v with biases) and positive, distinct KV-cache scales.

    Per-head: ``P.k_scale`` / ``P.v_scale`` ``(H_kv, 1, 1)`` and ``P.q_scale`` ``(H_q, 1, 1)``;
    per-tensor: ``(1,)``. Every value is distinct, so that a wrong head or chunk shows.
    """
    gen = torch.Generator().manual_seed(seed)
    hq, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(torch.bfloat16)

    def scale(n: int) -> torch.Tensor:
        values = 0.001 * (1 + torch.randperm(64, generator=gen)[:n].float())
        return values.reshape(n, 1, 1).to(torch.bfloat16) if per_head else values[:1].to(torch.bfloat16)

    out = {"model.embed_tokens.weight": rand(VOCAB, HIDDEN), "model.norm.weight": rand(HIDDEN),
           "lm_head.weight": rand(VOCAB, HIDDEN)}  # fmt: skip
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        for proj, heads in zip(PROJ, (hq, hkv, hkv), strict=True):
            out[f"{p}.self_attn.{proj}.weight"] = rand(heads * HEAD_DIM, HIDDEN)
            out[f"{p}.self_attn.{proj}.bias"] = rand(heads * HEAD_DIM)
        out[f"{p}.self_attn.o_proj.weight"] = rand(HIDDEN, hq * HEAD_DIM)
        out[f"{p}.self_attn.k_scale"] = scale(hkv)
        out[f"{p}.self_attn.v_scale"] = scale(hkv)
        out[f"{p}.self_attn.q_scale"] = scale(hq)
        out[f"{p}.mlp.gate_proj.weight"] = rand(INTER, HIDDEN)
        out[f"{p}.mlp.up_proj.weight"] = rand(INTER, HIDDEN)
        out[f"{p}.mlp.down_proj.weight"] = rand(HIDDEN, INTER)
        out[f"{p}.input_layernorm.weight"] = rand(HIDDEN)
        out[f"{p}.post_attention_layernorm.weight"] = rand(HIDDEN)
    return out


def write(directory: Path, kv_heads: int, per_head: bool, q_heads: int = Q_HEADS) -> Path:
    cfg = config(kv_heads, q_heads)
    tensors = checkpoint_tensors(cfg, per_head)
    return write_checkpoint(directory, tensors, config=cfg, quantization_config=quant_config(per_head))




def kv_per_rank(kv_heads: int, size: int) -> int:
    """vLLM's per-rank KV heads: a share, or one replicated head when ranks outnumber heads."""
    return max(1, kv_heads // size)


def param(*shape: int, tp_dim: int | None = None, dtype: torch.dtype = torch.bfloat16) -> nn.Parameter:
    p = nn.Parameter(torch.full(shape, FILL, dtype=dtype), requires_grad=False)
    if tp_dim is not None:
        p.tp_dim = tp_dim  # type: ignore[attr-defined]
    return p


class Holder(nn.Module):
    def __init__(self, **params: nn.Parameter) -> None:
        super().__init__()
        for name, p in params.items():
            self.register_parameter(name, p)


def column(n_in: int, n_out: int, *, bias: bool = False) -> Holder:
    """ColumnParallelLinear: this rank's ``n_out`` output rows."""
    extra = {"bias": param(n_out, tp_dim=0)} if bias else {}
    return Holder(weight=param(n_out, n_in, tp_dim=0), **extra)


def row(n_in: int, n_out: int) -> Holder:
    """RowParallelLinear: this rank's ``n_in`` input columns."""
    return Holder(weight=param(n_out, n_in, tp_dim=1))


def attention(cfg: Mapping[str, Any], _rank: int, size: int) -> nn.Module:
    hq, kv = cfg["num_attention_heads"] // size, kv_per_rank(cfg["num_key_value_heads"], size)
    attn = nn.Module()
    attn.q_proj = column(HIDDEN, hq * HEAD_DIM, bias=True)
    attn.k_proj = column(HIDDEN, kv * HEAD_DIM, bias=True)
    attn.v_proj = column(HIDDEN, kv * HEAD_DIM, bias=True)
    attn.o_proj = row(hq * HEAD_DIM, HIDDEN)
    attn.attn = kvcore.Attention(hq, HEAD_DIM, kv, kv_cache_dtype="fp8")
    return attn


def mlp(size: int) -> nn.Module:
    block = nn.Module()
    block.gate_proj = column(HIDDEN, INTER // size)
    block.up_proj = column(HIDDEN, INTER // size)
    block.down_proj = row(INTER // size, HIDDEN)
    return block


def tp_model(cfg: Mapping[str, Any], rank: int, size: int, *, attn: Any = attention) -> nn.Module:
    """Rank ``rank`` of ``size``'s share of the Llama-like model; ``attn`` builds ``self_attn``."""
    inner = nn.Module()
    inner.embed_tokens = Holder(weight=param(VOCAB, HIDDEN))
    inner.layers = nn.ModuleList()
    for _ in range(cfg["num_hidden_layers"]):
        layer = nn.Module()
        layer.self_attn = attn(cfg, rank, size)
        layer.mlp = mlp(size)
        layer.input_layernorm = Holder(weight=param(HIDDEN))
        layer.post_attention_layernorm = Holder(weight=param(HIDDEN))
        inner.layers.append(layer)
    inner.norm = Holder(weight=param(HIDDEN))
    model = nn.Module()
    model.model = inner
    model.lm_head = Holder(weight=param(VOCAB, HIDDEN))
    return model


def chunk(full: torch.Tensor, dim: int, rank: int, size: int, mine: int) -> torch.Tensor:
    """What a ``tp_dim = dim`` parameter of ``mine`` elements along ``dim`` holds (API.md)."""
    if full.shape[dim] == mine * size:
        return full.chunk(size, dim)[rank]
    parts = full.shape[dim] // mine  # KV heads replicated: f parts, f dividing size
    assert parts * mine == full.shape[dim] and size % parts == 0
    return full.chunk(parts, dim)[rank // (size // parts)]


def heads(values: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """This rank's per-head scales: a block when ``size`` divides H, one head when H divides ``size``."""
    h = values.numel()
    if h % size == 0:
        return values[rank * h // size : (rank + 1) * h // size]
    assert size % h == 0
    return values[rank // (size // h)].reshape(1)


def per_kv_head(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """A per-query-head scale reduced by max over each group of consecutive query heads."""
    return q.reshape(kv_heads, -1).amax(dim=1)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, for bit-exact comparisons (fp8 and bf16 alike)."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def as_list(value: float | list[float]) -> list[float]:
    """A report value as a list: a rank left with one KV head may report it as a scalar."""
    return value if isinstance(value, list) else [value]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, copied."""
    state = dict(model.named_parameters())
    state.update(model.named_buffers())
    return {name: t.detach().clone() for name, t in state.items()}


def assert_untouched(model: nn.Module, before: Mapping[str, torch.Tensor]) -> None:
    after = snapshot(model)
    assert after.keys() == before.keys()
    changed = [name for name in before if not same_bits(before[name], after[name])]
    assert not changed, f"written by a refused load: {changed}"
