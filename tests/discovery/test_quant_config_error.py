"""``kvcore.quant_config_error``: a pydantic failure worded as the config's field, its value and what is accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

import kvcore
from kvcore.testing import tiny_llama, write_checkpoint

SOURCE = "/ckpt/config.json:quantization_config"


class Scheme(BaseModel):
    num_bits: int = 8
    symmetric: bool = True


class AcmeConfig(BaseModel):
    quant_method: Literal["acme"]
    kv_cache_scheme: Literal["static"] | None = None
    scheme: Scheme | None = None
    ignore: list[str] = Field(default_factory=list)
    block: list[int] | None = None

    @field_validator("block")
    @classmethod
    def _two(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(value) != 2:
            raise ValueError("must be two positive integers, e.g. [128, 128]")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AcmeConfig:
        if self.block is not None and self.kv_cache_scheme is not None:
            raise ValueError("block and kv_cache_scheme exclude each other: remove one")
        return self


def message(raw: dict[str, Any], source: str = SOURCE, **kwargs: Any) -> str:
    with pytest.raises(ValidationError) as info:
        AcmeConfig.model_validate(raw)
    error = kvcore.quant_config_error(info.value, source, **kwargs)
    assert isinstance(error, kvcore.QuantConfigError)
    return str(error)


def test_each_failure_names_the_field_by_its_path_the_value_and_what_is_expected() -> None:
    text = message({"quant_method": "acme", "kv_cache_scheme": "dynamic", "scheme": {"symmetric": "maybe"}},
                   format_name="ACME")
    assert text == (
        f"invalid or unsupported ACME quantization config in {SOURCE}: "
        "quantization_config.kv_cache_scheme is 'dynamic': expected 'static'; "
        "quantization_config.scheme.symmetric is 'maybe': expected a valid boolean, unable to interpret input"
    )


def test_values_are_spelled_as_the_json_file_has_them() -> None:
    text = message({"quant_method": "acme", "scheme": {"symmetric": None, "num_bits": {"bits": True}}})
    assert "quantization_config.scheme.symmetric is null: expected a valid boolean" in text
    assert 'quantization_config.scheme.num_bits is {"bits": true}: expected a valid integer' in text
    assert "quantization_config.scheme is 8: expected a valid dictionary;" in message(
        {"quant_method": "acme", "scheme": 8, "ignore": 1})


def test_a_custom_validator_speaks_for_itself_and_a_missing_field_is_called_missing() -> None:
    text = message({"block": [128]})
    assert "quantization_config.quant_method is missing: it is required" in text
    assert "quantization_config.block is [128]: must be two positive integers, e.g. [128, 128]" in text
    assert "Value error" not in text and "Field required" not in text


def test_a_cross_field_rule_is_its_own_message() -> None:
    text = message({"quant_method": "acme", "block": [1, 2], "kv_cache_scheme": "static"})
    assert text.endswith(": block and kv_cache_scheme exclude each other: remove one")


def test_field_paths_start_at_the_key_the_config_came_from() -> None:
    assert "compression_config.ignore is" in message(
        {"quant_method": "acme", "ignore": "lm_head"}, "/ckpt/config.json:compression_config")
    assert "quantization.ignore is" in message(
        {"quant_method": "acme", "ignore": "lm_head"}, "/ckpt/hf_quant_config.json:quantization")
    without_source = message({"quant_method": "acme", "ignore": "lm_head"}, "")
    assert without_source.startswith("invalid or unsupported quantization config: quantization_config.ignore is ")


def test_what_is_accepted_is_said_once_at_the_end() -> None:
    accepted = "kvcore loads a static fp8 KV cache."
    text = message({"quant_method": "acme", "ignore": 1, "kv_cache_scheme": 2}, accepted=accepted)
    assert text.count(accepted.rstrip(".")) == 1 and text.endswith(". kvcore loads a static fp8 KV cache")


def test_what_is_accepted_is_said_only_where_it_answers_a_failure() -> None:
    accepted = "kvcore loads a static fp8 KV cache"
    about = ("kv_cache_scheme", "scheme")
    assert accepted not in message({"quant_method": "acme", "ignore": 1}, accepted=accepted, accepted_for=about)
    assert message({"quant_method": "acme", "ignore": 1, "scheme": {"num_bits": "x"}},
                   accepted=accepted, accepted_for=about).endswith(accepted)  # fmt: skip
    assert message({"quant_method": "acme", "kv_cache_scheme": 2}, accepted=accepted, accepted_for=about).endswith(
        accepted
    )


def test_a_huge_value_is_cut_so_the_other_failures_stay_readable() -> None:
    text = message({"quant_method": "acme", "ignore": "x" * 500, "kv_cache_scheme": 2})
    assert "x" * 500 not in text and "'xxx" in text and "..." in text
    assert "quantization_config.kv_cache_scheme is 2: expected 'static'" in text


def test_a_load_names_the_file_once(tmp_path: Path) -> None:
    config = {"quant_method": "fp8", "kv_cache_scheme": "dynamic"}
    ckpt = write_checkpoint(tmp_path, {"model.embed_tokens.weight": torch.zeros(4, 8)}, quantization_config=config)
    with pytest.raises(kvcore.QuantConfigError) as info:
        kvcore.load(tiny_llama(), ckpt)
    text = str(info.value)
    assert text.count(f"{ckpt / 'config.json'}:quantization_config") == 1, text
    assert "plugin 'fp8' (kvcore-fp8" in text and "quantization_config.kv_cache_scheme is 'dynamic'" in text
