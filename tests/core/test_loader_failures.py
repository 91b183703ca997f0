"""A custom ``weight_loader`` that raises is the model's failure: named, with the loader, not the checkpoint's."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from core_support import plain_weights

import kvcore
from kvcore.testing import tiny_llama, write_checkpoint

TARGET = "model.layers.1.mlp.up_proj.weight"
PACKED = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}


class Boom(ValueError):
    """What the failing loaders raise, so a test can find it in the chain."""


def failing(param: torch.Tensor, loaded: torch.Tensor) -> None:
    param.data[0].copy_(loaded[0])  # part-way through
    raise Boom("the loader broke")


class CallableLoader:
    def __call__(self, param: torch.Tensor, loaded: torch.Tensor) -> None:
        failing(param, loaded)


class Fused(torch.nn.Module):
    """``gate_up_proj``: two 2 x 3 shards through ``weight_loader(param, loaded, shard_id)``; shard 1 fails."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(4, 3), requires_grad=False)
        self.weight.weight_loader = self.load  # type: ignore[attr-defined]

    def load(self, param: torch.Tensor, loaded: torch.Tensor, shard_id: int) -> None:
        if shard_id == 1:
            raise Boom("the loader broke")
        param.data[:2].copy_(loaded)


def packed_model() -> torch.nn.Module:
    root = torch.nn.Module()
    root.mlp = torch.nn.Module()
    root.mlp.gate_up_proj = Fused()
    root.packed_modules_mapping = PACKED
    return root


PACKED_WEIGHTS = {"mlp.gate_proj.weight": torch.ones(2, 3), "mlp.up_proj.weight": torch.full((2, 3), 2.0)}


def qualified(loader: Callable[..., object]) -> str:
    function = loader.func if isinstance(loader, functools.partial) else loader
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{function.__module__}.{name}"


def assert_names_the_loader(exc: kvcore.WeightLoadError, parameter: str, tensor: str, loader: str) -> None:
    message = str(exc)
    assert f"(loading into {parameter!r})" in message and repr(tensor) in message, message
    assert f"weight_loader {loader} raised Boom: the loader broke" in message, message
    assert "the loader, which is the model's code, failed on it" in message, message
    assert "checkpoint is readable" not in message and not isinstance(exc, kvcore.CheckpointError), message
    assert isinstance(exc.__cause__, Boom), "the loader's own exception is chained"


LOADERS: dict[str, Callable[..., object]] = {
    "function": failing,
    "partial": functools.partial(failing),
    "callable object": CallableLoader(),
}


@pytest.mark.parametrize("kind", LOADERS)
def test_load_names_the_parameter_and_the_loader(tmp_path: Path, kind: str) -> None:
    model = tiny_llama()
    weights = plain_weights(model)
    loader = LOADERS[kind]
    model.get_parameter(TARGET).weight_loader = loader
    with pytest.raises(kvcore.WeightLoadError) as caught:
        kvcore.load(model, write_checkpoint(tmp_path, weights))
    assert_names_the_loader(caught.value, TARGET, TARGET, qualified(loader))
    message = str(caught.value)
    assert f"{TARGET!r} may be partly written" in message and "load again once the loader is fixed" in message
    assert TARGET in caught.value.written


def test_load_names_a_packed_parameters_shard_and_its_loader(tmp_path: Path) -> None:
    model = packed_model()
    with pytest.raises(kvcore.WeightLoadError) as caught:
        kvcore.load(model, write_checkpoint(tmp_path, PACKED_WEIGHTS))
    loader = qualified(Fused.load)
    assert_names_the_loader(caught.value, "mlp.gate_up_proj.weight", "mlp.up_proj.weight", loader)
    assert "as shard 1" in str(caught.value)


@pytest.mark.parametrize("kind", LOADERS)
def test_the_auto_loader_names_the_parameter_and_the_loader(kind: str) -> None:
    model = tiny_llama()
    loader = LOADERS[kind]
    model.get_parameter(TARGET).weight_loader = loader
    with pytest.raises(kvcore.WeightLoadError) as caught:
        kvcore.AutoWeightsLoader(model).load_weights(plain_weights(model).items())
    assert_names_the_loader(caught.value, TARGET, TARGET, qualified(loader))


def test_the_auto_loader_names_a_packed_parameters_shard_and_its_loader() -> None:
    with pytest.raises(kvcore.WeightLoadError) as caught:
        kvcore.AutoWeightsLoader(packed_model()).load_weights(PACKED_WEIGHTS.items())
    assert_names_the_loader(caught.value, "mlp.gate_up_proj.weight", "mlp.up_proj.weight", qualified(Fused.load))
    assert "as shard 1" in str(caught.value)


def test_the_auto_loaders_own_copy_names_the_tensor_and_parameter() -> None:
    model = tiny_llama()
    weights = plain_weights(model)
    weights[TARGET] = weights[TARGET][:, :-1]
    with pytest.raises(kvcore.WeightLoadError) as caught:
        kvcore.AutoWeightsLoader(model).load_weights(weights.items())
    message = str(caught.value)
    assert f"tensor {TARGET!r} (loading into {TARGET!r})" in message and "shape [128, 63]" in message, message
    assert "the checkpoint was made for a different model config" in message
