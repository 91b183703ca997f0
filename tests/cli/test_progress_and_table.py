"""Unit tests of the progress bar and the table renderer behind the command line."""

from __future__ import annotations

import io
import sys

import pytest

from kvcore._cli.table import Style, render_table
from kvcore._loading.progress import ProgressBar, default_progress, human_bytes
from kvcore._names import natural_key


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Copy:
    """Just enough of a planned copy for ``default_progress``: ``.info.path`` and ``.info.nbytes``."""

    def __init__(self, path: str, nbytes: int) -> None:
        self.info = type("Info", (), {"path": path, "nbytes": nbytes})()


def test_the_bar_counts_bytes_and_shards() -> None:
    out = io.StringIO()
    bar = ProgressBar([100, 300], out)
    bar(50)
    assert "shard 1/2" in bar.line() and " 12.5%" in bar.line()
    bar(50)
    assert "shard 2/2" in bar.line() and " 25.0%" in bar.line()
    bar(300)
    bar.close()
    assert bar.line().startswith("[" + "#" * 28 + "]")
    assert "100.0%" in bar.line() and "400 B / 400 B" in bar.line()
    assert out.getvalue().endswith("\n")


def test_the_bar_redraws_at_most_once_per_tenth_of_a_percent() -> None:
    out = io.StringIO()
    bar = ProgressBar([100_000], out)
    for _ in range(100_000):
        bar(1)
    assert out.getvalue().count("\r") == 1001  # 0.0%, 0.1%, ..., 100.0%: not 100_000 redraws


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (5, 2048, 3 * 1024**3, 5 * 1024**4)] == ["5 B", "2.0 KiB", "3.0 GiB",
                                                                              "5120.0 GiB"]


def test_default_progress_keeps_a_callers_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Terminal())
    monkeypatch.setattr("kvcore._loading.progress.MIN_BYTES", 0)
    calls: list[int] = []
    with default_progress([_Copy("a", 10)], calls.append) as report:
        assert report == calls.append
    assert sys.stderr.getvalue() == ""


def test_default_progress_draws_only_on_a_terminal_above_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVCORE_PROGRESS", raising=False)
    copies = [_Copy("a", 10), _Copy("a", 10), _Copy("b", 30)]
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr("kvcore._loading.progress.MIN_BYTES", 0)
    with default_progress(copies, None) as report:
        assert report is None  # not a terminal
    monkeypatch.setattr(sys, "stderr", _Terminal())
    monkeypatch.setattr("kvcore._loading.progress.MIN_BYTES", 50)
    with default_progress(copies, None) as report:
        assert report is None  # 50 bytes is not more than the threshold
    monkeypatch.setattr("kvcore._loading.progress.MIN_BYTES", 49)
    with default_progress(copies, None) as report:
        assert isinstance(report, ProgressBar) and report.ends == [20, 50]
        for copy in copies:
            report(copy.info.nbytes)
    assert sys.stderr.getvalue().endswith("shard 2/2\n")


def test_table_columns_are_aligned_and_the_last_is_not_padded() -> None:
    text = render_table(["a", "long header", "z"], [["xxxxx", "1", "end"], ["y", "22", "e"]])
    lines = text.splitlines()
    assert [line.index(cell) for line, cell in zip(lines, ["long header", "1", "22"], strict=True)] == [7, 7, 7]
    assert [line.index(cell) for line, cell in zip(lines, ["z", "end", "e"], strict=True)] == [20, 20, 20]
    assert all(line == line.rstrip() for line in lines)


def test_colour_wraps_cells_after_padding_and_only_when_enabled() -> None:
    plain = render_table(["h"], [["x"]], Style(False), [["red"]])
    assert "\x1b[" not in plain
    coloured = render_table(["h", "i"], [["x", "y"]], Style(True), [["red", None]])
    assert "\x1b[31mx\x1b[0m  y" in coloured


def test_style_follows_the_terminal_and_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert Style.for_stream(_Terminal()).enabled
    assert not Style.for_stream(io.StringIO()).enabled
    monkeypatch.setenv("NO_COLOR", "")
    assert not Style.for_stream(_Terminal()).enabled


def test_natural_order_of_layers() -> None:
    names = ["model.layers.10.attn", "model.layers.2.attn", "model.layers.1.attn"]
    assert sorted(names, key=natural_key) == ["model.layers.1.attn", "model.layers.2.attn", "model.layers.10.attn"]
