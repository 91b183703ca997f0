"""Every ```python block of README.md runs, and its install lines work from the checkout.

Each block is executed as written (the transformers one given a ``ckpt``, as its text says),
from the repository's root, the way a reader pastes it: a block that raises fails its test,
and a new block without a test here fails ``test_every_python_block_is_run``. A block's last
line, when it is an expression, is evaluated like a REPL line and its value checked.
"""

from __future__ import annotations

import ast
import json
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import kvcore
import kvcore.testing

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
AUTOFP8 = "tests/fixtures/real/autofp8/head_k_v_scale"
LLMCOMPRESSOR = REPO / "tests" / "fixtures" / "real" / "llmcompressor" / "fp8_kv_tensor"


@dataclass(frozen=True)
class Snippet:
    heading: str
    line: int
    """README line of the block's first code line (1-based)."""
    code: str


def snippets(text: str) -> list[Snippet]:
    """The ```python blocks of ``text``, each with the ``## `` heading it sits under."""
    found, heading, block, start = [], "", None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if block is None and line.startswith("## "):
            heading = line[3:].strip()
        elif block is None and line.strip() == "```python":
            block, start = [], number + 1
        elif block is not None and line.strip() == "```":
            found.append(Snippet(heading, start, "\n".join(block) + "\n"))
            block = None
        elif block is not None:
            block.append(line)
    return found


SNIPPETS = snippets(README.read_text())
TESTED = ["Load a checkpoint", "Hugging Face transformers", "For engine authors", "Write a plugin"]


def snippet(heading: str) -> Snippet:
    matches = [s for s in SNIPPETS if s.heading == heading]
    assert len(matches) == 1, f"README.md has {len(matches)} python blocks under '## {heading}', expected 1"
    return matches[0]


def run(code: str, namespace: dict[str, Any], line: int = 1) -> Any:
    """Execute ``code`` in ``namespace``; return the value of its last line if that is an expression.

    Tracebacks point at README.md's own line numbers."""
    tree = ast.parse(code)
    ast.increment_lineno(tree, line - 1)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, str(README), "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), str(README), "eval"), namespace)


def run_snippet(heading: str, namespace: dict[str, Any]) -> Any:
    found = snippet(heading)
    return run(found.code, namespace, found.line)


def test_every_python_block_is_run() -> None:
    assert [s.heading for s in SNIPPETS] == TESTED, (
        "README.md's python blocks changed: each one needs a test in tests/docs/test_readme.py"
    )


def test_snippets_are_found_and_a_broken_one_fails() -> None:
    """The extraction and the runner themselves: a block that raises is an error, not a pass."""
    found = snippets("## A\n\n```python\nx = 1\nx + 1\n```\n\n## B\n```python\n1 / 0\n```\n```\nnot python\n```\n")
    assert [(s.heading, s.line, s.code) for s in found] == [("A", 4, "x = 1\nx + 1\n"), ("B", 10, "1 / 0\n")]
    assert run(found[0].code, {}) == 2
    with pytest.raises(ZeroDivisionError):
        run(found[1].code, {}, found[1].line)


