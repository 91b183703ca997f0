"""A Hugging Face ``transformers`` KV cache that stores fp8 keys and values with a checkpoint's scales.

``pip install kvcore[transformers]``; this is the only kvcore module that imports transformers::

    import kvcore.transformers
    cache = kvcore.transformers.kv_cache(model, "path/to/checkpoint")
    out = model.generate(input_ids, past_key_values=cache, max_new_tokens=32)

transformers drops a quantized checkpoint's KV-cache scales when it loads the model, and its own
``QuantizedCache`` calibrates its scales at run time. :func:`kv_cache` reads the checkpoint's
calibrated per-layer scales (through the installed kvcore plugins, as ``kvcore.read_kv_scales``
does) and returns a cache whose layers store ``quantize_kv(x, scale)`` and hand attention
``dequantize_kv(stored, scale)``: what an fp8 attention kernel in vLLM reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from kvcore._checkpoint.reader import Checkpoint, read_checkpoint
from kvcore._errors import QuantConfigError, WeightLoadError
from kvcore._loading.load import parallel
from kvcore._loading.read_scales import CheckpointScales, checked_contributions, scales_of
from kvcore._runtime.kv_quant import FP8_DTYPES, KvCacheDtypeError, dequantize_shaped, quantize_shaped
from kvcore._warn import warn

try:
    import transformers
    from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer, get_layer_types_and_kwargs
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "kvcore.transformers needs Hugging Face transformers >= 5.20: pip install 'kvcore[transformers]'"
    ) from error

__all__ = ["KvcoreCache", "kv_cache"]

MIN_TRANSFORMERS = (5, 20)
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_NOT_FP8 = {
    "auto": "kv_cache_dtype='auto' is an unquantized cache, which needs no scales: use transformers' own "
    "DynamicCache (the default) instead",
    "nvfp4": "kvcore's cache stores fp8 only: an NVFP4 cache also needs a scale per block of 16 values, "
    "computed at run time, which no checkpoint carries",
    "int8": "an int8 cache needs asymmetric int8 scales and zero points; kvcore's cache stores fp8 only",
}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


if _version(transformers.__version__) < MIN_TRANSFORMERS:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"kvcore.transformers needs transformers >= 5.20, found {transformers.__version__}: "
        "pip install 'kvcore[transformers]'"
    )


class _Fp8Storage(DynamicLayer):
    """A transformers cache layer that stores what ``update`` receives as scaled fp8.

    The parent layer keeps its own logic (concatenation, sliding window, cropping, beam reordering,
    mask sizes) on the fp8 tensors; ``update`` returns them dequantized in the input's dtype.
    """

    def __init__(self, *, k_scale: torch.Tensor, v_scale: torch.Tensor, fp8: torch.dtype, name: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.k_scale = k_scale
        self.v_scale = v_scale
        self.fp8_dtype = fp8
        self.name = name
        self._scales: tuple[torch.Tensor, torch.Tensor] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, k_scale={_plain(self.k_scale)}, v_scale={_plain(self.v_scale)})"

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        heads = key_states.shape[-3] if key_states.dim() >= 3 else None
        for what, scale in (("k_scale", self.k_scale), ("v_scale", self.v_scale)):
            if scale.numel() > 1 and scale.numel() != heads:
                raise WeightLoadError(
                    f"{self.name}.{what} has {scale.numel()} per-head values but this layer's keys and values "
                    f"have {heads} KV heads (shape {list(key_states.shape)})"
                )
        self._scales = (self._shaped(self.k_scale, key_states), self._shaped(self.v_scale, value_states))
        # The parent layer takes its storage dtype from what it is given: fp8.
        empty_keys = key_states[..., :0, :].to(self.fp8_dtype)
        super().lazy_initialization(empty_keys, value_states[..., :0, :].to(self.fp8_dtype))

    @staticmethod
    def _shaped(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        scale = scale.to(device=like.device, dtype=torch.float32)
        return scale.reshape(()) if scale.numel() == 1 else scale.reshape(1, -1, 1, 1)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``key_states``/``value_states`` as fp8; return every stored key and value, dequantized."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self._scales is not None
        k_scale, v_scale = self._scales
        keys, values = super().update(
            quantize_shaped(key_states, k_scale, self.fp8_dtype),
            quantize_shaped(value_states, v_scale, self.fp8_dtype),
            *args,
            **kwargs,
        )
        keys = dequantize_shaped(keys, k_scale, key_states.dtype)
        return keys, dequantize_shaped(values, v_scale, value_states.dtype)


class Fp8Layer(_Fp8Storage):
    """A full-attention layer storing fp8 keys and values with fixed, calibrated scales."""


class Fp8SlidingWindowLayer(_Fp8Storage, DynamicSlidingWindowLayer):
    """A sliding-window (or chunked) attention layer storing fp8 keys and values with fixed scales."""


_LAYER_CLASSES = {DynamicLayer: Fp8Layer, DynamicSlidingWindowLayer: Fp8SlidingWindowLayer}


class KvcoreCache(Cache):
    """A ``transformers.Cache`` of :class:`Fp8Layer` / :class:`Fp8SlidingWindowLayer`, one per decoder layer.

    ``layers[i].keys`` / ``.values`` hold the fp8 values; ``layers[i].k_scale`` / ``.v_scale`` the
    float32 scales (0-dim, or ``(H_kv,)`` per head). ``checkpoint`` and ``kv_cache_dtype`` say where
    they came from.
    """

    def __init__(self, layers: list[_Fp8Storage], *, checkpoint: Path, kv_cache_dtype: str) -> None:
        super().__init__(layers=layers)
        self.checkpoint = checkpoint
        self.kv_cache_dtype = kv_cache_dtype

    def __repr__(self) -> str:
        return f"KvcoreCache({str(self.checkpoint)!r}, kv_cache_dtype={self.kv_cache_dtype!r}, layers={self.layers})"


def kv_cache(model: Any, checkpoint: str | Path, *, kv_cache_dtype: str = "fp8") -> KvcoreCache:
    """A KV cache for the Hugging Face causal LM ``model`` that quantizes with ``checkpoint``'s scales.

    Pass it as the model's cache argument: ``model(input_ids, past_key_values=cache, use_cache=True)``
    or ``model.generate(..., past_key_values=cache)`` (transformers >= 5.24 also names it ``cache=``).
    Layer N's keys and values are stored as ``kvcore.quantize_kv(x, scale)`` with the k/v scales of
    the checkpoint's ``model.layers.N.self_attn`` (per-head scales included, as kvcore's rules make
    them: one of k and v serves for both, a layer with neither uses 1.0 with a ``UserWarning``);
    ``update`` returns everything stored, the new tokens included, dequantized in the input's
    dtype: attention always reads what the cache holds, as in vLLM.

    ``kv_cache_dtype``: ``"fp8"``/``"fp8_e4m3"`` (``float8_e4m3fn``) or ``"fp8_e5m2"`` (the same
    scales applied, see ``kvcore.quantize_kv``). ``"auto"``, ``"nvfp4"`` or ``"int8"`` raise
    ``KvCacheDtypeError`` (a ``kvcore.KvcoreError`` and ``ValueError``) saying why.

    Raises ``kvcore.WeightLoadError`` when the checkpoint is for another model (its layer count or
    KV heads differ from ``model.config``'s), and ``kvcore.QuantConfigError`` when the checkpoint
    was not calibrated for an fp8 KV cache (no KV-cache scales at all, or an int or 4-bit
    ``kv_cache_scheme``). A new cache is empty; use one cache per sequence batch, as with
    transformers' own caches.
    """
    fp8 = _fp8_dtype(kv_cache_dtype)
    directory = Path(checkpoint)
    config = _text_config(model)
    model_name = _model_name(model, config)
    ckpt = read_checkpoint(directory)
    _check_calibration(ckpt, directory)
    found = scales_of(ckpt, checked_contributions(ckpt, None, None), parallel(ckpt, 0, 1), None)
    scaled, scales = _scaled_modules(found, directory), found.final
    by_layer = _by_layer(scales, directory)
    layer_types = _layer_types(config, model_name)
    _check_fits(ckpt, directory, model_name, config, by_layer, len(layer_types))
    unscaled = sorted(set(scales) - scaled)
    if unscaled:
        warn(
            f"checkpoint {directory} has no k or v scale for {', '.join(unscaled)}; their fp8 KV cache uses "
            "1.0, which may lose accuracy"
        )
    if found.meaning.caveat:
        warn(f"checkpoint {directory}: {found.meaning.caveat} ({', '.join(sorted(scaled))})")
    layers: list[_Fp8Storage] = []
    for index, (parent, layer_kwargs) in enumerate(layer_types):
        module, values = by_layer[index]
        layers.append(
            _LAYER_CLASSES[parent](
                k_scale=_tensor(values["k_scale"]), v_scale=_tensor(values["v_scale"]), fp8=fp8,
                name=module, **layer_kwargs,
            )
        )
    return KvcoreCache(layers, checkpoint=directory, kv_cache_dtype=kv_cache_dtype)


def _fp8_dtype(kv_cache_dtype: str) -> torch.dtype:
    if kv_cache_dtype in FP8_DTYPES:
        return FP8_DTYPES[kv_cache_dtype]
    reason = _NOT_FP8.get(str(kv_cache_dtype).lower())
    choices = ", ".join(map(repr, FP8_DTYPES))
    if reason is not None:
        raise KvCacheDtypeError(
            f"kvcore.transformers.kv_cache(kv_cache_dtype={kv_cache_dtype!r}): the checkpoint's scales calibrate "
            f"an fp8 KV cache; {reason}. Use one of {choices}"
        )
    raise KvCacheDtypeError(f"unknown kv_cache_dtype {kv_cache_dtype!r}; use one of {choices}")


def _text_config(model: Any) -> Any:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        raise TypeError(
            f"kv_cache takes a Hugging Face transformers model (with a .config), got {type(model).__name__}"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise WeightLoadError(
            f"{type(model).__name__} is an encoder-decoder model; kvcore.transformers.kv_cache is for decoder-only "
            "causal LMs"
        )
    return config.get_text_config(decoder=True)


def _model_name(model: Any, config: Any) -> str:
    path = getattr(model.config, "_name_or_path", "") or getattr(config, "_name_or_path", "")
    return f"{type(model).__name__}" + (f" ({path})" if path else "")


def _check_calibration(ckpt: Checkpoint, directory: Path) -> None:
    """Refuse a checkpoint whose config says its KV cache was calibrated for something other than fp8."""
    quant = ckpt.quant_config
    raw: Mapping[str, Any] = quant.raw if quant is not None else {}
    scheme = raw.get("kv_cache_scheme")
    if isinstance(scheme, Mapping) and quant is not None and quant.quant_method == "compressed-tensors":
        kind, bits = scheme.get("type"), scheme.get("num_bits")
        if kind != "float" or bits != 8:
            raise QuantConfigError(
                f"checkpoint {directory} calibrated its KV cache for {kind} {bits}-bit values "
                f"(kv_cache_scheme {dict(scheme)}): its scales do not follow the fp8 convention amax/448, so "
                "kvcore will not quantize an fp8 cache with them. Use a checkpoint quantized with an fp8 KV cache"
            )


def _by_layer(scales: Mapping[str, Mapping[str, Any]], directory: Path) -> dict[int, tuple[str, Mapping[str, Any]]]:
    """Layer index -> (checkpoint attention module, its scales): ``model.layers.N.self_attn.attn`` -> N."""
    found: dict[int, tuple[str, Mapping[str, Any]]] = {}
    for module, values in scales.items():
        match = _LAYER_INDEX.search(module)
        if match is None:
            raise WeightLoadError(
                f"checkpoint {directory} has KV-cache scales for {module!r}, which names no decoder layer "
                "('...layers.N...'); kvcore.transformers cannot tell which layer of the model it belongs to"
            )
        index = int(match.group(1))
        if index in found:
            raise WeightLoadError(
                f"checkpoint {directory} has KV-cache scales for both {found[index][0]!r} and {module!r}: two "
                f"attention modules for decoder layer {index}"
            )
        found[index] = (module, values)
    return found


def _layer_types(config: Any, model_name: str) -> list[tuple[type, dict[str, Any]]]:
    """Per decoder layer, the transformers layer class kvcore extends, and its arguments."""
    from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING

    if getattr(config, "kv_lora_rank", None) is not None:
        raise WeightLoadError(
            f"{model_name} uses multi-head latent attention (kv_lora_rank={config.kv_lora_rank}): depending on the "
            "tool, a checkpoint's scales describe the latent cache or per-head keys and values, so "
            "kvcore.transformers does not quantize an MLA cache"
        )
    types, kwargs = get_layer_types_and_kwargs(config)
    result = []
    for index, (kind, layer_kwargs) in enumerate(zip(types, kwargs, strict=True)):
        parent = DYNAMIC_LAYER_TYPE_MAPPING.get(kind)
        if parent not in _LAYER_CLASSES:
            raise WeightLoadError(
                f"{model_name} layer {index} is a {kind!r} layer; kvcore's fp8 cache holds full and "
                "sliding-window attention layers only"
            )
        result.append((parent, layer_kwargs))
    return result


def _check_fits(
    ckpt: Checkpoint,
    directory: Path,
    model_name: str,
    config: Any,
    by_layer: Mapping[int, tuple[str, Mapping[str, Any]]],
    layers: int,
) -> None:
    """The checkpoint's layer count and KV heads must be the model's."""
    ckpt_config = ckpt.config
    text_config = ckpt_config.get("text_config")
    ckpt_text = text_config if isinstance(text_config, dict) else ckpt_config
    heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None)
    ckpt_layers = ckpt_text.get("num_hidden_layers")
    ckpt_heads = ckpt_text.get("num_key_value_heads", ckpt_text.get("num_attention_heads"))
    where = f"checkpoint {directory} does not fit {model_name}"
    if isinstance(ckpt_layers, int) and ckpt_layers != layers:
        raise WeightLoadError(
            f"{where}: the checkpoint has {ckpt_layers} decoder layers (config.json num_hidden_layers), the model "
            f"{layers}. Use the checkpoint of this model"
        )
    outside = sorted(i for i in by_layer if i >= layers)
    missing = sorted(set(range(layers)) - set(by_layer))
    if outside or missing:
        raise WeightLoadError(
            f"{where}: the checkpoint has KV-cache scales for decoder layers {sorted(by_layer)}, the model has "
            f"{layers} layers (0..{layers - 1}). Use the checkpoint of this model"
        )
    if isinstance(ckpt_heads, int) and heads is not None and ckpt_heads != heads:
        raise WeightLoadError(
            f"{where}: the checkpoint has {ckpt_heads} KV heads (config.json num_key_value_heads), the model "
            f"{heads}. Use the checkpoint of this model"
        )
    for index, (module, values) in sorted(by_layer.items()):
        for what in ("k_scale", "v_scale"):
            value = values[what]
            if isinstance(value, list) and len(value) != heads:
                raise WeightLoadError(
                    f"{where}: {module}.{what} has {len(value)} per-head values, the model's layer {index} "
                    f"has {heads} KV heads. Use the checkpoint of this model"
                )


def _scaled_modules(found: CheckpointScales, directory: Path) -> set[str]:
    """The attention modules the checkpoint has a k or v scale for (none at all is an error)."""
    scaled = {module for module, scales in found.loaded.items() if {"k_scale", "v_scale"} & set(scales)}
    if not scaled:
        raise QuantConfigError(
            f"checkpoint {directory} has no KV-cache scales: it was not calibrated for an fp8 KV cache, and "
            "kvcore.transformers.kv_cache quantizes with a checkpoint's scales. Use a checkpoint quantized with "
            "an fp8 KV cache (llm-compressor kv_cache_scheme, Quark kv_cache_group, ModelOpt FP8 KV, AutoFP8 "
            "static), or transformers' own DynamicCache"
        )
    return scaled


def _tensor(value: float | list[float]) -> torch.Tensor:
    tensor = torch.tensor(value, dtype=torch.float32)
    return tensor.reshape(()) if tensor.numel() == 1 else tensor.reshape(-1)


def _plain(scale: torch.Tensor) -> float | list[float]:
    return scale.tolist() if scale.numel() > 1 else float(scale)
