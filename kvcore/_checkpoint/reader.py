"""A checkpoint directory: its config, quantization config, and validated shard headers."""

from __future__ import annotations

import dataclasses
import json
import operator
import os
import re
from pathlib import Path
from typing import Any

from kvcore._checkpoint.paths import ADVICE, describe, path_error, regular_file, resolve
from kvcore._checkpoint.quant_config import QuantConfig
from kvcore._checkpoint.safetensors import ShardHeader, TensorInfo, read_header, unique_keys
from kvcore._errors import CheckpointError, QuantConfigError

__all__ = ["Checkpoint", "read_checkpoint"]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_JSON_BYTES = 100 * 1024 * 1024
"""config.json, hf_quant_config.json and the index are read whole; a larger one is refused."""
CONVERT_ADVICE = (
    "kvcore never unpickles files, because unpickling runs code from the file. Convert the "
    "checkpoint to safetensors in a trusted environment, for example with "
    "`safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')` "
    "(or `save_pretrained(..., safe_serialization=True)` in transformers)"
)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What a load needs to know before reading any tensor data."""

    directory: Path
    config: dict[str, Any]
    quant_config: QuantConfig | None
    shards: tuple[ShardHeader, ...]
    tensors: dict[str, TensorInfo]


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read ``config.json``, any quantization config, and every shard's header.

    Every OS-level failure on the checkpoint's paths (no permission, a name too long, a
    symlink loop, an I/O error) is a ``CheckpointError`` naming the path and what to do.
    """
    try:
        return _read(Path(path))
    except OSError as exc:
        raise path_error(exc, path) from None


