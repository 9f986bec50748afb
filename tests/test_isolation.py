"""Plugins in worker processes (`plugins.isolation: process`): real daemons, real workers, real
signals. A worker computes what the plugin in a thread computes, is killed when hung and
replaced, fails only the job in progress when it dies, and dies with its daemon."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from sage_runtime.plugin.contract import PluginContext
from sage_runtime.plugin.runner import StepCost, run_plugin
from sage_runtime.plugin.worker import RemotePlugin, WorkerDied
from sage_runtime.client import ResultSubscriber
from tests.harness import SAGECTL, DaemonProcess, wait_for
from tests.test_faults import connect_publisher
from tests.plugins_for_tests import Echo


def _ctx(cls, tmp_path: Path, **options) -> PluginContext:
    return PluginContext(torch.device("cpu"), cls.Options(**options), tmp_path, logging.getLogger("test"))


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_worker_computes_what_the_plugin_in_a_thread_computes(tmp_path):
    remote, local = RemotePlugin(Echo), Echo()
    remote.setup(_ctx(Echo, tmp_path))
    local.setup(_ctx(Echo, tmp_path))
    try:
        assert remote.worker_pid not in (None, os.getpid())
        assert "sage_runtime.plugin.worker" in _cmdline(remote.worker_pid)
        inputs = local.sample_inputs(5)
        got = [run_plugin(p, inputs, atp_ms=1e9, deadline_ns=2**62, cost=StepCost(), max_steps=12,
                          clock_ns=remote.cpu_ns if p is remote else time.thread_time_ns) for p in (remote, local)]
        assert [(r.halt, r.steps, r.energies) for r in got[:1]] == [(r.halt, r.steps, r.energies) for r in got[1:]]
        assert torch.equal(got[0].outputs["summary"], got[1].outputs["summary"])
        assert got[0].atp_spent > 0  # charged from the worker's own CPU clock
        assert remote.pending_input() == 0 and remote.health_reasons() == []
        for seed in range(20):  # states the daemon dropped are freed in the worker, not kept
            run_plugin(remote, inputs, atp_ms=1e9, deadline_ns=2**62, cost=StepCost(), clock_ns=remote.cpu_ns)
        remote.energy(remote.init_state(inputs))  # one more request carries the last frees
        assert remote.held_states <= 2, remote.held_states
    finally:
        remote.close()
    assert remote.worker_pid is None


def test_a_dead_worker_fails_the_call_and_the_next_call_starts_a_new_one(tmp_path):
    remote = RemotePlugin(Echo)
    remote.setup(_ctx(Echo, tmp_path))
    try:
        first = remote.worker_pid
        state = remote.init_state(remote.sample_inputs(1))
        remote.kill()
        try:
            remote.step(state)
            raise AssertionError("a call to a killed worker returned")
        except WorkerDied as exc:
            assert "worker exited (killed by signal 9)" in str(exc)
        try:
            remote.init_state(remote.sample_inputs(2))
            raise AssertionError("a call with no worker returned")
        except WorkerDied as exc:
            assert "no worker" in str(exc)
        remote.respawn()  # what the host does between units
        fresh = remote.init_state(remote.sample_inputs(2))
        assert remote.worker_pid not in (None, first) and remote.restarts == 1
        try:
            remote.step(state)  # the old worker's state is gone, and says so
            raise AssertionError("a state of the dead worker was accepted")
        except WorkerDied as exc:
            assert "state is gone" in str(exc)
        assert remote.energy(remote.step(fresh)) < remote.energy(fresh)
    finally:
        remote.close()


def _process_daemon(tmp_path: Path, plugin: str, options: dict | None = None, grace_ms: float = 100) -> DaemonProcess:
    name = plugin.split(":")[1].lower()
    return DaemonProcess(tmp_path, {
        "plugins": {"enabled": [plugin], "isolation": "process", "options": {name: options or {}}},
        "tick": {"rate_hz": 50, "hang_grace_ms": grace_ms},
    }).start()


def test_a_daemon_serves_results_from_a_worker_process(tmp_path):
    d = _process_daemon(tmp_path, "tests.plugins_for_tests:Echo")
    try:
        status = d.status()["plugins"]["echo"]
        pid = status["worker_pid"]
        assert status["isolation"] == "process" and pid != d.proc.pid
        assert "sage_runtime.plugin.worker" in _cmdline(pid)
        sub = ResultSubscriber(d.results, topics=("result/echo",))
        pub = connect_publisher(d)

        def answered():
            pub.tensor("cam", np.full(4, 2.5, np.float32))
            msg = sub.recv(timeout_s=0.2)
            return msg if msg is not None and msg.header["halt"] == "converged" and "cam" in msg.header["inputs"] else None
        msg = wait_for(answered, timeout_s=30)
        assert abs(msg.outputs["summary"][0] - 2.5) < 1e-2 and msg.header["steps"] > 3
        after = d.status()["plugins"]["echo"]
        assert after["atp_spent"] > 0 and after["errors"] == 0 and after["worker_pid"] == pid
        table = subprocess.run([SAGECTL, "--socket", str(d.run_dir / "control.sock"), "status"],
                               capture_output=True, text=True, timeout=20, env={**os.environ, "COLUMNS": "250"})
        assert f"pid {pid}" in table.stdout, table.stdout  # the operator sees where it runs
        pub.close()
        sub.close()
    finally:
        code, _ = d.stop()
    assert code == 0
    wait_for(lambda: not _alive(pid), timeout_s=10)


def test_a_hung_plugin_in_a_worker_is_killed_and_replaced(tmp_path):
    # Every step sleeps 1 s (after warmup's two inits): in a thread it could only be abandoned;
    # in a process the daemon kills it and the next job runs in a new worker.
    d = _process_daemon(tmp_path, "tests.plugins_for_tests:Hanger", {"after": 2, "hang_s": 1.0})
    try:
        first = d.status()["plugins"]["hanger"]["worker_pid"]
        pub = connect_publisher(d)

        def replaced():
            pub.tensor("cam", np.ones(4, np.float32))
            p = d.status()["plugins"]["hanger"]
            return p if p["hangs"] >= 2 and p["worker_restarts"] >= 2 else None
        p = wait_for(replaced, timeout_s=60, interval_s=0.1)
        assert "nothing moved" in p["last_error"]
        assert not _alive(first)
        assert d.status()["tick"]["count"] > 0
        pub.close()
    finally:
        code, _ = d.stop()
    assert code == 0


def test_kill_9_of_a_worker_fails_only_its_job(tmp_path):
    d = _process_daemon(tmp_path, "tests.plugins_for_tests:Burner", {"step_ms": 2.0})
    try:
        sub = ResultSubscriber(d.results, topics=("result/burner",))
        pub = connect_publisher(d)
        pid = d.status()["plugins"]["burner"]["worker_pid"]
        wait_for(lambda: pub.tensor("cam", np.ones(4, np.float32)) or d.status()["plugins"]["burner"]["job_running"],
                 timeout_s=30)
        os.kill(pid, signal.SIGKILL)
        got = []

        def error_then_result():
            pub.tensor("cam", np.ones(4, np.float32))
            while (msg := sub.recv(timeout_s=0.05)) is not None:
                got.append(msg.header)
            errors = [i for i, h in enumerate(got) if h["halt"] == "error"]
            return errors and any(h["halt"] != "error" for h in got[errors[0] + 1:])
        wait_for(error_then_result, timeout_s=60)
        status = d.status()["plugins"]["burner"]
        assert "worker exited (killed by signal 9)" in status["last_error"] and status["errors"] == 1
        assert status["worker_pid"] not in (None, pid) and status["worker_restarts"] == 1
        pub.close()
        sub.close()
    finally:
        code, _ = d.stop()
    assert code == 0


def test_kill_9_of_the_daemon_takes_its_workers(tmp_path):
    # The worker is inside a 30 s step (no hang check within a minute), not waiting on its pipe:
    # only its parent-death signal ends it when the daemon is killed.
    d = _process_daemon(tmp_path, "tests.plugins_for_tests:Hanger", {"after": 2, "hang_s": 30.0}, grace_ms=60_000)
    pid = d.status()["plugins"]["hanger"]["worker_pid"]
    try:
        pub = connect_publisher(d)
        wait_for(lambda: pub.tensor("cam", np.ones(4, np.float32)) or d.status()["plugins"]["hanger"]["job_running"],
                 timeout_s=30)
        time.sleep(0.5)  # into its 30 s step (were it not yet, the pipe's EOF would end it and the test pass weaker)
        pub.close()
    finally:
        d.kill()
    wait_for(lambda: not _alive(pid), timeout_s=5)


def test_the_built_in_plugins_run_in_workers(tmp_path):
    # The demo streams into vision, language, memory and reasoning, each in its own worker: every
    # one answers (reasoning's accepts reads its board sizes, a plain attribute, on the daemon's side).
    from sage_plugins.demo import DemoSources, sensor_declarations

    names = ("vision", "language", "memory", "reasoning")
    d = DaemonProcess(tmp_path, {"plugins": {"enabled": list(names), "isolation": "process"},
                                 "ingest": {"sensors": sensor_declarations(10.0)}}).start()
    sources = None
    try:
        plugins = d.status()["plugins"]
        pids = {plugins[n]["worker_pid"] for n in names}
        assert len(pids) == 4 and None not in pids and d.proc.pid not in pids
        sub = ResultSubscriber(d.results, topics=tuple(f"result/{n}" for n in names))
        sources = DemoSources(d.ingest, 10.0)
        sources.start()
        answered: dict[str, int] = {}

        def all_answered():
            while (msg := sub.recv(timeout_s=0.05)) is not None:
                if msg.header["halt"] != "error" and msg.header["steps"] > 0:  # refined, not just read
                    answered[msg.header["plugin"]] = answered.get(msg.header["plugin"], 0) + 1
            return set(answered) == set(names)
        wait_for(all_answered, timeout_s=90)
        plugins = d.status()["plugins"]
        assert all(plugins[n]["errors"] == 0 and plugins[n]["hangs"] == 0 for n in names), plugins
        sub.close()
    finally:
        if sources is not None:
            sources.stop()
        code, _ = d.stop()
    assert code == 0
