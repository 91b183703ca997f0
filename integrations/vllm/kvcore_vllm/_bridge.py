"""The hook: vLLM's ``get_quant_config`` returns configs whose cache-scale mapper includes kvcore's.

``QuantizationConfig.get_cache_scale_mapper`` is a static method that never sees the checkpoint,
so the bridge wraps ``vllm.model_executor.model_loader.weight_utils.get_quant_config`` (which
``VllmConfig`` imports when it needs it) and gives each config it returns an instance attribute
of the same name: a :class:`CacheScaleMapper`, which knows the checkpoint. ``AutoWeightsLoader``
calls ``quant_config.get_cache_scale_mapper()`` and gets vLLM's rules followed by the kvcore
plugins'. The config travels pickled to vLLM's engine and worker processes, so the attribute is
a plain object of this module; it reads the checkpoint in the process that loads the weights.
"""

from __future__ import annotations

import functools
import json
import operator
import os
from pathlib import Path
from typing import Any

import kvcore
from kvcore_vllm._gate import log
from kvcore_vllm._prefilter import candidates

__all__ = ["CacheScaleMapper", "install", "local_directory", "vllm_mapper"]

MARK = "__kvcore_vllm__"


def install() -> None:
    """Wrap vLLM's ``get_quant_config`` once per process."""
    from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
    from vllm.model_executor.model_loader import weight_utils

    original = getattr(weight_utils, "get_quant_config", None)
    if original is None or not hasattr(QuantizationConfig, "get_cache_scale_mapper"):
        log.warning(
            "this vLLM has no weight_utils.get_quant_config or QuantizationConfig.get_cache_scale_mapper: "
            "kvcore-vllm does nothing, and vLLM's own rules map KV-cache scales"
        )
        return
    if getattr(original, MARK, False):
        return

    @functools.wraps(original)
    def get_quant_config(model_config: Any, load_config: Any) -> Any:
        quant_config = original(model_config, load_config)
        attach(quant_config, model_config, load_config)
        return quant_config

    setattr(get_quant_config, MARK, True)
    weight_utils.get_quant_config = get_quant_config


def attach(quant_config: Any, model_config: Any, load_config: Any) -> None:
    """Give ``quant_config`` a ``get_cache_scale_mapper`` that knows the checkpoint."""
    if isinstance(quant_config.__dict__.get("get_cache_scale_mapper"), CacheScaleMapper):
        return
    # A kv-only config's own get_cache_scale_mapper refuses to run without the bridge (see _kv_only).
    rules = getattr(quant_config, "vllm_cache_scale_mapper", quant_config.get_cache_scale_mapper)
    quant_config.get_cache_scale_mapper = CacheScaleMapper(
        rules(),
        type(quant_config).__name__,
        str(model_config.model),
        getattr(model_config, "revision", None),
        getattr(load_config, "download_dir", None),
        bool(getattr(model_config, "use_mla", False)),
    )


