"""kvcore's stage folders keep their arrows pointing one way: _cli -> _loading -> _plugins -> _checkpoint.

Module-level imports only: a function may reach up lazily (``Attention.process_weights_after_loading``
applies the loading rules), but importing a module never pulls in a stage above it, so there is
no import cycle between stages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kvcore

PACKAGE = Path(kvcore.__file__).parent
LAYERS = {"_names": 0, "_checkpoint": 2, "_plugins": 3, "_loading": 4, "_runtime": 4, "_cli": 5}
PUBLIC = {"__init__", "__main__", "hookspecs", "testing", "transformers"}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def _layer(module: str) -> int | None:
    """None for the public faces, which may import anything; 1 for the shared top-level types."""
    first = module.split(".")[1] if "." in module else "__init__"
    if first in PUBLIC:
        return None
    return LAYERS.get(first, 1)


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.parse(path.read_text()).body:
        body = node.body if isinstance(node, ast.If) else [node]  # `if TYPE_CHECKING:` counts too
        modules = [n.module for n in body if isinstance(n, ast.ImportFrom) and n.module]
        found += [m for m in modules if m.startswith("kvcore")]
        found += [a.name for n in body if isinstance(n, ast.Import) for a in n.names if a.name.startswith("kvcore")]
    return found


def test_no_module_imports_a_stage_above_its_own() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module, layer = _module(path), _layer(_module(path))
        for target in _imports(path):
            target_layer = _layer(target)
            if layer is not None and target_layer is not None and target_layer > layer:
                upward.append(f"{module} (stage {layer}) imports {target} (stage {target_layer})")
    assert not upward, "\n".join(upward)


def test_the_shared_vocabulary_is_a_leaf() -> None:
    assert _imports(PACKAGE / "_names.py") == []


def test_the_stages_exist_and_the_flat_modules_are_gone() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert {"_checkpoint", "_plugins", "_loading", "_runtime", "_cli"} <= folders
    flat = sorted(p.stem for p in PACKAGE.glob("_*.py") if p.stem not in {"__init__", "__main__"})
    shared = ["_attention", "_errors", "_mapper", "_meaning", "_names", "_report", "_scale_param", "_scale_rules",
              "_show", "_warn"]
    assert flat == shared