def _read(directory: Path) -> Checkpoint:
    if directory.suffix in PICKLE_SUFFIXES and directory.is_file():
        raise CheckpointError(f"{directory} is a pickle checkpoint. {CONVERT_ADVICE}")
    if directory.is_file() and directory.suffix == ".safetensors":
        return _assemble(directory.parent, [directory], single=directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist or is not a directory")
    index = directory / INDEX_FILE
    if regular_file(index, "the index JSON file"):
        # Read once: on a 10^5-tensor checkpoint the index is megabytes of JSON.
        weight_map = _weight_map(index)
        return _assemble(directory, _indexed_shards(directory, index, weight_map), weight_map)
    return _assemble(directory, _shard_paths(directory))


def _assemble(
    directory: Path, shard_paths: list[Path], weight_map: dict[str, str] | None = None, single: Path | None = None
) -> Checkpoint:
    config = _read_json(directory / "config.json", required=False)
    quant_config = _quant_config(directory, config)
    index = directory / INDEX_FILE
    indexed = regular_file(index, "the index JSON file")
    if single is not None and indexed:
        weight_map = _weight_map(index)
        _one_of_several(single, index, weight_map, resolve(directory))
    shards = tuple(read_header(p) for p in shard_paths)
    tensors = _tensor_table(shards)
    if len(shard_paths) > 1 or indexed:
        if weight_map is None:
            weight_map = _weight_map(index)
        _check_index(index, weight_map, shards, tensors, resolve(directory))
    return Checkpoint(directory, config, quant_config, shards, tensors)


def _one_of_several(single: Path, index: Path, weight_map: dict[str, str], root: Path) -> None:
    """Refuse one shard of a sharded checkpoint given on its own: name the directory to load instead."""
    mine = resolve(single)
    named = {_inside(root, index, tensor, shard) for shard, tensor in _first_tensors(weight_map).items()}
    others = named - {mine}
    if others:
        raise CheckpointError(
            f"{single} is one shard of the sharded checkpoint in {single.parent} ({index.name} names "
            f"{len(named | {mine})} shards); load the directory {single.parent} instead, which reads them all"
        )


def _shard_paths(directory: Path) -> list[Path]:
    """The shards of a directory without an index."""
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    found = sorted(p for p in directory.glob("*.safetensors") if p.is_file())  # not a FIFO or directory
    if len(found) == 1:
        _not_a_lone_shard(found[0])
        return found
    if found:
        raise CheckpointError(
            f"{directory} holds {len(found)} safetensors files but no {INDEX_FILE}; "
            f"add the index that names which shard holds which tensor"
        )
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise CheckpointError(
            f"{directory} holds only pickle checkpoints ({', '.join(pickled)}) and no "
            f"{SINGLE_FILE}. {CONVERT_ADVICE}"
        )
    raise CheckpointError(
        f"{directory} holds no {SINGLE_FILE} and no {INDEX_FILE}; point kvcore at the directory "
        "that holds the checkpoint's safetensors files"
    )


SHARD_NAME = re.compile(r"-(\d+)-of-(\d+)\.safetensors$")
"""``model-00001-of-00004.safetensors``: how transformers and the hub name shard i of n."""


def _not_a_lone_shard(path: Path) -> None:
    """Refuse shard i of n > 1 found alone: the rest of the checkpoint (and its index) is missing."""
    named = SHARD_NAME.search(path.name)
    if named is None or int(named.group(2)) < 2:
        return
    number, total = int(named.group(1)), int(named.group(2))
    raise CheckpointError(
        f"{path.parent} holds only {path.name}, shard {number} of {total} of a sharded checkpoint: the "
        f"other {total - 1} shard(s) and {INDEX_FILE} are missing. Download the rest of the checkpoint "
        "(the index and every shard) into the same directory"
    )


def _indexed_shards(directory: Path, index: Path, weight_map: dict[str, str]) -> list[Path]:
    root = resolve(directory)
    shards = {shard: _inside(root, index, tensor, shard) for shard, tensor in _first_tensors(weight_map).items()}
    # Two spellings of one file ("a.safetensors", "./a.safetensors") are one shard.
    return list(dict.fromkeys(shards.values()))


def _first_tensors(weight_map: dict[str, str]) -> dict[str, str]:
    """Each shard the index names, in order of first mention, with the first tensor it places there."""
    # Built backwards, so that for each shard the earliest tensor is written last and stays.
    first = dict(zip(reversed(weight_map.values()), reversed(weight_map), strict=True))
    return {shard: first[shard] for shard in dict.fromkeys(weight_map.values())}


def _weight_map(index: Path) -> dict[str, str]:
    weight_map = _read_json(index, required=True).get("weight_map")
    # JSON strings are exactly ``str``: one set of types instead of a check per tensor.
    if not isinstance(weight_map, dict) or set(map(type, weight_map.values())) - {str}:
        raise CheckpointError(
            f"{index}: 'weight_map' must be an object of tensor name -> shard file name; "
            "fix or re-download the index"
        )
    if not weight_map:
        raise CheckpointError(f"{index}: 'weight_map' names no tensors; fix or re-download the index")
    return weight_map


def _inside(root: Path, index: Path, tensor: str, shard: str) -> Path:
    where = f"{index} places tensor {tensor!r} in {shard!r}"
    try:
        candidate = resolve(root / shard)
        outside = Path(shard).is_absolute() or not (
            candidate.is_relative_to(root) or _hub_blob(root, shard, candidate)
        )
        other = None if outside else describe(candidate)
        present = not outside and other is None and candidate.is_file()
    except ValueError as exc:  # a NUL byte
        raise CheckpointError(f"{where}, which is not a usable file name ({exc}); fix the index") from None
    except OSError as exc:  # a name too long, a symlink loop, no permission
        advice = ADVICE.get(exc.errno or 0, "check the path and the file system")
        raise CheckpointError(
            f"{where}, which cannot be read ({exc.strerror or exc}): {advice}. If the index names the wrong "
            "file, fix the index"
        ) from None
    if outside:
        raise CheckpointError(
            f"{where}, which lies outside the checkpoint directory {root} (after resolving '..' "
            "and symlinks); refusing to read it. Shards must sit inside the checkpoint directory: "
            "copy them there and name them relative to it in the index"
        )
    if candidate.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"{where}, a pickle file. {CONVERT_ADVICE}")
    if candidate.suffix == ".json" or candidate == resolve(index):
        what = "the index itself" if candidate == resolve(index) else f"a JSON file ({candidate.name})"
        raise CheckpointError(f"{where}, which is {what}, not a safetensors shard; fix the index")
    if other is not None:
        raise CheckpointError(
            f"{where}, which is {other}, not a safetensors file; put the shard there or fix the index"
        )
    if not present:
        raise CheckpointError(
            f"{where}, but that file is missing; the download is probably incomplete: "
            "download the missing shard"
        )
    return candidate


