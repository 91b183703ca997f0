"""``kvcore inspect`` says what ``kvcore.load`` does, on every genuine fixture and on hostile variants.

For each checkpoint a model is built from the genuine fixture's ``config.json`` and header (the
one it varies), as an engine builds it (tests/architectures/arch_models.py), and loaded;
``kvcore inspect --json`` runs on the same directory. Exit 2 exactly when the load cannot read
the checkpoint, exit 1 exactly when it refuses it, 0 when it loads; the verdict says the same;
a refusal's words (the tensor and the problem, as ``kvcore._scale_rules`` words it) appear in
both; and no line contradicts the load.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import arch_models as am
import pytest
import torch
from safetensors.torch import load_file, save_file
from shared_support import modelopt_plugin

import kvcore
from kvcore._cli.main import main
from kvcore.testing import write_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GENUINE = sorted(str(p.parent.relative_to(FIXTURES)) for p in FIXTURES.glob("real*/*/*/config.json"))
P0, P1 = "model.layers.0.self_attn", "model.layers.1.self_attn"
LLMC = "real/llmcompressor/fp8_kv_tensor"
CONTRADICTIONS = ("Install or enable", "kvcore.load uses 1.0", "int8", "corrupt")
"""Words a refused load's inspection must not say: the plugin is there, no default is used, ..."""


@pytest.fixture(autouse=True)
def modelopt_registered() -> Iterator[None]:
    with modelopt_plugin():
        yield


def _load(checkpoint: Path, fixture: str) -> BaseException | None:
    """What ``kvcore.load`` does with a model built from ``fixture``: ``None`` when it loads."""
    built = am.build(FIXTURES / fixture)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kvcore.load(built.model, checkpoint)
    except kvcore.KvcoreError as exc:
        return exc
    return None


def _inspect(checkpoint: Path) -> tuple[int, dict[str, object] | None, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["inspect", str(checkpoint), "--json"])
    return status, (json.loads(out.getvalue()) if out.getvalue() else None), err.getvalue()


def _errors(data: dict[str, object]) -> list[str]:
    return [a["message"] for a in data["anomalies"] if a["level"] == "error"]  # type: ignore[index, union-attr]


def _agree(checkpoint: Path, fixture: str, words: tuple[str, ...] = ()) -> tuple[int, dict[str, object] | None]:
    """Inspect ``checkpoint`` and load it into ``fixture``'s model; assert they agree; every one of
    ``words`` is in both refusals."""
    refused = _load(checkpoint, fixture)
    status, data, err = _inspect(checkpoint)
    if isinstance(refused, kvcore.CheckpointError):
        assert (status, data) == (2, None), (refused, status, data)
        assert str(refused) in err and "corrupt" not in err  # a missing file is not a damaged one
        said = [err]
    elif refused is not None:
        assert status == 1, (refused, data)
        assert data is not None and data["verdict"]["loads"] is False  # type: ignore[index]
        said = _errors(data)
        assert said, data
        for message in [*said, data["verdict"]["reason"]]:  # type: ignore[index]
            assert not any(w in message for w in CONTRADICTIONS), message
    else:
        assert status == 0, data
        assert data is not None and data["verdict"]["loads"] is True and _errors(data) == []  # type: ignore[index]
        said = []
    for word in words:
        assert word in str(refused), (word, refused)
        assert any(word in message for message in said), (word, said)
    return status, data


@pytest.mark.parametrize("fixture", GENUINE)
def test_every_genuine_fixture_loads_and_inspect_says_so(fixture: str) -> None:
    status, data = _agree(FIXTURES / fixture, fixture)
    assert status == 0
    assert data is not None and data["verdict"]["reason"].startswith("per-")  # type: ignore[index]


