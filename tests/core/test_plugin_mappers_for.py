"""``kvcore.plugin_mappers_for``: each plugin's mapper by name, for engines with rules of their own.

Same reader and checks as ``mapper_for``; the differences are the attribution and that a method
no plugin handles is an empty answer, not an error.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from core_support import CT, FIXTURES, QUARK, P, model_for, plain_weights

import kvcore
import kvcore_compressed_tensors
import kvcore_quark
from kvcore.testing import registered_plugin, write_checkpoint


@pytest.mark.parametrize(
    ("folder", "plugin", "mapper"),
    [
        (QUARK, "quark", kvcore_quark.KV_SCALE_MAPPER),
        (CT, "compressed-tensors", kvcore_compressed_tensors.KV_SCALE_MAPPER),
    ],
    ids=["quark", "compressed-tensors"],
)
def test_each_contributing_plugin_by_name(folder: str, plugin: str, mapper: kvcore.WeightsMapper) -> None:
    found = kvcore.plugin_mappers_for(FIXTURES / folder)
    assert found == {plugin: mapper}
    assert functools.reduce(lambda a, b: a | b, found.values()) == kvcore.mapper_for(FIXTURES / folder)


def test_unquantized_and_unhandled_checkpoints_are_empty(tmp_path: Path) -> None:
    plain = write_checkpoint(tmp_path / "plain", plain_weights(model_for(CT)))
    assert kvcore.plugin_mappers_for(plain) == {}
    unhandled = write_checkpoint(tmp_path / "other", {"x": torch.zeros(1)}, quantization_config={"quant_method": "awq"})
    assert kvcore.plugin_mappers_for(unhandled) == {}
    with pytest.raises(kvcore.QuantConfigError, match="awq"):
        kvcore.mapper_for(unhandled)


def test_a_config_the_plugin_rejects_names_the_file(tmp_path: Path) -> None:
    quant = {"quant_method": "fp8", "activation_scheme": "sometimes"}
    ckpt = write_checkpoint(tmp_path / "ckpt", {"x": torch.zeros(1)}, quantization_config=quant)
    with pytest.raises(kvcore.QuantConfigError, match=r"config\.json"):
        kvcore.plugin_mappers_for(ckpt)


class Rival:
    """A second plugin for compressed-tensors that sends ``k_scale`` somewhere else."""

    @kvcore.hookimpl
    def get_cache_scale_mapper(self, quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
        if quant_config.quant_method != "compressed-tensors":
            return None
        return kvcore.WeightsMapper(orig_to_new_suffix={".k_scale": ".attention.k_scale"})


def test_plugins_that_disagree_about_a_tensor_are_a_conflict_naming_both() -> None:
    with (
        registered_plugin(Rival(), "rival", distribution="kvcore-rival", version="1"),
        pytest.raises(kvcore.MapperConflictError) as info,
    ):
        kvcore.plugin_mappers_for(FIXTURES / CT)
    message = str(info.value)
    assert "kvcore-rival" in message and "compressed-tensors" in message
    assert f"{P.format(0)}.k_scale" in message
