"""`make run` with no flags: the embedded default runs the built-in plugins, waits for clients and
says how to feed it; `--demo` keeps its learnt state apart from a real run's."""

from __future__ import annotations

import subprocess

import yaml

from sage_plugins.demo import BUILTIN_PLUGINS
from tests.harness import SAGE_RUNTIME, DaemonProcess, wait_for

IPC_ONLY = {"SAGE_INGEST__ENDPOINTS": '["ipc://{runtime_dir}/ingest.sock"]',
            "SAGE_RESULTS__ENDPOINTS": '["ipc://{runtime_dir}/results.sock"]'}


class NoFlags(DaemonProcess):
    """The daemon exactly as `make run` starts it: no --config, no flag (ports swapped for ipc by env)."""

    def start(self, wait: bool = True, timeout_s: float = 120.0) -> "NoFlags":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([SAGE_RUNTIME], env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(timeout_s)
        return self


def test_no_flags_runs_builtin_plugins_and_says_how_to_feed_it(tmp_path):
    d = NoFlags(tmp_path, env=IPC_ONLY).start()
    try:
        status = d.status()
        assert sorted(status["plugins"]) == sorted(BUILTIN_PLUGINS)
        first = d.log().splitlines()[:5]  # after the telemetry probe and the start line
        hint = next(line for line in first if "waiting for sensor frames" in line)
        assert "make demo" in hint and "SensorPublisher" in hint and "docs/protocol.md" in hint
        assert d.ingest[len("ipc://"):] in hint
    finally:
        d.kill()


def check_config(tmp_path, *args: str) -> dict:
    env = {**DaemonProcess(tmp_path).env, "SAGE_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run([SAGE_RUNTIME, "--check-config", *args], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_demo_state_lives_apart_from_a_real_runs(tmp_path):
    real = check_config(tmp_path)
    demo = check_config(tmp_path, "--demo")
    assert real["plugins"]["enabled"] == list(BUILTIN_PLUGINS)
    assert real["runtime"]["state_dir"] is None  # a real run: SAGE_STATE_DIR itself
    assert demo["runtime"]["state_dir"] == str(tmp_path / "state" / "demo")


def test_demo_daemon_writes_its_trust_ledger_under_demo(tmp_path):
    d = DaemonProcess(tmp_path, {"cognition": {"trust_save_interval_s": 0.5}}, args=["--demo"]).start(timeout_s=120)
    try:
        assert d.status()["state_dir"] == str(d.state_dir / "demo")
        wait_for(lambda: any((d.state_dir / "demo").glob("trust*")), timeout_s=30)
        assert not list(d.state_dir.glob("trust*"))
    finally:
        d.kill()
