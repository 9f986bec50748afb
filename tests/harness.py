"""Run the real daemon as a subprocess in a temporary runtime dir, and talk to it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from sage_runtime.client import ControlClient, DaemonNotRunning

REPO = Path(__file__).resolve().parents[1]
SAGE_RUNTIME = shutil.which("sage-runtime", path=str(Path(sys.executable).parent)) or "sage-runtime"
SAGECTL = shutil.which("sagectl", path=str(Path(sys.executable).parent)) or "sagectl"


def ipc_only(config: dict[str, Any]) -> dict[str, Any]:
    """Tests bind no TCP ports, so several daemons can run side by side."""
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    cfg.setdefault("ingest", {}).setdefault("endpoints", ["ipc://{runtime_dir}/ingest.sock"])
    cfg.setdefault("results", {}).setdefault("endpoints", ["ipc://{runtime_dir}/results.sock"])
    # The embedded default enables the built-in plugins; a test loads only the plugins it names.
    cfg.setdefault("plugins", {}).setdefault("enabled", [])
    return cfg


class DaemonProcess:
    #: The command that starts the daemon (a test may run it from another environment's python).
    command: tuple[str, ...] = (SAGE_RUNTIME,)
    #: plugins.isolation where a config does not say; None: the daemon's default. tests/conftest.py
    #: sets `thread` for the suite (benchmarks keep the default).
    plugin_isolation: str | None = None

    def __init__(self, tmp: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.tmp = tmp
        self.run_dir = tmp / "run"
        self.state_dir = tmp / "state"
        self.config_path = tmp / "config.yaml"
        config = dict(config or {})
        if self.plugin_isolation is not None and "isolation" not in config.get("plugins", {}):
            config["plugins"] = {**config.get("plugins", {}), "isolation": self.plugin_isolation}
        self.config_path.write_text(yaml.safe_dump(ipc_only(config)))
        self.log_path = tmp / "daemon.log"
        inherited = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        self.env = {**inherited, "SAGE_RUNTIME_DIR": str(self.run_dir), "SAGE_STATE_DIR": str(self.state_dir),
                    "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ingest(self) -> str:
        return f"ipc://{self.run_dir}/ingest.sock"

    @property
    def results(self) -> str:
        return f"ipc://{self.run_dir}/results.sock"

    @property
    def control_endpoint(self) -> str:
        return f"ipc://{self.run_dir}/control.sock"

    def control(self, timeout_s: float = 5.0) -> ControlClient:
        return ControlClient(self.control_endpoint, timeout_s=timeout_s)

    def start(self, wait: bool = True, timeout_s: float = 60.0) -> "DaemonProcess":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([*self.command, "--config", str(self.config_path), *self.args],
                                     env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status = self.control(timeout_s=1.0).status()
                if status["tick"]["count"] > 0:
                    return status
            except DaemonNotRunning:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"daemon not ready in {timeout_s} s:\n{self.log()}")

    def status(self) -> dict[str, Any]:
        return self.control().status()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        assert self.proc is not None
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.05):
    """Poll until predicate() is truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError("condition not met")


def confirmed_subscriber(results_endpoint: str, pub: Any, topics: tuple[str, ...] = ("result/",),
                         timeout_s: float = 15.0) -> Any:
    """A ResultSubscriber that has provably joined: probe events go in until one of their results
    comes out (ZeroMQ's slow joiner drops what is published before the subscription arrives; a
    fixed sleep was not always long enough on a loaded box). Drains what the probes produced."""
    from sage_runtime.client import ResultSubscriber

    sub = ResultSubscriber(results_endpoint, topics=topics)
    deadline = time.monotonic() + timeout_s
    while sub.recv(timeout_s=0.1) is None:
        if time.monotonic() > deadline:
            sub.close()
            raise TimeoutError(f"no result on {results_endpoint} within {timeout_s} s")
        pub.event("subscriber_probe", "hello")
    while sub.recv(timeout_s=0.2) is not None:
        pass
    return sub
