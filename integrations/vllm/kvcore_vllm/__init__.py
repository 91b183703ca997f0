"""kvcore-vllm: vLLM loads KV-cache scales through the installed kvcore format plugins.

vLLM runs :func:`register` in every process it starts (entry-point group
``vllm.general_plugins``, name ``kvcore``). From then on, each quantization config vLLM builds
for a checkpoint maps that checkpoint's KV-cache scale names with vLLM's own rules and then the
kvcore plugins' mappers (``kvcore.plugin_mappers_for``), in the ``AutoWeightsLoader`` of
whichever process loads the weights. ``KVCORE_VLLM=0`` switches it off.

:func:`register_kv_only_method` lets a format whose checkpoints quantize only the KV cache
declare its ``quant_method`` to vLLM from the format's own ``vllm.general_plugins`` entry point.

Importing this package imports neither vLLM nor torch. See docs/vllm.md.
"""

from __future__ import annotations

from kvcore_vllm._gate import ENV, MIN_VLLM, blocked, log

__all__ = ["ENV", "MIN_VLLM", "register", "register_kv_only_method"]

__version__ = "0.1.0"

_registered = False


def register() -> None:
    """Install the bridge in this process: idempotent; vLLM calls it in every process it starts.

    Does nothing, and says why in one log line, when vLLM is missing or older than
    :data:`MIN_VLLM`, or when ``KVCORE_VLLM=0``.
    """
    global _registered
    if _registered:
        return
    _registered = True
    reason = blocked()
    if reason is not None:
        log.log(*reason)
        return
    from kvcore_vllm._bridge import install

    install()


def register_kv_only_method(name: str) -> bool:
    """Declare to vLLM the ``quant_method`` ``name`` of a format that quantizes only the KV cache.

    Its checkpoints' linear layers load unquantized and each attention layer gets static
    per-tensor fp8 KV-cache scales (``--kv-cache-dtype fp8`` uses them), their names mapped by
    the format's kvcore plugin through the bridge. Call it from the format's own
    ``vllm.general_plugins`` entry point; idempotent. The config vLLM builds is a
    ``kvcore_vllm._kv_only.KvOnlyConfig``, importable wherever vLLM unpickles it. A name vLLM
    already uses for another method is a ``ValueError``. Returns whether it registered; when vLLM
    is missing or too old, or ``KVCORE_VLLM=0``, it does nothing and says so in one log line.
    """
    reason = blocked()
    if reason is not None:
        level, why = reason
        log.log(level, "%s; quantization method %r is not registered", why, name)
        return False
    from kvcore_vllm._kv_only import register_method

    register_method(name)
    return True
