"""configs/ (board overlays, an example robot) and examples/ (Python, C, Node.js clients), each
exercised for real: configs by `--check-config` and a daemon run, clients against a daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from sage_runtime.client import ResultSubscriber, SensorPublisher
from tests.harness import REPO, SAGE_RUNTIME, DaemonProcess, wait_for

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
ECHO = {"plugins": {"enabled": ["tests.plugins_for_tests:Echo"]}}


def test_configs_dir_has_the_boards_and_a_robot():
    names = {p.name for p in CONFIGS}
    assert {"jetson-orin-nano.yaml", "jetson-thor.yaml", "robot-example.yaml"} <= names
    # One source for the board files: the package ships them (install.sh, Docker), configs/ links them.
    for board in ("jetson-orin-nano.yaml", "jetson-thor.yaml"):
        assert (REPO / "configs" / board).resolve() == (REPO / "sage_runtime" / "configs" / board).resolve()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_passes_check_config(path):
    out = subprocess.run([SAGE_RUNTIME, "--config", str(path), "--check-config"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    yaml.safe_load(out.stdout)


def test_robot_example_routes_only_declared_sensors_to_enabled_plugins():
    cfg = yaml.safe_load((REPO / "configs" / "robot-example.yaml").read_text())
    declared = set(cfg["ingest"]["sensors"])
    assert cfg["ingest"]["allow_undeclared"] is False
    for plugin, sensors in cfg["plugins"]["inputs"].items():
        assert plugin in cfg["plugins"]["enabled"]
        assert set(sensors) <= declared, (plugin, set(sensors) - declared)
    assert all(s.get("expected_hz") for s in cfg["ingest"]["sensors"].values() if s["kind"] == "tensor")


def test_robot_example_runs_and_routes(tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / "robot-example.yaml").read_text())
    d = DaemonProcess(tmp_path, cfg)
    sub = ResultSubscriber(d.results, topics=("result/vision", "result/memory"))
    d.start(timeout_s=120)
    try:
        pub = SensorPublisher(d.ingest)
        rng = np.random.default_rng(0)
        pub.tensor("front_cam", rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
        pub.tensor("depth", rng.random((120, 160), dtype=np.float32))
        pub.tensor("imu", rng.standard_normal(6).astype(np.float32))
        pub.text("speech", "go to the dock")
        pub.tensor("stray_cam", np.zeros((4, 4), np.uint8))  # not declared
        wait_for(lambda: d.status()["ingest"]["rejected"].get("undeclared") == 1, timeout_s=20)
        inputs: dict[str, set] = {}
        while set(inputs) != {"vision", "memory"}:
            msg = sub.recv(timeout_s=30)
            assert msg is not None, d.log()
            inputs.setdefault(msg.header["plugin"], set()).update(msg.header["inputs"])
        assert inputs["vision"] == {"front_cam"}  # depth is an image too, but not routed to vision
        assert inputs["memory"] <= {"imu", "speech"}
    finally:
        d.kill()
        sub.close()


@pytest.fixture
def daemon(tmp_path):
    d = DaemonProcess(tmp_path, ECHO).start()
    yield d
    d.kill()


def received(d: DaemonProcess, sensor: str) -> int:
    return d.status()["ingest"]["sensors"].get(sensor, {}).get("received", 0)


def test_python_example(daemon):
    out = subprocess.run([sys.executable, str(REPO / "examples/python/sensor_client.py"), "--ingest", daemon.ingest,
                          "--results", daemon.results, "--frames", "5"], capture_output=True, text=True,
                         timeout=60, env=daemon.env)
    assert out.returncode == 0, out.stderr
    assert "first result from echo" in out.stdout, out.stdout
    assert received(daemon, "example_cam") == 5 and received(daemon, "example_speech") == 1


def _has_libzmq_headers() -> bool:
    cc = shutil.which("cc")
    if cc is None:
        return False
    probe = subprocess.run([cc, "-E", "-x", "c", "-"], input="#include <zmq.h>\n", capture_output=True, text=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _has_libzmq_headers(), reason="needs cc and the libzmq headers (libzmq3-dev)")
def test_c_example(daemon, tmp_path):
    binary = tmp_path / "sensor_client"
    build = subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(binary), str(REPO / "examples/c/sensor_client.c"),
                            "-lzmq"], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(binary), daemon.ingest, "25"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    try:
        wait_for(lambda: received(daemon, "c_cam") == 25, timeout_s=20)
    except TimeoutError:
        raise AssertionError(f"daemon received {received(daemon, 'c_cam')} of 25 c_cam frames: "
                             f"{daemon.status()['ingest']['sensors']['c_cam']}") from None
    status = daemon.status()
    assert status["ingest"]["rejected"] == {} and status["ingest"]["sensors"]["c_cam"]["modality"] == "image"
    nothing = subprocess.run([str(binary), f"ipc://{tmp_path}/none.sock", "1"], capture_output=True, text=True,
                             timeout=60)
    assert nothing.returncode == 3 and "no sage-runtime subscribed" in nothing.stderr


NODE_DIR = REPO / "examples" / "node"


def _node_ready() -> bool:
    return shutil.which("node") is not None and (NODE_DIR / "node_modules" / "zeromq").is_dir() \
        and (NODE_DIR / "node_modules" / "@msgpack" / "msgpack").is_dir()


@pytest.mark.skipif(not _node_ready(), reason="needs node and `npm install` in examples/node (zeromq, @msgpack/msgpack)")
def test_node_example(daemon):
    run = subprocess.run(["node", str(NODE_DIR / "sensor_client.js"), daemon.ingest, "30"], capture_output=True,
                         text=True, timeout=60, cwd=NODE_DIR, env={**os.environ})
    assert run.returncode == 0, run.stderr
    wait_for(lambda: received(daemon, "js_imu") == 30 and received(daemon, "js_speech") == 1, timeout_s=10)
    status = daemon.status()
    assert status["ingest"]["rejected"] == {}, status["ingest"]["last_rejection"]  # BigInt ts_ns: integers
    assert status["ingest"]["sensors"]["js_imu"]["last_seq"] == 29
