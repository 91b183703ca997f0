"""Errors kvcore raises on purpose.

Hierarchy::

    KvcoreError
     ├── CheckpointError       the checkpoint directory, its JSON files or its safetensors are bad
     ├── QuantConfigError      the quantization config is unknown or fails its plugin's model
     ├── PluginError           a plugin failed to import, register, or misbehaved in a hook
     ├── MapperConflictError   two mappers send one pattern or tensor to different targets
     └── WeightLoadError       a tensor does not fit its parameter (also a ``ValueError``)

Every message names the culprit (file, tensor, parameter, plugin) and, where there is one,
the fix.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "KvcoreError",
    "MapperConflictError",
    "PluginError",
    "QuantConfigError",
    "WeightLoadError",
]


class KvcoreError(Exception):
    """Base class of every error kvcore raises on purpose.

    ``written`` names the model's parameters (and buffers) already written, or being
    written, when the error was raised: empty for every error found while planning (the
    model is untouched); when it is not empty, discard the model.
    """

    written: frozenset[str] = frozenset()


class CheckpointError(KvcoreError):
    """The checkpoint cannot be read: missing, truncated, corrupt or unsafe files.

    ``written`` names the model's parameters (and buffers) already written, or being
    written, when the error was raised. It is empty for every error found while planning,
    which means the model is untouched; when it is not empty, discard the model.
    """

    def __init__(self, message: str, *, written: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.written = frozenset(written)


class QuantConfigError(KvcoreError):
    """The quantization config is malformed, unsupported, or handled by no plugin."""


class PluginError(KvcoreError):
    """A plugin could not be loaded, or one of its hooks raised or returned garbage."""


class MapperConflictError(KvcoreError):
    """Two mappers disagree about where one pattern (or one tensor) goes.

    ``kind`` is the rule kind (``"regex"``, ``"substr"``, ``"prefix"``, ``"suffix"`` or
    ``"tensor"``), ``pattern`` the disputed key and ``targets`` both targets.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str = "",
        pattern: str = "",
        targets: tuple[str | None, str | None] = (None, None),
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.pattern = pattern
        self.targets = targets


class WeightLoadError(KvcoreError, ValueError):
    """A tensor cannot be loaded into its parameter (shape, dtype, value or name).

    Also raised when a parameter's storage changed while a load was writing into the model
    (a model must not be mutated during a load); ``written`` then lists what changed.
    """

    def __init__(self, *args: object, written: frozenset[str] = frozenset()) -> None:
        super().__init__(*args)
        self.written = frozenset(written)
