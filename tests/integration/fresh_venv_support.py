"""A fresh venv, built once per session, with kvcore and every plugin pip-installed (not editable).

torch comes first and pinned (``torch==2.13.0``: the local CPU wheel; an unpinned torch would
pull a multi-GB CUDA build). The sources are copied out of the work tree first, so that the
build writes nothing into it and nothing in it can leak into the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
IGNORED = shutil.ignore_patterns("*.egg-info", "build", "dist", "__pycache__", ".pytest_cache", "tests")

Run = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class FreshVenv:
    """The venv's interpreter, and a way to run the driver in it."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root = root
        self.work = work
        self.python = root / "bin" / "python"

    def env(self, **extra: str) -> dict[str, str]:
        drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("KVCORE_")}
        return {**env, **extra}

    def run(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run ``jobs`` through venv_driver.py in one process; return its results."""
        jobs_file = self.work / "jobs.json"
        jobs_file.write_text(json.dumps(jobs))
        done = subprocess.run(
            [str(self.python), str(HERE / "venv_driver.py"), str(jobs_file)],
            cwd=self.work, env=self.env(), capture_output=True, text=True, timeout=600, check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])


def _pip(python: Path, *args: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        env=env, capture_output=True, text=True, timeout=1800, check=False,
    )
    assert done.returncode == 0, f"pip install {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def _copy_sources(dest: Path) -> list[Path]:
    """Copy every distribution's source folder to ``dest``; return the folders to install."""
    core = dest / "kvcore"
    core.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, core / name)
    shutil.copytree(REPO / "kvcore", core / "kvcore", ignore=IGNORED)
    folders = [core]
    for source in [*sorted((REPO / "plugins").iterdir()), REPO / "examples" / "kvcore-modelopt",
                   *sorted((HERE / "dists").iterdir())]:
        if (source / "pyproject.toml").is_file():
            target = dest / source.name
            shutil.copytree(source, target, ignore=IGNORED)
            folders.append(target)
    return folders


def build(base: Path) -> FreshVenv:
    """Create the venv under ``base``: torch first, then every distribution in one pip call."""
    venv = FreshVenv(base / "venv", base / "work")
    venv.work.mkdir()
    env = venv.env()
    subprocess.run([sys.executable, "-m", "venv", str(venv.root)], check=True, env=env, timeout=300)
    _pip(venv.python, "torch==2.13.0", "setuptools>=69", env=env)
    # One pip call builds every wheel once, in the venv (no isolated build envs to fetch).
    _pip(venv.python, "--no-build-isolation", *map(str, _copy_sources(base / "src")), env=env)
    return venv
