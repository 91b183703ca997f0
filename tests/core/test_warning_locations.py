"""Every warning a load can emit points at the user's line and is printed once; under ``-W error``
no model is left half-finalised.

The calls run in a subprocess (``warning_scenarios.py``) so that the real stderr is read, with
logging configured as an application would (``logging.basicConfig()``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("warning_scenarios.py")
HEADER = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<category>\w+Warning): (?P<message>.*)$")

NO_SCALE = "has an fp8 KV cache but the checkpoint has no k or v scale for it"
CAVEAT = "k was measured before k_norm (scenario caveat) (2 attention layer(s)"
LATENT = "k and v scales of 1.0 for 2 attention layer(s)"
NO_PLUGIN = "declares quant_method 'nonesuch', which no installed kvcore plugin handles"
EXPECTED: dict[str, list[tuple[str, str]]] = {
    "load-no-scale": [("UserWarning", f"'model.layers.{i}.self_attn.attn' {NO_SCALE}") for i in (0, 1)],
    "load-caveat": [("UserWarning", CAVEAT)],
    "load-latent": [("UserWarning", LATENT)],
    "load-unexpected": [("UserWarning", "1 checkpoint tensor(s) match no model parameter:")],
    "load-no-plugin": [("UserWarning", NO_PLUGIN)],
    "load-no-such": [("RuntimeWarning", "plugins= argument names plugin 'no-a', which is not installed"),
                     ("UserWarning", NO_PLUGIN)],
    "auto-no-scale": [("UserWarning", f"'model.layers.{i}.self_attn.attn' {NO_SCALE}") for i in (0, 1)],
    "auto-caveat": [("UserWarning", CAVEAT)],
    "auto-latent": [("UserWarning", LATENT)],
    "attention-no-scale": [("UserWarning", f"'Attention' {NO_SCALE}")],
    "read-no-such": [("RuntimeWarning", "plugins= argument names plugin 'no-b', which is not installed")],
    "mapper-no-such": [("RuntimeWarning", "disable_plugins= argument names plugin 'no-c', which is not installed")],
}
"""What each scenario must warn (category, part of the first line); it may warn more, at its line."""


def run(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=300
    )


def lines_of_tags() -> dict[int, str]:
    """The script's line number of each scenario, by tag."""
    found = {}
    for number, text in enumerate(SCRIPT.read_text().splitlines(), start=1):
        match = re.match(r'\s+"([a-z-]+)": lambda', text)
        if match:
            found[number] = match.group(1)
    return found


@pytest.fixture(scope="module")
def warned(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, dict[str, object]]]:
    done = run(tmp_path_factory.mktemp("warnings"))
    assert done.returncode == 0, done.stderr
    return done.stderr, {row["tag"]: row for row in map(json.loads, done.stdout.splitlines())}


@pytest.fixture(scope="module")
def raised(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    done = run(tmp_path_factory.mktemp("errors"), "-W", "error")
    assert done.returncode == 0, done.stderr
    return {row["tag"]: row for row in map(json.loads, done.stdout.splitlines())}


def test_every_scenario_is_covered() -> None:
    assert sorted(lines_of_tags().values()) == sorted(EXPECTED)


def test_every_warning_points_at_the_callers_line(warned: tuple[str, dict[str, dict[str, object]]]) -> None:
    stderr, _ = warned
    tags = lines_of_tags()
    headers = [m for m in map(HEADER.match, stderr.splitlines()) if m]
    assert headers, stderr
    for header in headers:  # the user's file and a scenario's line, never a kvcore file
        assert Path(header["file"]) == SCRIPT and int(header["line"]) in tags, header.group(0)
    at = {tag: [(h["category"], h["message"]) for h in headers if tags[int(h["line"])] == tag] for tag in EXPECTED}
    for tag, wanted in EXPECTED.items():
        for category, text in wanted:
            hits = [message for kind, message in at[tag] if kind == category and text in message]
            assert len(hits) == 1, (tag, text, at[tag])


def test_every_warning_is_printed_once(warned: tuple[str, dict[str, dict[str, object]]]) -> None:
    stderr, _ = warned
    headers = [m for m in map(HEADER.match, stderr.splitlines()) if m]
    said = [(h["line"], h["message"]) for h in headers]
    assert len(said) == len(set(said)), stderr
    assert "WARNING:kvcore" not in stderr, stderr  # no second copy through logging (basicConfig's format)
    for message in {message for _, message in said}:  # nor any other copy of the text
        assert stderr.count(message) == sum(m == message for _, m in said), message


def test_without_w_error_every_load_finalises(warned: tuple[str, dict[str, dict[str, object]]]) -> None:
    _, rows = warned
    for tag in EXPECTED:
        if tag.startswith(("load", "auto")):
            assert rows[tag]["raised"] is None and rows[tag]["sentinels"] == [], rows[tag]


def test_under_w_error_a_load_that_warns_writes_nothing(raised: dict[str, dict[str, object]]) -> None:
    for tag, wanted in EXPECTED.items():
        if not tag.startswith("load"):
            continue
        row = raised[tag]
        assert row["raised"] == wanted[0][0], row  # the first warning raised
        assert row["unchanged"] == row["parameters"], row  # the warning came before any write


def test_under_w_error_the_auto_loader_leaves_every_attention_final(raised: dict[str, dict[str, object]]) -> None:
    for tag in ("auto-no-scale", "auto-caveat", "auto-latent"):
        row = raised[tag]
        assert row["raised"] == "UserWarning", row
        assert row["sentinels"] == [], row  # every attention finalised before the warning
        weights = [name for name in row["parameters"] if name not in row["scales"]]
        assert row["loaded"] == weights, row  # and every weight written whole


def test_under_w_error_an_attention_is_finalised_before_it_warns(raised: dict[str, dict[str, object]]) -> None:
    row = raised["attention-no-scale"]
    assert row["raised"] == "UserWarning"
    assert not [name for name in row["sentinels"] if name.startswith("model.layers.0.")], row


def test_under_w_error_a_checkpoint_reader_raises_the_warning(raised: dict[str, dict[str, object]]) -> None:
    assert raised["read-no-such"]["raised"] == raised["mapper-no-such"]["raised"] == "RuntimeWarning"
