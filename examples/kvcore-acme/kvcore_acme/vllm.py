"""The format's ``vllm.general_plugins`` entry point: declare ``acme-kv`` to vLLM.

vLLM refuses a checkpoint whose ``quant_method`` it does not know before it loads anything; an
ACME KV checkpoint quantizes only the KV cache, which is what ``register_kv_only_method`` is for.
The names are mapped by the kvcore plugin above, through kvcore-vllm's bridge.
"""

from __future__ import annotations

import logging

from kvcore_acme import METHOD

__all__ = ["register"]


def register() -> None:
    """Called by vLLM in every process it starts; idempotent."""
    try:
        import kvcore_vllm
    except ImportError:
        logging.getLogger("vllm.kvcore_acme").warning(
            "kvcore-vllm is not installed, so vLLM cannot load %r checkpoints: pip install kvcore-vllm", METHOD
        )
        return
    kvcore_vllm.register_kv_only_method(METHOD)