def _hub_blob(root: Path, shard: str, candidate: Path) -> bool:
    """A Hugging Face hub cache snapshot: ``snapshots/<rev>/<shard>`` links to ``../../blobs/<sha>``.

    Only that layout is allowed out: the index names the shard inside the snapshot (no ``..``),
    and the link lands in the same repository's ``blobs`` folder.
    """
    lexical = os.path.normpath(root / shard)
    return (
        root.parent.name == "snapshots"
        and Path(lexical).is_relative_to(root)
        and candidate.is_relative_to(root.parent.parent / "blobs")
    )


def _check_index(
    index: Path,
    weight_map: dict[str, str],
    shards: tuple[ShardHeader, ...],
    tensors: dict[str, TensorInfo],
    root: Path,
) -> None:
    """Every tensor the index names is in the shard it names (the shards may hold more)."""
    # Resolve once per shard, not once per tensor: checkpoints hold up to 10^5 tensors.
    named = {shard: _inside(root, index, name, shard) for shard, name in _first_tensors(weight_map).items()}
    if _index_matches(weight_map, named, shards):
        return
    actual = {path: path.resolve() for path in {info.path for info in tensors.values()}}
    for name, shard in weight_map.items():
        info = tensors.get(name)
        if info is None:
            raise CheckpointError(
                f"{index} places tensor {name!r} in {shard!r}, but no shard holds it; "
                "the index does not match the shards: re-download the index and its shards"
            )
        if actual[info.path] != named[shard]:
            raise CheckpointError(
                f"{index} places tensor {name!r} in {shard!r}, but it is in {info.path.name}; "
                "the index does not match the shards: re-download the index and its shards"
            )


def _index_matches(weight_map: dict[str, str], named: dict[str, Path], shards: tuple[ShardHeader, ...]) -> bool:
    """``_check_index``'s test as two dicts of tensor -> file number, compared in C.

    ``_check_index`` words the error when this says no.
    """
    number = {path: i for i, path in enumerate(dict.fromkeys(shard.path.resolve() for shard in shards))}
    of_shard = {shard: number.get(path, -1) for shard, path in named.items()}
    placed = dict(zip(weight_map, map(of_shard.__getitem__, weight_map.values()), strict=True))
    held: dict[str, int] = {}
    for shard in shards:
        held.update(dict.fromkeys(map(_NAME, shard.tensors), number[shard.path.resolve()]))
    return placed.items() <= held.items()


_NAME = operator.itemgetter(0)  # TensorInfo.name


def _tensor_table(shards: tuple[ShardHeader, ...]) -> dict[str, TensorInfo]:
    table: dict[str, TensorInfo] = {}
    for shard in shards:
        table.update(zip(map(_NAME, shard.tensors), shard.tensors, strict=True))
    if len(table) == sum(len(shard.tensors) for shard in shards):  # no name twice
        return table
    table.clear()
    for shard in shards:
        for info in shard.tensors:
            if info.name in table:
                raise CheckpointError(
                    f"tensor {info.name!r} is stored twice, in {table[info.name].path} and "
                    f"{info.path}; kvcore cannot tell which copy is meant. Remove one copy"
                )
            table[info.name] = info
    return table


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    # A directory or FIFO (whose read would block forever), a dangling symlink or a loop is
    # an error, not an absent file: a quantized checkpoint would load as unquantized.
    if not regular_file(path, "a JSON file"):
        if required:
            raise CheckpointError(f"{path} is missing; re-download the checkpoint")
        return {}
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is larger than {MAX_JSON_BYTES} bytes; it cannot be a real {path.name}")
        raw = path.read_bytes()
    except OSError as exc:
        raise path_error(exc, path) from None
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys)
    # ValueError covers JSONDecodeError, UnicodeDecodeError, integers too long to convert and
    # duplicate keys (parsers disagree on which one wins); RecursionError a document nested
    # thousands of levels deep.
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); fix or re-download it") from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} must hold a JSON object, not a {type(data).__name__}; fix or re-download it"
        )
    return data


