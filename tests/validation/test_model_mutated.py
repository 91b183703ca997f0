"""A model mutated during a load: refused with a ``WeightLoadError`` naming the parameter, never heap corruption.

Direct reads write raw bytes at a parameter's address. If the parameter's storage is swapped
for a smaller one while a load runs (by the ``progress`` callback, a custom ``weight_loader``
or another thread), writing the planned byte count there would corrupt the heap (SIGSEGV,
``malloc(): invalid size``). Each read re-checks its targets right before ``preadv``. The
scenarios run in a child process, so that a regression shows as a signal, not a dead suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from validation_support import FP8_CONFIG, changed, checkpoint_tensors, reference_model, snapshot

import kvcore
import kvcore._loading.shard
from kvcore._checkpoint.safetensors import TensorInfo
from kvcore._loading.pinned import Pinned
from kvcore._loading.plan import Copy
from kvcore._loading.targets import model_targets
from kvcore.testing import write_checkpoint

HERE = Path(__file__).parent
SECOND_SHARD_PARAM = "model.layers.1.mlp.down_proj.weight"


def _outcome(model: torch.nn.Module, ckpt: Path, **kwargs: Any) -> dict[str, Any]:
    before = snapshot(model)
    try:
        kvcore.load(model, ckpt, **kwargs)
    except kvcore.KvcoreError as exc:
        differ = changed(model, before)
        return {"error": type(exc).__name__, "message": str(exc), "written": sorted(exc.written),
                "changed": sorted(differ)}
    return {"error": None}


def scenario_progress_shrinks_a_later_parameter(directory: str) -> dict[str, Any]:
    """The progress callback of the first shard swaps a second-shard parameter for a 1-element one."""
    model = reference_model()
    ckpt = write_checkpoint(Path(directory) / "ckpt", checkpoint_tensors(model), quantization_config=FP8_CONFIG,
                            shards=2)
    param = model.get_parameter(SECOND_SHARD_PARAM)
    done: list[int] = []

    def shrink(_: int) -> None:
        if not done:
            done.append(1)
            param.data = torch.empty(1, dtype=param.dtype)

    result = _outcome(model, ckpt, progress=shrink)
    result["shrunk"] = SECOND_SHARD_PARAM
    return result


def scenario_storage_swapped_after_the_read_was_queued(directory: str) -> dict[str, Any]:
    """A custom weight_loader (run while the direct reads are queued) shrinks a parameter they target."""
    model = reference_model()
    ckpt = write_checkpoint(Path(directory) / "ckpt", checkpoint_tensors(model), quantization_config=FP8_CONFIG)
    victim = model.get_parameter(SECOND_SHARD_PARAM)
    mutated = threading.Event()
    real_read = kvcore._loading.shard.Shard._read

    def read_after_the_mutation(self: Any, *args: Any) -> int:
        mutated.wait(10)  # the queued reads run only once the loader below has shrunk the victim
        return real_read(self, *args)

    kvcore._loading.shard.Shard._read = read_after_the_mutation  # type: ignore[method-assign]

    def shrink_then_copy(param: torch.Tensor, loaded: torch.Tensor) -> None:
        victim.data = torch.empty(1, dtype=victim.dtype)
        mutated.set()
        with torch.no_grad():
            param.copy_(loaded)

    model.get_parameter("model.norm.weight").weight_loader = shrink_then_copy  # type: ignore[attr-defined]
    result = _outcome(model, ckpt)
    result["shrunk"] = SECOND_SHARD_PARAM
    return result


def _in_child(scenario: str, tmp_path: Path) -> dict[str, Any]:
    code = (
        f"import json, sys; sys.path[:0] = [{str(HERE)!r}]; import test_model_mutated as t; "
        f"print(json.dumps(t.{scenario}({str(tmp_path)!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"child died (status {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "scenario", ["scenario_progress_shrinks_a_later_parameter", "scenario_storage_swapped_after_the_read_was_queued"]
)
def test_a_parameter_shrunk_during_the_load_is_refused(scenario: str, tmp_path: Path) -> None:
    result = _in_child(scenario, tmp_path)
    assert result["error"] == "WeightLoadError", result
    message = result["message"]
    assert repr(result["shrunk"]) in message and "changed while kvcore was loading into it" in message
    assert "must not be mutated during a load" in message
    # Whatever was written is reported; the shrunk parameter itself received nothing.
    assert set(result["changed"]) - {result["shrunk"]} <= set(result["written"])


def test_written_lists_the_first_shard_after_a_refusal_in_the_second(tmp_path: Path) -> None:
    result = _in_child("scenario_progress_shrinks_a_later_parameter", tmp_path)
    assert result["written"] and "model.embed_tokens.weight" in result["written"]
    assert "discard it" in result["message"]


def _pinned_copy(model: torch.nn.Module, name: str) -> Copy:
    target = model_targets(model)[name]
    size = target.tensor.nbytes
    info = TensorInfo(name, Path("x"), "BF16", tuple(target.tensor.shape), 0, size)
    return Copy(info, target, None, True)


@pytest.mark.parametrize("change", ["swap", "resize_storage", "dtype", "transpose"])
def test_the_check_before_each_read_sees_every_kind_of_change(change: str) -> None:
    model = reference_model()
    name = "model.layers.0.mlp.up_proj.weight"
    param = model.get_parameter(name)
    pinned = Pinned.of([_pinned_copy(model, name)])
    if change == "swap":
        param.data = torch.empty_like(param.data)
    elif change == "resize_storage":
        param.untyped_storage().resize_(0)
    elif change == "dtype":
        param.data = param.data.view(torch.float16)
    else:
        param.data = param.data.t()
    with pytest.raises(kvcore.WeightLoadError, match=f"parameter {name!r} changed"):
        pinned.check()


def test_a_swapped_storage_stays_allocated_until_the_read_is_over() -> None:
    model = reference_model()
    name = "model.layers.0.mlp.up_proj.weight"
    param = model.get_parameter(name)
    pinned = Pinned.of([_pinned_copy(model, name)])
    address = param.data_ptr()
    param.data = torch.empty(1, dtype=param.dtype)
    assert pinned.storages[0].data_ptr() == address  # still ours: a late write lands in it harmlessly


def test_a_loader_copying_into_a_shrunk_parameter_is_an_error_not_a_write(tmp_path: Path) -> None:
    """FileTensor's copy_ reads with the destination's own size: a shrunk one is refused by torch."""
    model = reference_model()
    ckpt = write_checkpoint(tmp_path / "ckpt", checkpoint_tensors(model), quantization_config=FP8_CONFIG)

    def shrink_then_copy(param: torch.Tensor, loaded: torch.Tensor) -> None:
        param.data = torch.empty(1, dtype=param.dtype)
        param.data.copy_(loaded)

    model.get_parameter("model.layers.0.mlp.up_proj.weight").weight_loader = shrink_then_copy  # type: ignore[attr-defined]
    # torch refuses the copy inside the model's own loader: the loader's failure, named as such.
    with pytest.raises(kvcore.WeightLoadError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight'\): the "
                       r"parameter's weight_loader .*shrink_then_copy raised RuntimeError"):
        kvcore.load(model, ckpt)
