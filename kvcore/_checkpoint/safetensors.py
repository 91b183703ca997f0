"""Safetensors headers: parsed and validated without touching tensor data.

Nothing here knows about models; it answers "which tensors are in this file, with which
dtype, shape and byte range", or raises ``CheckpointError``. Reading headers does not import
torch (``kvcore inspect`` answers without it): only ``read_tensor``, ``TensorInfo.torch_dtype``
and ``DTYPES`` do, when first used.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
import os
import struct
from collections.abc import Iterable
from itertools import chain, compress, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from kvcore._checkpoint.decode import ITEMSIZES
from kvcore._errors import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_HEADER_BYTES",
    "FileStamp",
    "ShardHeader",
    "TensorInfo",
    "check_shards_unchanged",
    "check_unchanged",
    "read_bytes",
    "read_header",
    "read_tensor",
    "torch_dtypes",
    "unique_keys",
]

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""The cap the safetensors library itself puts on a header."""
MAX_TENSORS = 1 << 18
"""Tensor entries per file. The biggest real checkpoints hold ~10^5 tensors over many shards;
a header of 10^6 tiny entries (fits in 100 MiB) costs seconds and gigabytes before any check."""
MAX_NAME_LENGTH = 1024
"""Characters in a tensor name; real names are under 200."""



@functools.cache
def torch_dtypes() -> dict[str, torch.dtype]:
    """safetensors dtype name -> torch dtype (imports torch: header reading does not)."""
    import torch

    dtypes = {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "U16": torch.uint16,
        "U32": torch.uint32,
        "U64": torch.uint64,
        "BOOL": torch.bool,
    }
    if hasattr(torch, "float8_e8m0fnu"):
        dtypes["F8_E8M0"] = torch.float8_e8m0fnu
    return dtypes


def __getattr__(name: str) -> Any:
    """``DTYPES`` (``torch_dtypes()``) for the loader's modules, built on first use (PEP 562)."""
    if name == "DTYPES":
        return torch_dtypes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class FileStamp:
    """A file's identity and version when its header was read.

    Mapping a file that shrank since its header was validated would turn an out-of-range
    read into SIGBUS, so readers compare the open file's stamp with this one first.
    """

    size: int
    mtime_ns: int
    inode: int
    device: int
    ctime_ns: int = 0
    """The inode's change time: any write moves it, and unlike the mtime no ``utime`` can put it back."""

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)


class TensorInfo(NamedTuple):
    """One tensor of a shard: where its bytes are (absolute file offsets) and what they are.

    ``stamp`` is the shard's :class:`FileStamp` when the header was read (``None`` for
    infos made by hand, which are then not checked for changes). A tuple, not a
    dataclass: a checkpoint holds up to 10^5 of them, built in bulk (see ``_quick_infos``).
    """

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int
    stamp: FileStamp | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype = torch_dtypes().get(self.dtype)
        if dtype is None:  # F8_E8M0 before torch 2.7: the header is valid, this torch cannot hold it
            import torch

            raise CheckpointError(
                f"tensor {self.name!r} in {self.path} is {self.dtype}, which torch {torch.__version__} has no "
                "dtype for; upgrade torch (2.7 or newer has float8_e8m0fnu)"
            )
        return dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclasses.dataclass(frozen=True)
class ShardHeader:
    """A validated safetensors header: its tensors in file order and the file's size."""

    path: Path
    size: int
    data_start: int
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]
    stamp: FileStamp | None = None


