"""Helpers for discovery tests: real ``*.dist-info`` folders in a private ``sys.path``.

The ``site`` fixture (conftest.py) puts a temporary folder first on a ``sys.path`` from which site-packages are
removed, so that only the distributions a test writes are discovered (the first-party
plugins installed in the venv are not), and clears kvcore's discovery cache around it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import torch

from kvcore.testing import tiny_llama, write_checkpoint

_counter = itertools.count()


class Site:
    """A folder on ``sys.path`` where tests install fake distributions and plugin modules."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tag = f"t{next(_counter)}"

    def module(self, name: str, source: str) -> str:
        """Write ``<name>_<tag>.py`` and return its import name (unique per test)."""
        unique = f"{name}_{self.tag}"
        (self.root / f"{unique}.py").write_text(source)
        return unique

    def dist(
        self,
        name: str,
        entry_points: Mapping[str, str],
        *,
        version: str = "1.0",
        requires: tuple[str, ...] = ("kvcore>=0.1",),
        root: Path | None = None,
    ) -> Path:
        """Write ``name-version.dist-info`` declaring ``entry_points`` in the group ``kvcore``."""
        folder = (root or self.root) / f"{name.replace('-', '_')}-{version}.dist-info"
        folder.mkdir(parents=True)
        lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        lines += [f"Requires-Dist: {r}" for r in requires]
        (folder / "METADATA").write_text("\n".join(lines) + "\n\n")
        body = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
        (folder / "entry_points.txt").write_text(f"[kvcore]\n{body}")
        return folder

    def plugin(self, name: str, source: str, *, dist: str | None = None, version: str = "1.0",
               requires: tuple[str, ...] = ("kvcore>=0.1",)) -> str:
        """A module and a distribution (``kvcore-<name>`` by default) with entry point ``name``."""
        module = self.module(name.replace("-", "_"), source)
        self.dist(dist or f"kvcore-{name}", {name: module}, version=version, requires=requires)
        return module


def mapper_plugin(method: str, rules: Mapping[str, str]) -> str:
    """Source of a plugin that maps ``rules`` (regex) for ``quant_method == method``."""
    return (
        "import kvcore\n\n"
        "@kvcore.hookimpl\n"
        "def get_cache_scale_mapper(quant_config):\n"
        f"    if quant_config.quant_method != {method!r}:\n"
        "        return None\n"
        f"    return kvcore.WeightsMapper(orig_to_new_regex={dict(rules)!r})\n"
    )


def checkpoint(directory: Path, method: str, kv: Mapping[str, float]) -> tuple[Path, torch.nn.Module]:
    """A one-layer tiny Llama checkpoint with ``quant_method == method`` and extra KV tensors."""
    torch.manual_seed(0)
    source = tiny_llama(num_layers=1)
    tensors = {name: t.detach().clone() for name, t in source.state_dict().items() if ".attn." not in name}
    tensors |= {name: torch.tensor(value, dtype=torch.float32) for name, value in kv.items()}
    write_checkpoint(directory, tensors, quantization_config={"quant_method": method})
    return directory, tiny_llama(num_layers=1)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's value, to show that a refused load wrote nothing."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = dict(model.named_parameters())
    return now.keys() == before.keys() and all(torch.equal(now[n], before[n]) for n in before)
