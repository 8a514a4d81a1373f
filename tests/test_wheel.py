"""An installed wheel carries the shipped weights: `videoapp predict` without `--weights` uses the default model.

The wheel is built from a copy of the checkout (so the build's ``build/`` and
``*.egg-info`` never land in the shared tree) and installed with ``--no-deps``
into a fresh virtual environment that sees this one's packages (torch, ...)
through a ``.pth`` line. This environment's editable install of videoapp is
not visible there: a plain path line in a ``.pth`` adds a folder to
``sys.path`` without running that folder's own ``.pth`` files (the editable
finder). The prediction runs from a temporary folder outside the checkout and
must match, score for score, the checkout's prediction with the shipped
default weights named explicitly.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from videoapp.cli import main as cli_main
from videoapp.weights import DEFAULT_WEIGHTS_NAME, WEIGHTS_DIR, read_metadata

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert out.returncode == 0, f"{cmd[:3]} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (sources, weights, metadata files)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "_weights")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("videoapp", "weights"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
          "-q", "-w", dist, src])
    (whl,) = dist.glob("videoapp-*.whl")
    return whl


def test_wheel_holds_every_module_and_the_shipped_weights(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "videoapp").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - names == set(), "pyproject.toml [tool.setuptools] packages misses a package"
    shipped = {f"videoapp/_weights/{p.name}" for p in (ROOT / "weights").glob("*.safetensors")}
    assert f"videoapp/_weights/{DEFAULT_WEIGHTS_NAME}" in shipped and shipped <= names


def test_installed_wheel_predicts_with_the_shipped_default(wheel, tmp_path, make_video, capsys):
    env_dir = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir])
    py = env_dir / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # This environment's packages (torch, ...), after the new environment's own (the wheel's videoapp).
    (site / "_outer_env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel])

    clip = make_video(num_frames=48, fps=24, width=96, height=72)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("VIDEOAPP_WEIGHTS_DIR", "PYTHONPATH")}
    # (The package's __init__ is light: this needs no torch.)
    where = _run([py, "-c", "import videoapp; from importlib import resources; print(videoapp.__file__); "
                  "print(resources.files('videoapp') / '_weights')"], cwd=cwd, env=env).stdout.split("\n")
    assert Path(where[0]) == site / "videoapp" / "__init__.py", where  # the wheel's copy, not the checkout
    assert (Path(where[1]) / DEFAULT_WEIGHTS_NAME).is_file()
    out = _run([env_dir / "bin" / "videoapp", "predict", clip, "--format", "json", "--top-k", "3"], cwd=cwd, env=env)
    assert "UNTRAINED" not in out.stderr
    installed = json.loads(out.stdout)

    shipped = WEIGHTS_DIR / DEFAULT_WEIGHTS_NAME
    meta = read_metadata(shipped)
    assert installed["model"] == meta["model"]
    assert {s["label"] for s in installed["top_k"]} <= set(meta["labels"])
    # The same prediction as the checkout's with the default weights named explicitly.
    capsys.readouterr()
    assert cli_main(["predict", clip, "--weights", str(shipped), "--format", "json", "--top-k", "3"]) == 0
    here = json.loads(capsys.readouterr().out)
    assert installed["top_k"] == here["top_k"] and installed["views"] == here["views"]