class CacheScaleMapper:
    """Returns vLLM's cache-scale mapper for a config, followed by the kvcore plugins' for its checkpoint.

    Built in the process that creates the config; pickled to the others without what it has
    computed. The first call in a process reads the checkpoint (``kvcore.plugin_mappers_for``),
    checks that the plugins' rules move no tensor vLLM's own rules already place, logs one INFO
    line naming the plugins that contributed, and keeps the result. On an MLA model it adds
    nothing (one warning): kvcore's plugins say what their scales mean for an MLA cache, and
    vLLM's MLA attention cannot be told.
    """

    def __init__(
        self,
        vllm_rules: Any,
        owner: str,
        checkpoint: str,
        revision: str | None,
        download_dir: str | None,
        use_mla: bool = False,
    ) -> None:
        self.vllm_rules = vllm_rules
        self.owner = owner
        self.checkpoint = checkpoint
        self.revision = revision
        self.download_dir = download_dir
        self.use_mla = use_mla
        self._mapper: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mapper": None}

    def __call__(self) -> Any:
        if self._mapper is None:
            self._mapper = self._build()
        return self._mapper

    def _build(self) -> Any:
        directory = local_directory(self.checkpoint, self.revision, self.download_dir)
        if directory is None:
            log.info(
                "kvcore: %s is neither a checkpoint directory nor in the local Hugging Face cache; kvcore "
                "plugins add nothing, vLLM's own rules map KV-cache scales",
                self.checkpoint,
            )
            return self.vllm_rules
        try:
            found = kvcore.plugin_mappers_for(directory)
        except kvcore.CheckpointError as exc:
            log.info("kvcore cannot read %s (%s): kvcore plugins add nothing, vLLM's own rules apply", directory, exc)
            return self.vllm_rules
        if not found:
            log.debug("kvcore: no installed kvcore plugin maps the KV-cache scales of %s", directory)
            return self.vllm_rules
        combined = self.vllm_rules | vllm_mapper(functools.reduce(operator.or_, found.values()))
        moved = self._check(tensor_names(directory), combined, list(found))
        if moved and self.use_mla:
            log.warning(
                "kvcore: %s is an MLA model; kvcore-vllm leaves its KV-cache scales to vLLM's own rules, because "
                "what a format's scales mean for an MLA cache differs by format (docs/formats.md): %d tensor(s) "
                "kvcore plugin(s) %s would rename are not mapped",
                directory,
                moved,
                ", ".join(found),
            )
            return self.vllm_rules
        log.info(
            "kvcore: KV-cache scale names of %s mapped by kvcore plugin(s) %s after vLLM's %s rules "
            "(%d tensor(s) renamed beyond vLLM's)",
            directory,
            ", ".join(found),
            self.owner,
            moved,
        )
        return combined

    def _check(self, names: list[str], combined: Any, plugins: list[str]) -> int:
        """How many tensors the plugins rename; a tensor vLLM's rules place must stay there.

        Only the names some rule of ``combined`` (vLLM's and the plugins') can match go through
        the two ``map_name`` calls: every other name is left as it is by both (``_prefilter``).
        """
        moved = 0
        for name in candidates(names, combined):
            ours, both = self.vllm_rules.map_name(name), combined.map_name(name)
            if both == ours:
                continue
            if ours != name:
                raise kvcore.MapperConflictError(
                    f"checkpoint tensor {name!r}: vLLM's {self.owner} rules map it to {ours!r}, but kvcore "
                    f"plugin(s) {', '.join(plugins)} then move it to {both!r}; disable the plugin "
                    "(KVCORE_DISABLE_PLUGINS) or the bridge (KVCORE_VLLM=0), or make the rules agree",
                    kind="tensor",
                    pattern=name,
                    targets=(ours, both),
                )
            moved += 1
        return moved


def vllm_mapper(mapper: kvcore.WeightsMapper) -> Any:
    """``mapper`` as vLLM's ``WeightsMapper`` (same semantics); stacked rules are left to vLLM's models."""
    from vllm.model_executor.models.utils import WeightsMapper

    if mapper.orig_to_new_stacked:
        log.warning(
            "kvcore: plugins' packing rules %s are not given to vLLM, whose models pack projections themselves",
            list(mapper.orig_to_new_stacked),
        )
    return WeightsMapper(
        orig_to_new_regex=dict(mapper.orig_to_new_regex),
        orig_to_new_substr=dict(mapper.orig_to_new_substr),
        orig_to_new_prefix=dict(mapper.orig_to_new_prefix),
        orig_to_new_suffix=dict(mapper.orig_to_new_suffix),
    )


def local_directory(model: str, revision: str | None, download_dir: str | None) -> Path | None:
    """The checkpoint's directory: ``model`` itself, or its snapshot in the local Hugging Face cache."""
    if os.path.isdir(model):
        return Path(model)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, cache_dir=download_dir, local_files_only=True))
    except Exception:  # noqa: BLE001 - not a hub id, not cached, or no huggingface_hub: say so above
        return None


def tensor_names(directory: Path) -> list[str]:
    """Every tensor name of the checkpoint, from its index or its shards' headers (kvcore read them already)."""
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    names: list[str] = []
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, framework="pt") as shard:
            names += shard.keys()
    return names
