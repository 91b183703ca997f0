"""Models shaped like each architecture of ``tests/fixtures/real2``, as an engine builds them.

Shapes come from the checkpoint's ``config.json`` (what an engine builds from); dtypes, and which
linears carry fp8 ``weight_scale`` / ``input_scale``, from its safetensors header. Two flavours:

- generic: unfused modules named like the checkpoint, ``kvcore.Attention`` at ``P.attn``;
- packed (vLLM's layout): ``qkv_proj`` (q‖k‖v rows), ``gate_up_proj``, DeepSeek's
  ``fused_qkv_a_proj`` (q_a_proj‖kv_a_proj_with_mqa), routed experts fused in
  ``experts.w13_weight [E, 2I, H]`` / ``experts.w2_weight [E, H, I]`` loaded through
  ``weight_loader(param, loaded_weight, shard_id, expert_id)`` (the root's
  ``packed_experts_mapping``), and an MLA attention at ``self_attn.mla_attn.mla_attn``.

What the checkpoint already fuses (Phi-3's ``qkv_proj`` / ``gate_up_proj``, Quark's 3-D
``mlp.experts.gate_up_proj`` / ``down_proj``) is held whole in both flavours; in the packed one a
fused linear's weight has its own ``weight_loader(param, loaded_weight)``, as vLLM's do.

``Built.views`` says where each checkpoint tensor must land: ``name -> (parameter, index)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from shared_support import read_headers
from torch import nn

import kvcore

FILL = -7.0
SCALE_LEAVES = ("weight_scale", "input_scale")
QKV = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v")}
GATE_UP = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
QKV_A = {"q_a_proj": ("fused_qkv_a_proj", 0), "kv_a_proj_with_mqa": ("fused_qkv_a_proj", 1)}
EXPERTS = {"gate_proj": ("w13", "w1"), "up_proj": ("w13", "w3"), "down_proj": ("w2", "w2")}
MIXTRAL_EXPERTS = {"w1": ("w13", "w1"), "w3": ("w13", "w3"), "w2": ("w2", "w2")}
"""ModelOpt's Mixtral names its experts' linears w1 (gate), w3 (up), w2 (down)."""
K_NORM = ("qwen3", "qwen3_moe")

View = tuple[nn.Parameter, tuple[Any, ...]]


@dataclasses.dataclass
class Built:
    model: nn.Module
    views: dict[str, View]
    """Checkpoint tensor name -> (parameter, index) where it must land."""
    attention: dict[int, str]
    """Layer number -> the name of its ``kvcore.Attention`` module."""



def build(checkpoint: Path, *, packed: bool = False, use_mla: bool = False, kv_cache_dtype: str = "fp8") -> Built:
    """The model for ``checkpoint``; ``use_mla`` only matters for an MLA model (``kv_lora_rank``)."""
    return _Builder(Path(checkpoint), packed, use_mla, kv_cache_dtype).build()


def whole_loader(param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
    """A fused linear's loader for a checkpoint that stores it fused: the whole tensor, as vLLM's."""
    if tuple(loaded_weight.shape) != tuple(param.shape):
        raise ValueError(f"shape {list(loaded_weight.shape)}, expected {list(param.shape)}")
    param.data.copy_(loaded_weight)


class Fused(nn.Module):
    """Shards' rows stacked in one weight (QKVParallelLinear / MergedColumnParallelLinear).

    ``weight_loader(param, loaded_weight, shard_id)`` writes the shard's row block; per-tensor
    fp8 scales live in float32 ``(num_shards,)`` parameters at the shard's index.
    """

    def __init__(self, b: _Builder, n_in: int, shards: Mapping[int | str, tuple[str, int]]) -> None:
        super().__init__()
        self.rows = {shard: rows for shard, (_, rows) in shards.items()}
        self.offset = dict(zip(shards, itertools.accumulate([0, *self.rows.values()]), strict=False))
        first = next(iter(shards.values()))[0]
        self.weight = b.param(f"{first}.weight", (sum(self.rows.values()), n_in), loader=self.load_rows)
        for shard, (prefix, rows) in shards.items():
            b.views[f"{prefix}.weight"] = (self.weight, (slice(self.offset[shard], self.offset[shard] + rows),))
        for leaf in SCALE_LEAVES:
            if f"{first}.{leaf}" in b.h:
                scale = b.param(None, (len(shards),), torch.float32, loader=self.load_scale)
                self.register_parameter(leaf, scale)
                for index, (prefix, _) in enumerate(shards.values()):
                    b.views[f"{prefix}.{leaf}"] = (scale, (index,))

    def load_rows(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: int | str) -> None:
        start, rows = self.offset[shard_id], self.rows[shard_id]
        if tuple(loaded_weight.shape) != (rows, *param.shape[1:]):
            want = [rows, *param.shape[1:]]
            raise ValueError(f"shard {shard_id!r}: shape {list(loaded_weight.shape)}, expected {want}")
        param.data[start : start + rows].copy_(loaded_weight)

    def load_scale(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: int | str) -> None:
        if loaded_weight.numel() != 1:
            raise ValueError(f"shard {shard_id!r}: a per-tensor scale has one element, got {list(loaded_weight.shape)}")
        param.data[list(self.rows).index(shard_id)] = loaded_weight.reshape(()).to(torch.float32)


class FusedExperts(nn.Module):
    """vLLM's FusedMoE parameters: ``w13_weight [E, 2I, H]`` (gate rows, then up), ``w2_weight [E, H, I]``.

    Per-tensor fp8 scales: ``w13_<leaf> [E, 2]`` and ``w2_<leaf> [E]``, float32. Every parameter
    loads through ``weight_loader(param, loaded_weight, shard_id, expert_id)``; ``calls`` records
    ``(parameter leaf, shard_id, expert_id)``.
    """

    HALF: ClassVar[dict[str, int]] = {"w1": 0, "w3": 1}

    def __init__(self, b: _Builder, prefix: str, keys: Mapping[str, tuple[str, str]], count: int, inter: int) -> None:
        super().__init__()
        hid = b.cfg["hidden_size"]
        self.inter = inter
        self.calls: list[tuple[str, str, int]] = []
        by_shard = {shard: key for key, (_, shard) in keys.items()}
        gate, down = f"{prefix}.0.{by_shard['w1']}", f"{prefix}.0.{by_shard['w2']}"
        self.w13_weight = b.param(f"{gate}.weight", (count, 2 * inter, hid), loader=self.weight_loader)
        self.w2_weight = b.param(f"{down}.weight", (count, hid, inter), loader=self.weight_loader)
        leaves = [leaf for leaf in SCALE_LEAVES if f"{gate}.{leaf}" in b.h]
        for leaf in leaves:
            self.register_parameter(f"w13_{leaf}", b.param(None, (count, 2), torch.float32, self.weight_loader))
            self.register_parameter(f"w2_{leaf}", b.param(None, (count,), torch.float32, self.weight_loader))
        for expert, (key, (fused, shard)) in itertools.product(range(count), keys.items()):
            name = f"{prefix}.{expert}.{key}"
            if fused == "w13":
                half = self.HALF[shard]
                b.views[f"{name}.weight"] = (self.w13_weight, (expert, slice(half * inter, (half + 1) * inter)))
                b.views.update({f"{name}.{leaf}": (getattr(self, f"w13_{leaf}"), (expert, half)) for leaf in leaves})
            else:
                b.views[f"{name}.weight"] = (self.w2_weight, (expert,))
                b.views.update({f"{name}.{leaf}": (getattr(self, f"w2_{leaf}"), (expert,)) for leaf in leaves})

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: str, expert_id: int) -> None:
        leaf = next(name for name, p in self.named_parameters(recurse=False) if p is param)
        self.calls.append((leaf, shard_id, expert_id))
        if param.dim() == 3:  # weights
            if shard_id == "w2":
                block = param.data[expert_id]
            else:
                half = self.HALF[shard_id]
                block = param.data[expert_id, half * self.inter : (half + 1) * self.inter]
            if tuple(loaded_weight.shape) != tuple(block.shape):
                raise ValueError(f"{leaf} {shard_id} of expert {expert_id}: shape {list(loaded_weight.shape)}")
            block.copy_(loaded_weight)
            return
        if loaded_weight.numel() != 1:
            raise ValueError(f"{leaf}: a per-tensor scale has one element, got {list(loaded_weight.shape)}")
        index = (expert_id,) if shard_id == "w2" else (expert_id, self.HALF[shard_id])
        param.data[index] = loaded_weight.reshape(()).to(torch.float32)


class _Builder:
    def __init__(self, checkpoint: Path, packed: bool, use_mla: bool, kv_cache_dtype: str) -> None:
        self.cfg: dict[str, Any] = json.loads((checkpoint / "config.json").read_text())
        self.h = read_headers(checkpoint)
        self.packed, self.use_mla, self.kv_cache_dtype = packed, use_mla, kv_cache_dtype
        self.views: dict[str, View] = {}
        self.attention: dict[int, str] = {}
        self.expert_keys: Mapping[str, tuple[str, str]] | None = None

    def build(self) -> Built:
        cfg, hid = self.cfg, self.cfg["hidden_size"]
        inner = nn.Module()
        inner.embed_tokens = self.holder("model.embed_tokens", weight=(cfg["vocab_size"], hid))
        inner.layers = nn.ModuleList(self.layer(i) for i in range(cfg["num_hidden_layers"]))
        inner.norm = self.holder("model.norm", weight=(hid,))
        model = nn.Module()
        model.model = inner
        if not cfg.get("tie_word_embeddings", False):
            model.lm_head = self.holder("lm_head", weight=(cfg["vocab_size"], hid))
        if self.packed:
            model.packed_modules_mapping = {**QKV, **GATE_UP, **(QKV_A if cfg.get("q_lora_rank") else {})}
            if self.expert_keys is not None:
                model.packed_experts_mapping = dict(self.expert_keys)
        return Built(model, self.views, self.attention)

    # parameters and small modules

    def param(self, name: str | None, shape: tuple[int, ...], dtype: torch.dtype | None = None,
              loader: Any = None) -> nn.Parameter:
        """A parameter filled with ``FILL``, of ``name``'s dtype in the checkpoint unless ``dtype`` says."""
        assert dtype is not None or name is not None
        param = nn.Parameter(torch.full(shape, FILL, dtype=dtype or self.h[name][1]), requires_grad=False)
        if loader is not None:
            param.weight_loader = loader
        return param

    def plain(self, name: str, shape: tuple[int, ...]) -> nn.Parameter:
        """A parameter that holds checkpoint tensor ``name`` as it is."""
        param = self.param(name, shape)
        self.views[name] = (param, ())
        return param

    def holder(self, prefix: str, **shapes: tuple[int, ...]) -> nn.Module:
        module = nn.Module()
        for leaf, shape in shapes.items():
            module.register_parameter(leaf, self.plain(f"{prefix}.{leaf}", shape))
        return module

    def norm(self, prefix: str, size: int) -> nn.Module:
        return self.holder(prefix, weight=(size,))

    def linear(self, prefix: str, n_in: int, n_out: int) -> nn.Module:
        """An unfused projection; its fp8 scales as the checkpoint shapes them (``()`` or ``(1,)``)."""
        module = self.holder(prefix, weight=(n_out, n_in))
        if f"{prefix}.bias" in self.h:
            module.bias = self.plain(f"{prefix}.bias", (n_out,))
        for leaf in SCALE_LEAVES:
            if f"{prefix}.{leaf}" in self.h:
                module.register_parameter(leaf, self.plain(f"{prefix}.{leaf}", self.h[f"{prefix}.{leaf}"][0]))
        return module

    def whole(self, prefix: str, n_in: int, n_out: int) -> nn.Module:
        """A projection the checkpoint stores fused; the packed flavour loads it with its own loader."""
        module = self.linear(prefix, n_in, n_out)
        if self.packed:
            module.weight.weight_loader = whole_loader
        return module

    def gated(self, prefix: str, inter: int) -> nn.Module:
        """A dense gated MLP (also DeepSeek's shared experts)."""
        hid = self.cfg["hidden_size"]
        mlp = nn.Module()
        if self.cfg["model_type"] == "phi3":
            mlp.gate_up_proj = self.whole(f"{prefix}.gate_up_proj", hid, 2 * inter)
        elif self.packed:
            mlp.gate_up_proj = Fused(self, hid, {0: (f"{prefix}.gate_proj", inter), 1: (f"{prefix}.up_proj", inter)})
        else:
            mlp.gate_proj = self.linear(f"{prefix}.gate_proj", hid, inter)
            mlp.up_proj = self.linear(f"{prefix}.up_proj", hid, inter)
        mlp.down_proj = self.linear(f"{prefix}.down_proj", inter, hid)
        return mlp

    # blocks

    def layer(self, i: int) -> nn.Module:
        p, hid = f"model.layers.{i}", self.cfg["hidden_size"]
        layer = nn.Module()
        if isinstance(self.cfg.get("kv_lora_rank"), int):
            layer.self_attn = self.mla_attention(i, f"{p}.self_attn")
        else:
            layer.self_attn = self.attention_block(i, f"{p}.self_attn")
        if self.is_moe(i):
            name, moe = self.moe(p)
            layer.add_module(name, moe)
        else:
            layer.mlp = self.gated(f"{p}.mlp", self.cfg["intermediate_size"])
        layer.input_layernorm = self.norm(f"{p}.input_layernorm", hid)
        layer.post_attention_layernorm = self.norm(f"{p}.post_attention_layernorm", hid)
        return layer

    def attention_block(self, i: int, p: str) -> nn.Module:
        cfg, hid = self.cfg, self.cfg["hidden_size"]
        heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        dim = cfg.get("head_dim") or hid // heads
        rows = {"q": heads * dim, "k": kv_heads * dim, "v": kv_heads * dim}
        block = nn.Module()
        if cfg["model_type"] == "phi3":
            block.qkv_proj = self.whole(f"{p}.qkv_proj", hid, sum(rows.values()))
        elif self.packed:
            block.qkv_proj = Fused(self, hid, {s: (f"{p}.{s}_proj", n) for s, n in rows.items()})
        else:
            for s, n in rows.items():
                block.add_module(f"{s}_proj", self.linear(f"{p}.{s}_proj", hid, n))
        block.o_proj = self.linear(f"{p}.o_proj", heads * dim, hid)
        if cfg["model_type"] in K_NORM:
            block.q_norm = self.norm(f"{p}.q_norm", dim)
            block.k_norm = self.norm(f"{p}.k_norm", dim)
        block.attn = kvcore.Attention(heads, dim, kv_heads, kv_cache_dtype=self.kv_cache_dtype)
        self.attention[i] = f"{p}.attn"
        return block

    def mla_attention(self, i: int, p: str) -> nn.Module:
        """DeepSeek-V2/V3 MLA: q_a_proj/q_a_layernorm/q_b_proj (or q_proj), kv_a_proj_with_mqa, kv_a_layernorm,
        kv_b_proj, o_proj; an MLA cache (``use_mla``: one latent+rope-key head) or expanded per-head K/V."""
        cfg, hid, heads = self.cfg, self.cfg["hidden_size"], self.cfg["num_attention_heads"]
        nope, rope, v_dim = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        q_rank, kv_rank = cfg.get("q_lora_rank"), cfg["kv_lora_rank"]
        block = nn.Module()
        if q_rank and self.packed:
            block.fused_qkv_a_proj = Fused(self, hid, {0: (f"{p}.q_a_proj", q_rank),
                                                       1: (f"{p}.kv_a_proj_with_mqa", kv_rank + rope)})
        else:
            if q_rank:
                block.q_a_proj = self.linear(f"{p}.q_a_proj", hid, q_rank)
            block.kv_a_proj_with_mqa = self.linear(f"{p}.kv_a_proj_with_mqa", hid, kv_rank + rope)
        if q_rank:
            block.q_a_layernorm = self.norm(f"{p}.q_a_layernorm", q_rank)
            block.q_b_proj = self.linear(f"{p}.q_b_proj", q_rank, heads * (nope + rope))
        else:
            block.q_proj = self.linear(f"{p}.q_proj", hid, heads * (nope + rope))
        block.kv_a_layernorm = self.norm(f"{p}.kv_a_layernorm", kv_rank)
        block.kv_b_proj = self.linear(f"{p}.kv_b_proj", kv_rank, heads * (nope + v_dim))
        block.o_proj = self.linear(f"{p}.o_proj", heads * v_dim, hid)
        if self.use_mla:
            attn = kvcore.Attention(heads, kv_rank + rope, 1, kv_cache_dtype=self.kv_cache_dtype, use_mla=True)
        else:
            attn = kvcore.Attention(heads, nope + rope, heads, kv_cache_dtype=self.kv_cache_dtype)
        if self.packed and self.use_mla:  # vLLM: DeepseekV2MLAAttention.mla_attn.mla_attn
            block.mla_attn = nn.Module()
            block.mla_attn.mla_attn = attn
            self.attention[i] = f"{p}.mla_attn.mla_attn"
        else:
            block.attn = attn
            self.attention[i] = f"{p}.attn"
        return block

    def is_moe(self, i: int) -> bool:
        cfg = self.cfg
        if cfg.get("n_routed_experts"):  # DeepSeek
            return i >= cfg.get("first_k_dense_replace", 0) and i % cfg.get("moe_layer_freq", 1) == 0
        if cfg.get("num_experts") or cfg.get("num_local_experts"):  # Qwen3-MoE, Mixtral
            step = cfg.get("decoder_sparse_step") or 1
            return i not in (cfg.get("mlp_only_layers") or []) and (i + 1) % step == 0
        return False

    def moe(self, p: str) -> tuple[str, nn.Module]:
        """The sparse MoE block under the name the checkpoint uses (``mlp`` or ``block_sparse_moe``)."""
        cfg, hid = self.cfg, self.cfg["hidden_size"]
        count = cfg.get("n_routed_experts") or cfg.get("num_experts") or cfg["num_local_experts"]
        inter = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
        name = "block_sparse_moe" if any(n.startswith(f"{p}.block_sparse_moe.") for n in self.h) else "mlp"
        q = f"{p}.{name}"
        moe = nn.Module()
        moe.gate = self.linear(f"{q}.gate", hid, count)
        if f"{q}.gate.e_score_correction_bias" in self.h:
            moe.gate.e_score_correction_bias = self.plain(f"{q}.gate.e_score_correction_bias", (count,))
        if f"{q}.experts.gate_up_proj" in self.h:  # Quark: HF's fused 3-D experts, already [E, 2I, H] / [E, H, I]
            shapes = {"gate_up_proj": (count, 2 * inter, hid), "down_proj": (count, hid, inter)}
            moe.experts = self.holder(f"{q}.experts", **shapes)
        else:
            keys = MIXTRAL_EXPERTS if f"{q}.experts.0.w1.weight" in self.h else EXPERTS
            if self.packed:
                self.expert_keys = keys
                moe.experts = FusedExperts(self, f"{q}.experts", keys, count, inter)
            else:
                moe.experts = nn.ModuleList(self.expert(f"{q}.experts.{e}", keys, inter) for e in range(count))
        if cfg.get("n_shared_experts"):
            moe.shared_experts = self.gated(f"{q}.shared_experts", inter * cfg["n_shared_experts"])
        return name, moe

    def expert(self, prefix: str, keys: Mapping[str, tuple[str, str]], inter: int) -> nn.Module:
        hid = self.cfg["hidden_size"]
        expert = nn.Module()
        for key, (fused, _) in keys.items():
            n_in, n_out = (hid, inter) if fused == "w13" else (inter, hid)
            expert.add_module(key, self.linear(f"{prefix}.{key}", n_in, n_out))
        return expert