def _quant_config(directory: Path, config: dict[str, Any]) -> QuantConfig | None:
    config_path = directory / "config.json"
    for key in ("quantization_config", "compression_config"):
        section = config.get(key)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise CheckpointError(
                f"{config_path}: {key!r} must be an object, not a {type(section).__name__}; "
                "fix the config or re-export the checkpoint"
            )
        method = section.get("quant_method")
        if not isinstance(method, str) or not method:
            raise CheckpointError(
                f"{config_path}: {key}.quant_method must be a non-empty string such as 'fp8', got "
                f"{method!r}; fix the config or re-export the checkpoint"
            )
        _check_agreement(f"{config_path}:{key}", section, _modelopt_section(directory))
        return QuantConfig(method, section, f"{config_path}:{key}", config)
    return _modelopt_config(directory, config)


MODELOPT_FILE = "hf_quant_config.json"


def _modelopt_section(directory: Path) -> dict[str, Any] | None:
    path = directory / MODELOPT_FILE
    if not regular_file(path, "a JSON file"):
        return None
    section = _read_json(path, required=True).get("quantization")
    if not isinstance(section, dict):
        raise CheckpointError(
            f"{path}: expected a 'quantization' object (ModelOpt writes "
            '{"quantization": {"quant_algo": ..., "kv_cache_quant_algo": ...}}); fix or re-export it'
        )
    return section


def _modelopt_config(directory: Path, config: dict[str, Any]) -> QuantConfig | None:
    section = _modelopt_section(directory)
    if section is None:
        return None
    return QuantConfig("modelopt", section, f"{directory / MODELOPT_FILE}:quantization", config)


def _check_agreement(source: str, section: dict[str, Any], modelopt: dict[str, Any] | None) -> None:
    """config.json's quantization config and a ModelOpt ``hf_quant_config.json`` must not contradict.

    ModelOpt writes both, saying the same. When they say different things (another method
    in config.json, or another weight or KV algorithm), which one the tensors follow cannot
    be known, so neither silently wins: ``QuantConfigError`` naming both files.
    """
    if modelopt is None or not any(modelopt.get(k) for k in ("quant_algo", "kv_cache_quant_algo")):
        return  # no hf_quant_config.json, or one that declares no quantization
    theirs = (
        f"{MODELOPT_FILE} (quant_algo {modelopt.get('quant_algo')!r}, kv_cache_quant_algo "
        f"{modelopt.get('kv_cache_quant_algo')!r})"
    )
    method = section.get("quant_method")
    if method != "modelopt":
        problem = f"{source} declares quant_method {method!r}, but {theirs} is a ModelOpt config"
    else:
        pairs = [
            ("quant_algo", _algo(section.get("quant_algo")), _algo(modelopt.get("quant_algo"))),
            ("KV cache algorithm", _kv_algo(section), _algo(modelopt.get("kv_cache_quant_algo"))),
        ]
        clash = [(what, a, b) for what, a, b in pairs if a is not None and b is not None and a != b]
        if not clash:
            return
        what, ours, other = clash[0]
        problem = f"{source} declares {what} {ours!r}, but {theirs} declares {other!r}"
    raise QuantConfigError(
        f"the checkpoint's two quantization configs disagree: {problem}. kvcore cannot tell which "
        f"one the tensors follow; remove the stale file or make config.json and {MODELOPT_FILE} agree"
    )


def _algo(value: object) -> str | None:
    return value.upper() if isinstance(value, str) and value else None


def _kv_algo(section: dict[str, Any]) -> str | None:
    """config.json's KV algorithm as ModelOpt names it: ``kv_cache_quant_algo`` or ``kv_cache_scheme``."""
    named = _algo(section.get("kv_cache_quant_algo"))
    if named is not None:
        return named
    scheme = section.get("kv_cache_scheme")
    if isinstance(scheme, dict):
        return "FP8" if scheme.get("type") == "float" and scheme.get("num_bits") == 8 else None
    return _algo(scheme)
