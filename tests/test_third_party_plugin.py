"""A third-party plugin written only from docs/plugins.md: built as a package outside the
repository, installed into a fresh virtual environment, registered by entry point, passed through
`python -m sage_runtime.conformance`, run in a real daemon and heard over ZeroMQ."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from sage_runtime.client import ResultSubscriber, SensorPublisher
from tests.harness import REPO, DaemonProcess, wait_for

DOC = REPO / "docs" / "plugins.md"


def doc_blocks(lang: str, after: str) -> list[str]:
    """The fenced `lang` blocks of docs/plugins.md from the heading `after` on."""
    text = DOC.read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text[text.index(after):], flags=re.S)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv that sees this environment's packages (torch, pyzmq, sage-runtime) through a
    site dir, with the doc's package installed into it by pip, from source, by entry point."""
    root = tmp_path_factory.mktemp("thirdparty")
    pkg = root / "sage-smoother"
    pkg.mkdir()
    (pkg / "smoother.py").write_text(doc_blocks("python", "## A minimal plugin")[0])
    (pkg / "pyproject.toml").write_text(
        "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n\n"
        + doc_blocks("toml", "## Registering it")[0] + "\n[tool.setuptools]\npy-modules = [\"smoother\"]\n")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(site, "_outer_env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    str(pkg)], check=True, timeout=300, cwd=root)
    return env_dir


def test_the_doc_example_is_at_most_25_lines():
    code = doc_blocks("python", "## A minimal plugin")[0]
    assert len(code.strip().splitlines()) <= 25


def run_conformance(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / "python"), "-m", "sage_runtime.conformance", *args],
                          capture_output=True, text=True, timeout=300, env=env, cwd=venv)


def test_conformance_passes_by_entry_point_and_names_what_fails(venv, tmp_path):
    ok = run_conformance(venv, "smoother")  # the entry-point name, resolved in the new venv
    assert ok.returncode == 0 and "smoother passed" in ok.stdout, ok.stdout + ok.stderr
    assert run_conformance(venv, "smoother:Smoother", "--options", '{"rate": 0.9}').returncode == 0
    bad = run_conformance(venv, "smoother", "--options", '{"rte": 0.9}')
    assert bad.returncode == 2 and "plugins.options.smoother.rte: unknown key" in bad.stderr
    (tmp_path / "blind.py").write_text(
        "from smoother import Smoother\n\nclass Blind(Smoother):\n    name = 'blind'\n\n"
        "    def init_state(self, inputs):\n        return (0.0, 1.0)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    blind = subprocess.run([str(venv / "bin" / "python"), "-m", "sage_runtime.conformance", "blind:Blind"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert blind.returncode == 1 and "input sensitivity" in blind.stderr, blind.stderr


class VenvDaemon(DaemonProcess):
    """The daemon run by the third-party venv's python."""


def test_the_doc_plugin_runs_in_the_daemon_and_publishes_results(venv, tmp_path):
    VenvDaemon.command = (str(venv / "bin" / "python"), "-m", "sage_runtime.cli")
    d = VenvDaemon(tmp_path, {"plugins": {"enabled": ["smoother"], "options": {"smoother": {"rate": 0.25}}},
                              "tick": {"rate_hz": 50}}).start()
    try:
        assert "smoother" in d.status()["plugins"]
        sub = ResultSubscriber(d.results, topics=("result/smoother",))
        pub = SensorPublisher(d.ingest)
        value = np.full(16, 0.75, np.float32)

        def heard():
            pub.tensor("vec", value)
            return sub.recv(timeout_s=0.2)
        msg = wait_for(heard, timeout_s=20, interval_s=0.05)
        assert msg.header["plugin"] == "smoother" and msg.header["halt"] in ("converged", "quota", "deadline")
        # rate 0.25 from 0 toward 0.75: the published estimate lies between, and is close once converged.
        assert 0.0 < msg.outputs["mean"] <= 0.75
        if msg.header["halt"] == "converged":
            assert abs(msg.outputs["mean"] - 0.75) < 1e-3
        pub.close()
        sub.close()
    finally:
        code, _ = d.stop()
    assert code == 0


def test_check_config_resolves_the_installed_plugin_and_its_options(venv, tmp_path):
    cfg = tmp_path / "c.yaml"
    check = [str(venv / "bin" / "python"), "-m", "sage_runtime.cli", "--check-config", "--config", str(cfg)]
    cfg.write_text("plugins:\n  enabled: [smoother]\n  options:\n    smoother: {rate: 0.5}\n")
    assert subprocess.run(check, capture_output=True, timeout=120).returncode == 0
    cfg.write_text("plugins:\n  enabled: [smoother]\n  options:\n    smoother: {rate: 2}\n")
    out = subprocess.run(check, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "plugins.options.smoother.rate" in out.stderr