def test_load_a_checkpoint(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    namespace: dict[str, Any] = {}
    value = run_snippet("Load a checkpoint", namespace)
    expected = load_file(REPO / AUTOFP8 / "model.safetensors")["model.layers.0.self_attn.k_scale"]
    assert isinstance(value, float)
    assert value == float(expected.to(torch.float32))
    assert isinstance(namespace["report"], kvcore.LoadReport)
    shown = capsys.readouterr().out  # print(report): method, plugins, per-layer scales
    assert "fp8" in shown and "model.layers.1.self_attn.attn" in shown


def per_head_checkpoint(directory: Path) -> tuple[Path, list[float]]:
    """The AutoFP8 fixture's weights for the same model, with compressed-tensors ``attn_head`` k/v
    scales: ``(num_kv_heads, 1, 1)`` bf16, distinct per head (llm-compressor's layout)."""
    tensors = load_file(REPO / AUTOFP8 / "model.safetensors")
    config = json.loads((REPO / AUTOFP8 / "config.json").read_text())
    quantization = json.loads((LLMCOMPRESSOR / "config.json").read_text())["quantization_config"]
    quantization["kv_cache_scheme"]["strategy"] = "attn_head"
    config["quantization_config"] = quantization
    heads = config["num_key_value_heads"]
    for layer in range(config["num_hidden_layers"]):
        base = torch.tensor([0.0006, 0.0019])[:heads] * (1 + 0.25 * layer)
        tensors[f"model.layers.{layer}.self_attn.k_scale"] = base.reshape(heads, 1, 1).to(torch.bfloat16)
        tensors[f"model.layers.{layer}.self_attn.v_scale"] = (1.5 * base).reshape(heads, 1, 1).to(torch.bfloat16)
    expected = tensors["model.layers.0.self_attn.k_scale"].to(torch.float32).reshape(-1).tolist()
    return kvcore.testing.write_checkpoint(directory, tensors, config=config), expected


def test_load_a_checkpoint_reads_per_head_scales_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same block, its checkpoint swapped for a per-head one: its last line still reads the scales."""
    monkeypatch.chdir(REPO)
    checkpoint, expected = per_head_checkpoint(tmp_path / "per_head")
    found = snippet("Load a checkpoint")
    assert f'"{AUTOFP8}"' in found.code, "the block's checkpoint path changed: update AUTOFP8 here"
    value = run(found.code.replace(f'"{AUTOFP8}"', repr(str(checkpoint))), {}, found.line)
    assert len(expected) == 2 and expected[0] != expected[1]
    assert value == expected


def test_for_engine_authors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run after "Load a checkpoint" in one namespace, as the README says (its ``model`` and ``ckpt``)."""
    monkeypatch.chdir(REPO)
    namespace: dict[str, Any] = {}
    run_snippet("Load a checkpoint", namespace)
    attention = namespace["model"].model.layers[1].self_attn.attn
    attention.k_scale.data.fill_(-1.0)  # so that the block's own loads must write it again
    scales = run_snippet("For engine authors", namespace)
    expected = load_file(REPO / AUTOFP8 / "model.safetensors")["model.layers.1.self_attn.k_scale"].item()
    assert attention.k_scale.item() == expected
    assert scales["model.layers.1.self_attn.attn"]["k_scale"] == expected
    assert sorted(scales) == ["model.layers.0.self_attn.attn", "model.layers.1.self_attn.attn"]


def acme_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The example ACME plugin (``examples/kvcore-acme``), from the checkout unless installed."""
    try:
        import kvcore_acme
    except ImportError:
        monkeypatch.syspath_prepend(str(REPO / "examples" / "kvcore-acme"))
        import kvcore_acme
    return kvcore_acme


def kv_only_checkpoint(directory: Path) -> tuple[Path, float]:
    """A transformers checkpoint whose KV cache alone is quantized (ACME's format: bf16 weights,
    per-layer fp8 k/v scales), with a tokenizer that knows "Hello": what ``from_pretrained`` loads
    with no quantization package installed (it skips ``quant_method`` values it does not know)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    raw = json.loads((LLMCOMPRESSOR / "config.json").read_text())
    raw.pop("quantization_config")
    model_class = transformers.LlamaForCausalLM
    torch.manual_seed(0)
    model = model_class(model_class.config_class(**{k: v for k, v in raw.items() if k != "model_type"}))
    model.to(torch.bfloat16).save_pretrained(directory)
    tensors = load_file(directory / "model.safetensors")
    for layer in range(raw["num_hidden_layers"]):
        tensors[f"model.layers.{layer}.self_attn.k_proj.kscale"] = torch.tensor([0.0125, 0.025][layer])
        tensors[f"model.layers.{layer}.self_attn.v_proj.vscale"] = torch.tensor(0.02)
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "acme-kv", "kv_cache_dtype": "fp8_e4m3"}
    kvcore.testing.write_checkpoint(directory, tensors, config=config)
    words = Tokenizer(models.WordLevel({"<unk>": 0, "Hello": 1}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>").save_pretrained(directory)
    return directory, torch.tensor(0.0125).item()


def test_hugging_face_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint, k_scale = kv_only_checkpoint(tmp_path / "acme")
    acme = acme_module(monkeypatch)
    namespace: dict[str, Any] = {"ckpt": str(checkpoint)}
    if kvcore.get_plugin_manager().get_plugin("acme") is not None:
        run_snippet("Hugging Face transformers", namespace)
    else:
        with kvcore.testing.registered_plugin(acme, "acme", distribution="kvcore-acme", version="0.1.0"):
            run_snippet("Hugging Face transformers", namespace)
    cache, out = namespace["cache"], namespace["out"]
    assert out.shape[0] == 1 and out.shape[1] > 1  # the prompt and at least one generated token
    assert cache.layers[0].keys.dtype == torch.float8_e4m3fn
    assert [float(layer.k_scale) for layer in cache.layers] == [k_scale, torch.tensor(0.025).item()]


def test_write_a_plugin() -> None:
    """The block is a plugin module: it passes kvcore's conformance check and maps its names."""
    module = types.ModuleType("kvcore_myformat")
    run_snippet("Write a plugin", module.__dict__)
    own = {"quant_method": "myformat"}
    kvcore.testing.check_plugin(module, own_configs=[own])
    mapper = module.get_cache_scale_mapper(kvcore.QuantConfig("myformat", own))
    assert mapper.map_name("model.layers.3.self_attn.k_proj.kscale") == "model.layers.3.self_attn.attn.k_scale"
    assert module.get_cache_scale_mapper(kvcore.QuantConfig("fp8", {"quant_method": "fp8"})) is None


# --- install lines ---------------------------------------------------------------------------

PIP = re.compile(r"pip install ([^`#\n]*)")
VLLM_SECTION = re.compile(r"^## vLLM\n.*?(?=^## )", re.MULTILINE | re.DOTALL)
"""README's vLLM section and docs/vllm.md belong to the vLLM integration (integrations/vllm)."""


def install_texts() -> dict[str, str]:
    texts = {"README.md": VLLM_SECTION.sub("", README.read_text())}
    texts.update({f"docs/{p.name}": p.read_text() for p in sorted((REPO / "docs").glob("*.md")) if p.name != "vllm.md"})
    return texts


def test_no_install_line_names_an_unpublished_distribution() -> None:
    """kvcore and its plugins are installed from the checkout; ``pip install kvcore-x`` would fail."""
    offenders = []
    for name, text in install_texts().items():
        for command in PIP.findall(text):
            for argument in command.split():
                if re.fullmatch(r"['\"]?kvcore[\w-]*(\[[^\]]*\])?['\"]?", argument):
                    offenders.append(f"{name}: pip install {command.strip()}")
    assert not offenders, "\n".join(offenders)


def test_readme_install_line_installs_kvcore_and_every_first_party_plugin_from_the_checkout() -> None:
    block = re.search(r"^## Install\n.*?^```\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)
    assert block is not None, "README.md has no ## Install block"
    lines = [line.split("#")[0].split() for line in block.group(1).splitlines() if "pip install" in line]
    editable = [words[i + 1] for words in lines for i, word in enumerate(words) if word == "-e"]
    plugins = sorted(f"plugins/{p.name}" for p in (REPO / "plugins").iterdir() if (p / "pyproject.toml").exists())
    assert editable[0] == "." and sorted(editable[1:]) == plugins
    for path in editable:
        assert (REPO / path / "pyproject.toml").is_file(), path
    assert not [word for words in lines for word in words if "modelopt" in word]


def test_python_blocks_import_only_public_kvcore() -> None:
    private = [s.heading for s in SNIPPETS if re.search(r"kvcore\._", s.code)]
    assert not private, f"README.md python blocks under {private} use a private kvcore module"
