"""Colour and the progress bar appear on a terminal only: checked under a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from kvcore.testing import tiny_llama, write_checkpoint

LOAD = """
import sys
import kvcore, kvcore._loading.progress as progress
from kvcore.testing import tiny_llama
progress.MIN_BYTES = int(sys.argv[2])
kvcore.load(tiny_llama(num_layers=2), sys.argv[1])
"""


def on_terminal(command: list[str], stream: str, env: dict[str, str]) -> tuple[str, str, int]:
    """Run ``command`` with ``stream`` ("stdout" or "stderr") on a pty; return (tty text, other text, code)."""
    master, slave = pty.openpty()
    with tempfile.TemporaryFile() as other:
        streams = {"stdout": slave, "stderr": other} if stream == "stdout" else {"stdout": other, "stderr": slave}
        proc = subprocess.Popen(command, env=env, **streams)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=300)
        os.close(master)
        other.seek(0)
        return b"".join(chunks).decode(), other.read().decode(), code


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain tiny-Llama checkpoint in three shards (about 100 KiB)."""
    model = tiny_llama(num_layers=2)
    tensors = {name: t for name, t in model.state_dict().items() if not name.endswith("_scale")}
    return write_checkpoint(tmp_path_factory.mktemp("sharded"), tensors, shards=3)


def test_colour_on_a_terminal_and_never_with_no_color(cli: SimpleNamespace) -> None:
    command = [str(cli.SCRIPT), "plugins"]
    coloured, _, code = on_terminal(command, "stdout", cli.base_env())
    assert code == 0
    assert "\x1b[32mloaded" in coloured  # status in green
    plain, _, _ = on_terminal(command, "stdout", cli.base_env(NO_COLOR="1"))
    assert "\x1b[" not in plain and "loaded" in plain


def test_a_large_load_draws_a_bar_over_bytes_and_shards_on_a_terminal(cli: SimpleNamespace, sharded: Path) -> None:
    bar, _, code = on_terminal([sys.executable, "-c", LOAD, str(sharded), "0"], "stderr", cli.base_env())
    assert code == 0, bar
    assert "shard 1/3" in bar and "shard 3/3" in bar
    assert "100.0%" in bar.splitlines()[-1] or "100.0%" in bar.rstrip().rsplit("\r", 1)[-1]


def test_no_bar_below_the_size_threshold_or_off_a_terminal(cli: SimpleNamespace, sharded: Path) -> None:
    small, _, code = on_terminal([sys.executable, "-c", LOAD, str(sharded), str(1 << 28)], "stderr", cli.base_env())
    assert code == 0 and small == ""
    piped = subprocess.run([sys.executable, "-c", LOAD, str(sharded), "0"], capture_output=True, text=True,
                           env=cli.base_env(), timeout=300, check=False)
    assert piped.returncode == 0 and piped.stderr == ""


def test_kvcore_progress_0_turns_the_bar_off(cli: SimpleNamespace, sharded: Path) -> None:
    quiet, _, code = on_terminal([sys.executable, "-c", LOAD, str(sharded), "0"], "stderr",
                                 cli.base_env(KVCORE_PROGRESS="0"))
    assert code == 0 and quiet == ""