def read_header(path: Path) -> ShardHeader:
    """Read and validate the header of one safetensors file."""
    try:
        with open(path, "rb") as f:
            stamp = FileStamp.of(os.fstat(f.fileno()))
            size = stamp.size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _bad(path, f"the file is {size} bytes, too short for a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise _bad(path, f"the header claims {length} bytes, above the {MAX_HEADER_BYTES} byte cap")
            if 8 + length > size:
                raise _bad(path, f"the header claims {length} bytes but the file has only {size}")
            raw = f.read(length)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    # Before parsing: every entry has one "data_offsets" key (a name holding the text only adds).
    if raw.count(b'"data_offsets"') > MAX_TENSORS:
        raise _bad(path, f"its header holds more than {MAX_TENSORS} tensor entries, kvcore's cap per file")
    data_start = 8 + length
    # Anything unusual, bad or merely odd, goes the careful way, which words the errors.
    quick = _quick_entries(path, raw, data_start, stamp)
    tensors, metadata = quick or _careful_entries(path, _parse_json(path, raw), data_start, stamp)
    _check_layout(path, tensors, size)
    return ShardHeader(path, size, data_start, tensors, metadata, stamp)


def _bad(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a valid safetensors file: {what}. The file is probably truncated or "
        "corrupt; download or export it again"
    )


def _parse_json(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys)
    # ValueError covers JSONDecodeError, integers too long to convert and duplicate keys;
    # RecursionError a header nested thousands of levels deep.
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(path, f"its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _bad(path, f"its header is a JSON {type(header).__name__}, not an object")
    return header


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object hook refusing duplicate keys: parsers disagree on which one wins."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"key {key!r} appears twice")
            seen.add(key)
    return result


def _quick_entries(
    path: Path, raw: bytes, data_start: int, stamp: FileStamp
) -> tuple[tuple[TensorInfo, ...], dict[str, str]] | None:
    """``_careful_entries``'s result for the usual header, with C loops only; ``None`` for anything else.

    The parse has no ``unique_keys`` hook (a Python call per JSON object); duplicate keys
    are ruled out by counting instead. Every key of a JSON document is followed by one
    ``:``, so a document has at least as many colons as key/value pairs, and at least as
    many pairs as the objects parsed from it hold, with equality only when no key was
    given twice. Taking only headers whose values nest no further (entries of three keys,
    string metadata), the pairs parsed are easy to count: equal counts mean no duplicate.
    A colon inside a tensor name merely sends the header the careful way.
    """
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if type(header) is not dict:
        return None
    pairs = len(header)
    metadata = header.pop("__metadata__", None) or {}  # as in _careful_entries: a falsy one is none
    if type(metadata) is not dict or set(map(type, metadata.values())) - {str}:
        return None
    specs = list(header.values())
    if set(map(type, specs)) - {dict} or set(map(len, specs)) - {3}:
        return None
    if raw.count(b":") != pairs + len(metadata) + 3 * len(specs):
        return None
    infos = _quick_infos(path, list(header), specs, data_start, stamp)
    if infos is None:
        return None
    infos.sort(key=_START)
    return tuple(infos), metadata


def _careful_entries(
    path: Path, header: dict[str, Any], data_start: int, stamp: FileStamp
) -> tuple[tuple[TensorInfo, ...], dict[str, str]]:
    """The tensors and metadata of a parsed ``header`` (duplicate keys already refused); raises
    ``CheckpointError`` saying what is wrong with the first bad part."""
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _bad(path, "its __metadata__ is not an object")
    if len(header) > MAX_TENSORS:
        raise _bad(path, f"its header holds {len(header)} tensor entries, more than kvcore's cap of {MAX_TENSORS}")
    names, specs = list(header), list(header.values())
    infos = _quick_infos(path, names, specs, data_start, stamp)
    if infos is None:  # some entry is bad: find the first one and say what is wrong with it
        infos = _careful_infos(path, names, specs, data_start, stamp)
    infos.sort(key=_START)
    return tuple(infos), {str(k): str(v) for k, v in metadata.items()}


_START = operator.itemgetter(4)  # TensorInfo.start
_END = operator.itemgetter(5)  # TensorInfo.end


_make_info = functools.partial(tuple.__new__, TensorInfo)
"""``TensorInfo`` from a tuple of its fields: a C-level call instead of ``TensorInfo._make``'s
Python-level one and its arity check (every caller passes all 7 fields): together with the other
two such builders, 3-4 % of the (b) load of 36,951 tensors (``make bench``);
tests/core/test_quick_careful.py checks it builds what ``_make`` builds."""


def _quick_infos(
    path: Path, names: list[str], specs: list[Any], data_start: int, stamp: FileStamp
) -> list[TensorInfo] | None:
    """``_careful_infos``'s result with whole-column checks (C loops); ``None`` if any entry is bad.

    This runs for every tensor of every shard (10^5 on big MoE checkpoints), so instead of a
    function call and a dozen checks per entry it checks each column (dtypes, shapes,
    offsets) at once. It only decides good or bad: ``_careful_infos`` words the error. JSON gives
    exact types, so ``type(...)`` sets are exact checks (``bool`` is not ``int`` here).
    """
    if set(map(type, specs)) - {dict} or len(specs) > MAX_TENSORS or max(map(len, names), default=0) > MAX_NAME_LENGTH:
        return None
    # JSON values, checked column by column below.
    dtypes: list[Any] = list(map(dict.get, specs, repeat("dtype")))
    shapes: list[Any] = list(map(dict.get, specs, repeat("shape")))
    offsets: list[Any] = list(map(dict.get, specs, repeat("data_offsets")))
    if set(map(type, dtypes)) - {str} or set(dtypes) - ITEMSIZES.keys():
        return None
    if set(map(type, shapes)) - {list} or set(map(type, offsets)) - {list} or set(map(len, offsets)) - {2}:
        return None
    counts = list(chain.from_iterable(shapes))
    bounds = list(chain.from_iterable(offsets))
    if set(map(type, counts)) - {int} or set(map(type, bounds)) - {int} or min(counts + bounds, default=0) < 0:
        return None
    begins, ends = bounds[0::2], bounds[1::2]
    numels = list(map(math.prod, shapes))
    needed = list(map(operator.mul, numels, map(ITEMSIZES.__getitem__, dtypes)))
    if list(map(operator.sub, ends, begins)) != needed:  # also rules out end < begin
        return None
    # torch sizes are int64 (``_indexable``): for a tensor with data the product is its numel;
    # an empty one's other dims are bounded by nothing else.
    if max(numels, default=0) >= _MAX_ELEMENTS:
        return None
    if 0 in numels and not all(map(_indexable, compress(shapes, map(operator.not_, numels)))):
        return None
    starts = map(data_start.__add__, begins)
    stops = map(data_start.__add__, ends)
    fields = zip(names, repeat(path), dtypes, map(tuple, shapes), starts, stops, repeat(stamp))
    return list(map(_make_info, fields))


def _careful_infos(
    path: Path, names: list[str], specs: list[Any], data_start: int, stamp: FileStamp
) -> list[TensorInfo]:
    """Every entry checked one by one, in header order; the first bad one raises ``CheckpointError``."""
    return [_info(path, name, spec, data_start, stamp) for name, spec in zip(names, specs, strict=True)]


def _info(path: Path, name: str, spec: Any, data_start: int, stamp: FileStamp) -> TensorInfo:
    if len(name) > MAX_NAME_LENGTH:
        raise _bad(
            path,
            f"a tensor name is {len(name)} characters long (it begins {name[:60]!r}); kvcore's cap is "
            f"{MAX_NAME_LENGTH}",
        )
    if not isinstance(spec, dict):
        raise _bad(path, f"the entry of tensor {name!r} is not an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ITEMSIZES:
        raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r} (known: {', '.join(ITEMSIZES)})")
    if not isinstance(shape, list) or not _all_counts(shape):
        raise _bad(path, f"tensor {name!r} has shape {shape!r}; a shape is a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and _all_counts(offsets)):
        raise _bad(path, f"tensor {name!r} has data_offsets {offsets!r}; expected [begin, end]")
    if not _indexable(shape):
        raise _bad(
            path,
            f"tensor {name!r} has shape {shape}, whose dimensions multiply to 2^63 or more "
            "(counting 0 as 1): no tensor can have that shape",
        )
    begin, end = offsets
    if begin > end:
        raise _bad(path, f"tensor {name!r} has data_offsets {offsets!r}, which end before they begin")
    expected = math.prod(shape) * ITEMSIZES[dtype]
    if end - begin != expected:
        raise _bad(
            path,
            f"tensor {name!r} spans {end - begin} bytes but dtype {dtype} x shape {shape} needs {expected}",
        )
    return TensorInfo(name, path, dtype, tuple(shape), data_start + begin, data_start + end, stamp)


_MAX_ELEMENTS = 1 << 63
"""torch sizes and strides are signed 64-bit: a shape whose dims multiply past this overflows."""


def _indexable(shape: list[int]) -> bool:
    """The shape fits torch: its dims (0 counted as 1, as strides count it) multiply to below 2^63."""
    return math.prod(map(max, shape, repeat(1))) < _MAX_ELEMENTS


def _all_counts(values: list[Any]) -> bool:
    # Inline checks, no call per item: this runs for every tensor of every shard (10^5 on big
    # MoE checkpoints). JSON integers are exactly ``int``, so ``type(...) is int`` excludes bool.
    return all(type(value) is int and value >= 0 for value in values)


def _check_layout(path: Path, tensors: tuple[TensorInfo, ...], file_size: int) -> None:
    """Every tensor lies inside the file and no two share a byte (tensors are sorted by start)."""
    if not _quick_layout(tensors, file_size):
        _careful_layout(path, tensors, file_size)


def _careful_layout(path: Path, tensors: tuple[TensorInfo, ...], file_size: int) -> None:
    """``_check_layout`` tensor by tensor: raises naming the first tensor out of the file or overlapping."""
    previous: TensorInfo | None = None
    for info in tensors:
        if info.end > file_size:
            raise _bad(
                path,
                f"tensor {info.name!r} ends at byte {info.end} but the file has only {file_size}",
            )
        if info.nbytes == 0:
            continue
        if previous is not None and info.start < previous.end:
            raise _bad(path, f"tensors {previous.name!r} and {info.name!r} overlap")
        previous = info


def _quick_layout(tensors: tuple[TensorInfo, ...], file_size: int) -> bool:
    """Whether ``_careful_layout`` passes, decided on whole columns (C loops), naming no culprit."""
    starts, ends = list(map(_START, tensors)), list(map(_END, tensors))
    if max(ends, default=0) > file_size:
        return False
    filled = list(map(operator.gt, ends, starts))  # empty tensors overlap nothing
    starts, ends = list(compress(starts, filled)), list(compress(ends, filled))
    return all(map(operator.ge, starts[1:], ends[:-1]))


def check_unchanged(info: TensorInfo, fileno: int) -> None:
    """Raise ``CheckpointError`` unless open file ``fileno`` is the file ``info``'s header came from.

    A shard replaced, truncated or rewritten since its header was validated could make a
    memory map read beyond the end of the file (SIGBUS) or load bytes nobody validated.
    """
    if info.stamp is None:
        return
    now = FileStamp.of(os.fstat(fileno))
    if now == info.stamp:
        return
    raise CheckpointError(
        f"{info.path} was {_change(info.stamp, now)} after kvcore read its header (while loading "
        f"tensor {info.name!r}); "
        "nothing from the new version is loaded. Wait until the file is no longer being written "
        "(download or copy finished), then load again"
    )


def check_shards_unchanged(shards: Iterable[ShardHeader]) -> None:
    """Raise ``CheckpointError`` if any shard differs from the file whose header was read."""
    for shard in shards:
        if shard.stamp is None or not shard.tensors:
            continue
        try:
            with open(shard.path, "rb") as f:
                check_unchanged(shard.tensors[0], f.fileno())
        except OSError as exc:
            raise CheckpointError(f"cannot read {shard.path} any more: {exc}; load again") from exc


def _change(before: FileStamp, after: FileStamp) -> str:
    if (before.inode, before.device) != (after.inode, after.device):
        return "replaced by another file"
    if before.size != after.size:
        return f"resized from {before.size} to {after.size} bytes"
    return "modified"


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """Read one (small) tensor's bytes into a new tensor, without mapping the file."""
    import torch

    data = read_bytes(info)
    if not data:
        return torch.empty(info.shape, dtype=info.torch_dtype)
    return torch.frombuffer(bytearray(data), dtype=info.torch_dtype).reshape(info.shape)


def read_bytes(info: TensorInfo) -> bytes:
    """One (small) tensor's bytes, read from its shard once the shard is known unchanged."""
    try:
        with open(info.path, "rb") as f:
            check_unchanged(info, f.fileno())
            f.seek(info.start)
            data = f.read(info.nbytes)
    except OSError as exc:
        raise CheckpointError(f"cannot read tensor {info.name!r} from {info.path}: {exc}") from exc
    if len(data) != info.nbytes:
        raise CheckpointError(
            f"{info.path} ended while reading tensor {info.name!r}: the file shrank after its "
            "header was read"
        )
    return data
