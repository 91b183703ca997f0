"""``QuantConfig``: what every plugin hook receives about the checkpoint's quantization."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from kvcore._errors import QuantConfigError

__all__ = ["QuantConfig"]


@dataclasses.dataclass(frozen=True)
class QuantConfig(Mapping[str, Any]):
    """A checkpoint's quantization config, as handed to plugin hooks.

    ``quant_method`` is the method as the checkpoint writes it (``"fp8"``, ``"quark"``,
    ``"compressed-tensors"``, ``"modelopt"``, ...), ``raw`` the config dict as written and
    ``source`` the file it came from and ``model_config`` the checkpoint's ``config.json``
    (architecture, ``kv_lora_rank``, ... : what a scale means can depend on the model). It is
    also a read-only mapping with the keys ``quant_method``, ``raw`` and ``source``, so hooks
    may treat it as a dict.
    """

    quant_method: str
    raw: Mapping[str, Any]
    source: str = ""
    model_config: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @classmethod
    def coerce(cls, value: Any) -> QuantConfig:
        """Accept a ``QuantConfig``, a ``{"quant_method", "raw"}`` dict, or a raw config dict.

        kvcore calls this where a host or a test hands it a config (``kvcore.testing.check_plugin``);
        hooks always receive a ``QuantConfig`` and need not call it.
        """
        if isinstance(value, QuantConfig):
            return value
        if isinstance(value, Mapping):
            raw = value.get("raw")
            if isinstance(raw, Mapping):
                method = value.get("quant_method", raw.get("quant_method"))
                return cls(_method(method), raw, str(value.get("source", "")))
            return cls(_method(value.get("quant_method")), value)
        method = getattr(value, "quant_method", None)
        raw = getattr(value, "raw", None)
        if isinstance(raw, Mapping):
            return cls(_method(method), raw)
        raise QuantConfigError(
            f"expected a quantization config (a mapping with 'quant_method' and 'raw'), "
            f"got {type(value).__name__}"
        )

    def __getitem__(self, key: str) -> Any:
        if key in ("quant_method", "raw", "source"):
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(("quant_method", "raw", "source"))

    def __len__(self) -> int:
        return 3

    def __hash__(self) -> int:
        return hash((self.quant_method, self.source))


def _method(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise QuantConfigError(
            f"quantization config has no usable 'quant_method' (got {value!r}); "
            "it must be a non-empty string such as 'fp8' or 'compressed-tensors'"
        )
    return value
