"""Every warning kvcore.load, AutoWeightsLoader, Attention, read_kv_scales and mapper_for can emit.

Run as a script by ``test_warning_locations.py`` (``python warning_scenarios.py DIR``), so
that the real stderr is checked: each call that warns sits on its own line, ``"tag": lambda``,
the line each of its warnings must point at. For each call, what it raised (under ``python -W
error`` a warning raises) and what the model holds afterwards is printed as one JSON line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

import kvcore
from kvcore.testing import registered_plugin, tiny_llama, write_checkpoint

Weights = dict[str, torch.Tensor]


class MeaningPlugin:
    """A format plugin (quant_method ``method``) whose scales mean what ``meaning`` says."""

    def __init__(self, method: str, meaning: kvcore.ScaleMeaning) -> None:
        self.method, self.meaning = method, meaning

    @kvcore.hookimpl
    def get_cache_scale_mapper(self, quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
        return kvcore.WeightsMapper() if quant_config.quant_method == self.method else None

    @kvcore.hookimpl
    def get_cache_scale_meaning(self, quant_config: kvcore.QuantConfig) -> kvcore.ScaleMeaning | None:
        return self.meaning if quant_config.quant_method == self.method else None


CAVEAT = "k was measured before k_norm (scenario caveat)"
PLUGINS = [
    MeaningPlugin("acme-caveat", kvcore.ScaleMeaning(caveat=CAVEAT)),
    MeaningPlugin("acme-latent", kvcore.ScaleMeaning(describes="mla_latent")),
]


def fp8_model() -> torch.nn.Module:
    return tiny_llama(kv_cache_dtype="fp8")


def weights(model: torch.nn.Module, *, scales: bool) -> Weights:
    """The model's tensors (seeded values), with k/v scales of 0.5 when ``scales``."""
    gen = torch.Generator().manual_seed(0)
    out = {
        name: torch.rand(p.shape, generator=gen).to(p.dtype)
        for name, p in model.named_parameters()
        if not isinstance(p, kvcore.KVCacheScaleParameter)
    }
    if scales:
        for name, module in model.named_modules():
            if isinstance(module, kvcore.Attention):
                out |= {f"{name}.k_scale": torch.tensor(0.5), f"{name}.v_scale": torch.tensor(0.5)}
    return out


def checkpoints(root: Path) -> dict[str, Path]:
    """The checkpoints the scenarios load, written once."""
    model = fp8_model()
    plain, scaled = weights(model, scales=False), weights(model, scales=True)
    return {
        "plain": write_checkpoint(root / "plain", plain),
        "extra": write_checkpoint(root / "extra", {**plain, "model.stray": torch.zeros(2)}),
        "unknown": write_checkpoint(root / "unknown", plain, quantization_config={"quant_method": "nonesuch"}),
        "caveat": write_checkpoint(root / "caveat", scaled, quantization_config={"quant_method": "acme-caveat"}),
        "latent": write_checkpoint(root / "latent", scaled, quantization_config={"quant_method": "acme-latent"}),
    }


def scenarios(ckpt: dict[str, Path]) -> dict[str, Callable[[torch.nn.Module], object]]:
    """Each call that warns, by tag; it receives a fresh fp8 model."""
    plain, scaled = weights(fp8_model(), scales=False), weights(fp8_model(), scales=True)
    caveat, latent, unknown = kvcore.mapper_for(ckpt["caveat"]), kvcore.mapper_for(ckpt["latent"]), ckpt["unknown"]
    auto = kvcore.AutoWeightsLoader

    return {
        "load-no-scale": lambda m: kvcore.load(m, ckpt["plain"]),
        "load-caveat": lambda m: kvcore.load(m, ckpt["caveat"]),
        "load-latent": lambda m: kvcore.load(m, ckpt["latent"]),
        "load-unexpected": lambda m: kvcore.load(m, ckpt["extra"], strict=False),
        "load-no-plugin": lambda m: kvcore.load(m, unknown, strict=False),
        "load-no-such": lambda m: kvcore.load(m, unknown, plugins=["no-a"], strict=False),
        "auto-no-scale": lambda m: auto(m).load_weights(plain.items()),
        "auto-caveat": lambda m: auto(m).load_weights(scaled.items(), mapper=caveat),
        "auto-latent": lambda m: auto(m).load_weights(scaled.items(), mapper=latent),
        "attention-no-scale": lambda m: first_attention(m).process_weights_after_loading(),
        "read-no-such": lambda _: kvcore.read_kv_scales(unknown, plugins=["no-b"]),
        "mapper-no-such": lambda _: kvcore.mapper_for(unknown, disable_plugins=["no-c"]),
    }


def first_attention(model: torch.nn.Module) -> kvcore.Attention:
    return model.model.layers[0].self_attn.attn


def outcome(tag: str, call: Callable[[torch.nn.Module], object], expected: Weights) -> dict[str, object]:
    """Run one scenario on a fresh model; what it raised and what the model holds afterwards."""
    model = fp8_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    try:
        call(model)
        raised = None
    except (Warning, kvcore.KvcoreError) as exc:  # under -W error a warning raises
        raised = type(exc).__name__
    params = dict(model.named_parameters())
    scales = [n for n, p in params.items() if isinstance(p, kvcore.KVCacheScaleParameter)]
    return {
        "tag": tag,
        "raised": raised,
        "sentinels": [n for n in scales if bool((params[n] == -1).any())],
        "scales": scales,
        "unchanged": sorted(n for n, p in params.items() if torch.equal(p, before[n])),
        "loaded": sorted(n for n, p in params.items() if n in expected and torch.equal(p, expected[n])),
        "parameters": sorted(params),
    }


def main() -> None:
    logging.basicConfig()  # an application that shows its log: each warning must still be said once
    ckpt = checkpoints(Path(sys.argv[1]))
    expected = weights(fp8_model(), scales=False)
    with registered_plugin(PLUGINS[0], "acme-caveat"), registered_plugin(PLUGINS[1], "acme-latent"):
        for tag, call in scenarios(ckpt).items():
            print(json.dumps(outcome(tag, call, expected)), flush=True)


if __name__ == "__main__":
    main()
