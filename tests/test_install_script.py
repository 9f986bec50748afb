"""deploy/install.sh and uninstall.sh under --prefix: the dry run prints every step and changes
nothing; the real install leaves a unit, a config and a venv whose sage-runtime runs.

The real install is offline and quick: the wheel is built from a copy of the checkout with this
environment's setuptools, and the venv (made from this environment's base interpreter) sees
this environment's site-packages through --site-packages, so torch and the other dependencies
come from here instead of a download (--pip-args "--no-index --no-deps")."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "deploy/install.sh"
UNINSTALL = REPO / "deploy/uninstall.sh"
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


def sh(*argv: str | Path, timeout: float = 240, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run outside the checkout (cwd), so `python -c` cannot import the checkout's sage_runtime."""
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or Path(os.sep), env={**os.environ, "PIP_NO_INPUT": "1"})


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path):
    root = tmp_path / "root"
    proc = sh(INSTALL, "--prefix", root, "--dry-run", "--python", BASE_PYTHON)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for expected in ("systemd-sysusers", "-m venv --system-site-packages", "pip install", "[jetson]",
                     "sage-runtime --version", "sage-runtime.yaml", "systemd-analyze verify",
                     "enable sage-runtime.service"):
        assert expected.replace("[", "\\[").replace("]", "\\]") in out or expected in out, expected
    assert "not a Jetson" in out or "L4T R" in out
    assert not root.exists(), "a dry run must not create anything"
    assert "systemctl restart" not in out, "an alternate root is never started"


def test_unknown_option_is_a_usage_error():
    proc = sh(INSTALL, "--frobnicate")
    assert proc.returncode == 2 and "usage" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_real_prefix_install_then_uninstall(tmp_path):
    stage, wheels, root = tmp_path / "stage", tmp_path / "wheels", tmp_path / "root"
    stage.mkdir()
    for item in ("pyproject.toml", "README.md", "sage_runtime", "sage_plugins"):
        if (REPO / item).exists():
            copy = shutil.copytree if (REPO / item).is_dir() else shutil.copy
            copy(REPO / item, stage / item, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                               if (REPO / item).is_dir() else {}))
    built = sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
               "-w", wheels, stage)
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("sage_runtime-*.whl"))
    site = sysconfig.get_paths()["purelib"]

    proc = sh(INSTALL, "--prefix", root, "--python", BASE_PYTHON, "--wheel", wheel, "--site-packages", site,
              "--pip-args", "--no-index --no-deps", timeout=360)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    unit = root / "etc/systemd/system/sage-runtime.service"
    venv = root / "opt/sage-runtime/venv"
    config = root / "etc/sage/sage-runtime.yaml"
    assert unit.is_file() and config.is_file()
    assert (root / "etc/systemd/system/multi-user.target.wants/sage-runtime.service").is_symlink()
    assert f"ExecStart={venv}/bin/sage-runtime --config {config}" in unit.read_text()
    assert "sage:" in (root / "etc/passwd").read_text()
    assert "torch==" in (root / "opt/sage-runtime/constraints.txt").read_text()

    version = sh(venv / "bin/sage-runtime", "--version")
    assert version.returncode == 0 and version.stdout.startswith("sage-runtime "), version.stderr
    where = sh(venv / "bin/python", "-c", "import sage_runtime, pathlib; print(pathlib.Path(sage_runtime.__file__))")
    assert where.stdout.strip().startswith(str(venv)), "the venv runs the installed copy, not the checkout"
    shipped = sh(venv / "bin/python", "-c", "import importlib.resources as r; "
                 "print(sorted(p.name for p in r.files('sage_runtime').joinpath('configs').iterdir()))")
    assert "jetson-orin-nano.yaml" in shipped.stdout and "jetson-thor.yaml" in shipped.stdout

    again = sh(INSTALL, "--prefix", root, "--dry-run", "--python", BASE_PYTHON, "--wheel", wheel)
    assert again.returncode == 0 and "reusing" in again.stdout and "keeping the existing" in again.stdout, \
        "a second install keeps the venv and the operator's config"

    removed = sh(UNINSTALL, "--prefix", root)
    assert removed.returncode == 0, removed.stderr
    assert not unit.exists() and not venv.exists() and config.exists(), "config stays without --purge"
    purged = sh(UNINSTALL, "--prefix", root, "--purge")
    assert purged.returncode == 0 and not config.exists()
    assert "sage:" not in (root / "etc/passwd").read_text()
