"""(d) plugin discovery and (e) ``kvcore inspect``, each measured in a fresh process.

``python _probes.py discovery REPEAT`` and ``python _probes.py inspect CHECKPOINT REPEAT``
print JSON. Both time from after ``import kvcore``: the first call (plugins imported,
entry points scanned) and the median of warm repeats, the caches cleared before each.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import kvcore
import kvcore._cli.main
import kvcore._plugins.manager


def _bytes_read() -> int:
    """Bytes this process has read through read()/pread() so far (mmap reads not counted)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def _timed(action: Callable[[], object], repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat + 1):
        kvcore._plugins.manager.clear_cache()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return {"first": times[0], "warm": statistics.median(times[1:])}


def discovery(repeat: int) -> dict[str, object]:
    result: dict[str, object] = _timed(kvcore.get_plugin_manager, repeat)
    result["plugins"] = sorted(kvcore._plugins.manager.plugin_records(kvcore.get_plugin_manager()))
    return result


def inspect(ckpt: Path, repeat: int) -> dict[str, object]:
    def run() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            status = kvcore._cli.main.main(["inspect", str(ckpt), "--json"])
        if status != 0:
            raise RuntimeError(f"kvcore inspect exited with {status}")

    start = time.perf_counter()
    run()
    cold = time.perf_counter() - start
    before = _bytes_read()  # measured on a warm call: the first one also reads .pyc files
    run()
    read = _bytes_read() - before
    result: dict[str, object] = _timed(run, repeat)
    result["first"], result["bytes_read"] = cold, read
    result["checkpoint_bytes"] = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    result["needed_bytes"] = _needed(ckpt)
    return result


def _needed(ckpt: Path) -> int:
    """The most inspect may read: JSON files, shard headers and scale tensors, each read
    through an 8 KiB buffer (so up to 8 KiB more per file opened, in the worst case twice)."""
    from kvcore._checkpoint.reader import read_checkpoint

    checkpoint = read_checkpoint(ckpt)
    headers = sum(shard.data_start + 8192 for shard in checkpoint.shards)
    scales = [i.nbytes + 8192 for name, i in checkpoint.tensors.items() if name.endswith(("_scale", "zero_point"))]
    return 2 * (headers + sum(scales) + sum(p.stat().st_size + 8192 for p in ckpt.glob("*.json")))


if __name__ == "__main__":
    if sys.argv[1] == "discovery":
        print(json.dumps(discovery(int(sys.argv[2]))))
    else:
        print(json.dumps(inspect(Path(sys.argv[2]), int(sys.argv[3]))))
