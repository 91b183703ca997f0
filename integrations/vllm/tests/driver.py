"""Run real vLLM in this (fresh) process and print what it loaded: one ``RESULT {json}`` line per checkpoint.

    python driver.py get_model CKPT...      vLLM's get_model(); final k/v scales (fp8 KV cache)
    python driver.py load_weights CKPT...   the weight-loading stage alone; k/v scale parameters as loaded
    python driver.py llm CKPT               LLM() (engine core and worker spawned), generate(), scales in the worker

An exception while loading a checkpoint is its result (``error``), not the driver's failure.
Logging goes to the root logger until vLLM configures its own, so lines logged while plugins
register show too.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from typing import Any

logging.basicConfig(level=logging.INFO, format="LOG %(name)s %(levelname)s %(message)s")
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import probe  # noqa: E402 - after the environment is set
import torch  # noqa: E402

OPTIONS = {"skip_tokenizer_init": True, "max_model_len": 64, "enforce_eager": True, "kv_cache_dtype": "fp8",
           "dtype": "bfloat16"}


def engine_config(checkpoint: str) -> Any:
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=checkpoint, **OPTIONS).create_engine_config()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process() -> None:
    """vLLM's distributed state for one CPU rank, as its CPU worker sets it up (once per process)."""
    from vllm.distributed import init_distributed_environment, initialize_model_parallel, model_parallel_is_initialized

    if model_parallel_is_initialized():
        return
    from vllm.v1.worker.cpu_model_runner import _set_torch_accelerator_to_noop

    _set_torch_accelerator_to_noop()
    init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                 distributed_init_method=f"tcp://127.0.0.1:{free_port()}")
    initialize_model_parallel(1, 1)


def load(mode: str, checkpoint: str) -> dict[str, Any]:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader import get_model, get_model_loader
    from vllm.utils.torch_utils import set_default_torch_dtype

    config = engine_config(checkpoint)
    with set_current_vllm_config(config):
        single_process()
        if mode == "get_model":
            return probe.final_scales(get_model(vllm_config=config))
        loader = get_model_loader(config.load_config)
        with set_default_torch_dtype(config.model_config.dtype), torch.device("cpu"):
            model = loader.create_model(vllm_config=config, model_config=config.model_config)
        loader.load_weights(model, config.model_config)
        return probe.loaded_scales(model)


def generate(checkpoint: str) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=checkpoint, max_num_seqs=1, seed=0, **OPTIONS)
    params = SamplingParams(max_tokens=4, temperature=0.0, detokenize=False)
    out = llm.generate([{"prompt_token_ids": [1, 5, 9, 13]}], params, use_tqdm=False)
    (worker,) = llm.apply_model(probe.in_worker)
    return {"tokens": list(out[0].outputs[0].token_ids), "driver_pid": os.getpid(), **worker}


def main(mode: str, checkpoints: list[str]) -> None:
    for checkpoint in checkpoints:
        result: dict[str, Any] = {"checkpoint": checkpoint, "error": None}
        try:
            if mode == "llm":
                result |= generate(checkpoint)
            else:
                result["scales"] = load(mode, checkpoint)
        except Exception as exc:  # noqa: BLE001 - the error is what the test looks at
            result["error"] = f"{type(exc).__name__}: {exc}"
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
