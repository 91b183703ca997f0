"""Duplicate keys anywhere in a safetensors header are refused, whichever way it is parsed.

The reader parses usual headers without a per-object hook and rules duplicates out by
counting ``:``; these headers are the ones counting could miss if it were done wrong
(an escaped key, a dropped value that is not an object, metadata), plus a valid header
that only the careful path reads (a ``:`` inside a tensor name).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvcore import CheckpointError
from kvcore._checkpoint.safetensors import read_header

ENTRY = '{"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}'


def _shard(tmp_path: Path, header: str) -> Path:
    raw = header.encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4))
    return path


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ('{"a": 5, "a": ' + ENTRY + "}", "a"),
        ('{"a": {"dtype": "F16", "dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}', "dtype"),
        ('{"a": {"dtype": "F16", "dtyp\\u0065": "BF16", "shape": [2], "data_offsets": [0, 4]}}', "dtype"),
        ('{"__metadata__": {"format": "pt", "format": "np"}, "a": ' + ENTRY + "}", "format"),
        ('{"a": ' + ENTRY + ', "__metadata__": {}, "__metadata__": {"format": "pt"}}', "__metadata__"),
    ],
)
def test_duplicate_key_is_refused(tmp_path: Path, header: str, key: str) -> None:
    with pytest.raises(CheckpointError, match=f"key '{key}' appears twice"):
        read_header(_shard(tmp_path, header))


@pytest.mark.parametrize("name", ["a:b", "a\\\\b", "é"])
def test_unusual_names_are_read(tmp_path: Path, name: str) -> None:
    header = read_header(_shard(tmp_path, '{"__metadata__": {"format": "pt"}, "' + name + '": ' + ENTRY + "}"))
    assert [info.name for info in header.tensors] == [name.replace("\\\\", "\\")]
    assert header.metadata == {"format": "pt"}
    assert (header.tensors[0].start, header.tensors[0].end) == (header.data_start, header.data_start + 4)