def _variant(tmp_path: Path, fixture: str, change: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of a genuine fixture whose tensors ``change`` edits in place."""
    directory = tmp_path / "variant"
    shutil.copytree(FIXTURES / fixture, directory)
    tensors = load_file(directory / "model.safetensors")
    change(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def _set(name: str, value: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda tensors: tensors.__setitem__(name, value)


BAD_VALUES = [
    ("real/llmcompressor/fp8_kv_tensor", f"{P1}.v_scale", torch.tensor([float("nan")], dtype=torch.bfloat16),
     ("holds NaN ([nan]); a KV-cache scale must be a finite positive number",)),
    ("real/quark/fp8_kv_attn_fp8_eager", f"{P0}.k_proj.output_scale", torch.tensor(0.0, dtype=torch.bfloat16),
     ("holds zero ([0.0]); a KV-cache scale must be a finite positive number",)),
    ("real2/modelopt/qwen3_fp8_kv_fp8", f"{P1}.v_proj.v_scale", torch.tensor(-0.5),
     ("holds a negative value ([-0.5])",)),
    ("real/autofp8/head_k_v_scale", f"{P0}.k_scale", torch.tensor(float("inf")),
     ("holds an infinite value ([inf])",)),
    ("real/llmcompressor/fp8_kv_tensor", f"{P0}.k_scale", torch.ones(3) * 0.01, (f"{P0}.k_scale", "[3]")),
]


@pytest.mark.parametrize(("fixture", "tensor", "value", "words"), BAD_VALUES, ids=lambda v: str(v)[:40])
def test_a_bad_scale_is_refused_by_both_in_the_same_words(
    tmp_path: Path, fixture: str, tensor: str, value: torch.Tensor, words: tuple[str, ...]
) -> None:
    status, _ = _agree(_variant(tmp_path, fixture, _set(tensor, value)), fixture, (tensor, *words))
    assert status == 1


OFFSETS = [
    ("real/llmcompressor/fp8_kv_tensor", f"{P1}.k_zero_point", "non-zero zero points"),
    ("real2/modelopt/qwen3_fp8_kv_fp8", f"{P0}.k_proj.k_bias", "non-zero affine offsets (k_bias"),
    ("real2/modelopt/mixtral_fp8_kv_fp8", f"{P1}.v_proj.v_bias", "non-zero affine offsets (v_bias"),
]


@pytest.mark.parametrize(("fixture", "tensor", "words"), OFFSETS, ids=lambda v: str(v)[:40])
def test_offsets_all_zero_are_dropped_by_both_and_non_zero_refused_by_both(
    tmp_path: Path, fixture: str, tensor: str, words: str
) -> None:
    zeros = _variant(tmp_path / "zeros", fixture, _set(tensor, torch.zeros(1)))
    assert _agree(zeros, fixture)[0] == 0
    offset = _variant(tmp_path / "offset", fixture, _set(tensor, torch.tensor([0.25])))
    assert _agree(offset, fixture, (tensor, words, "[0.25]"))[0] == 1


def test_a_config_the_installed_plugin_refuses_is_an_error_and_nothing_else(tmp_path: Path) -> None:
    directory = tmp_path / "affine"
    fixture = "real2/modelopt/qwen3_fp8_kv_fp8"
    shutil.copytree(FIXTURES / fixture, directory)
    for name, path in (("hf_quant_config.json", ("quantization",)), ("config.json", ("quantization_config",))):
        data = json.loads((directory / name).read_text())
        section = data[path[0]]
        section["kv_cache_quant_algo"] = "FP8_AFFINE"
        section.pop("kv_cache_scheme", None)
        (directory / name).write_text(json.dumps(data))
    status, data = _agree(directory, fixture, ("'FP8_AFFINE'", "kvcore loads symmetric KV caches only"))
    assert status == 1 and data is not None
    assert [a["level"] for a in data["anomalies"]] == ["error"]  # type: ignore[index, union-attr]
    assert "refuses the 'modelopt' quantization config" in data["verdict"]["reason"]  # type: ignore[index]


def test_a_scale_no_rule_maps_is_refused_by_both(tmp_path: Path) -> None:
    tensor = f"{P0}.k_proj.output_scale"  # Quark's name in an AutoFP8 checkpoint
    fixture = "real/autofp8/head_k_v_scale"
    assert _agree(_variant(tmp_path, fixture, _set(tensor, torch.tensor(0.02))), fixture, (tensor,))[0] == 1


@pytest.mark.parametrize("value", [0.0, 0.25])
def test_a_bias_no_rule_maps_is_refused_by_both(tmp_path: Path, value: float) -> None:
    tensor = f"{P1}.k_proj.k_bias"  # ModelOpt's name in a compressed-tensors checkpoint: nothing maps it
    status, data = _agree(_variant(tmp_path, LLMC, _set(tensor, torch.full((1,), value))), LLMC, (tensor,))
    assert status == 1 and data is not None
    assert any("affine KV cache's offset" in e for e in _errors(data))


def _sharded(tmp_path: Path, fixture: str) -> Path:
    source = FIXTURES / fixture
    directory = tmp_path / "sharded"
    shutil.copytree(source, directory, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((source / "config.json").read_text())
    return write_checkpoint(directory, load_file(source / "model.safetensors"), config=config, shards=2)


def test_a_missing_shard_is_unreadable_for_both(tmp_path: Path) -> None:
    directory = _sharded(tmp_path, LLMC)
    assert _agree(directory, LLMC)[0] == 0
    (directory / "model-00002-of-00002.safetensors").unlink()
    assert _agree(directory, LLMC, ("model-00002-of-00002.safetensors", "missing"))[0] == 2


def test_one_shard_of_a_sharded_checkpoint_without_its_index_is_refused_by_both(tmp_path: Path) -> None:
    directory = _sharded(tmp_path, LLMC)
    (directory / "model-00002-of-00002.safetensors").unlink()
    (directory / "model.safetensors.index.json").unlink()
    assert _agree(directory, LLMC, ("model-00001-of-00002.safetensors, shard 1 of 2", "missing"))[0] == 2


def test_a_layer_without_scales_loads_with_1_0_and_inspect_names_it(tmp_path: Path) -> None:
    def drop(tensors: dict[str, torch.Tensor]) -> None:
        del tensors[f"{P1}.k_scale"], tensors[f"{P1}.v_scale"]

    status, data = _agree(_variant(tmp_path, LLMC, drop), LLMC)
    assert status == 0 and data is not None
    assert data["kv_cache"]["layers"] == {"total": 2, "with_scales": [0], "missing": [1]}  # type: ignore[index]
    warned = [a["message"] for a in data["anomalies"] if a["level"] == "warning"]  # type: ignore[index, union-attr]
    assert [w for w in warned if w.startswith("layers 1 of 2") and "1.0" in w]
    assert "layers 1 have none and get 1.0" in data["verdict"]["reason"]  # type: ignore[index]
