"""Who gets in: socket modes, loopback-only TCP, CurveZMQ with authorised keys, size limits,
secrets on disk, and no unsafe deserialisation on an input path."""

from __future__ import annotations

import ast
import os
import socket
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq
import zmq.auth

from sage_runtime.config import ConfigError, SageConfig
from sage_runtime.edges.security import check_exposure, is_loopback
from sage_runtime.wire import decode_reply, encode_ingest, encode_request
from tests.harness import REPO, SAGE_RUNTIME, DaemonProcess, ipc_only, wait_for


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def public_host() -> str:
    """A non-loopback address to bind in tests: 0.0.0.0 (all interfaces) is not loopback."""
    return "0.0.0.0"


def check_config(tmp_path: Path, config: dict, mode: int = 0o600) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(ipc_only(config)))
    path.chmod(mode)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SAGE_RUNTIME_DIR": str(tmp_path / "run")}
    return subprocess.run([SAGE_RUNTIME, "--config", str(path), "--check-config"], capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    """Server, authorised client and stranger key pairs; only the client's public key is authorised."""
    root = tmp_path_factory.mktemp("certs")
    out = {}
    for name in ("server", "client", "stranger"):
        pub, secret = zmq.auth.create_certificates(root, name)
        out[name], out[f"{name}_public"] = Path(secret), Path(pub)
    authorised = root / "authorized"
    authorised.mkdir()
    (authorised / "client.key").write_bytes(out["client_public"].read_bytes())
    out["authorized"] = authorised
    for path in root.glob("*.key_secret"):
        path.chmod(0o600)
    return out


# ---------------------------------------------------------------- exposure rules (fast, in process)


@pytest.mark.parametrize("endpoint,loopback", [
    ("ipc:///run/sage/ingest.sock", True), ("tcp://127.0.0.1:5560", True), ("tcp://127.0.0.2:1", True),
    ("tcp://localhost:5560", True), ("tcp://[::1]:5560", True), ("tcp://0.0.0.0:5560", False),
    ("tcp://*:5560", False), ("tcp://eth0:5560", False), ("tcp://10.0.0.5:5560", False),
])
def test_loopback_classification(endpoint, loopback):
    assert is_loopback(endpoint) is loopback


@pytest.mark.parametrize("override,key", [
    ({"ingest": {"endpoints": ["tcp://0.0.0.0:5560"]}}, "ingest.endpoints"),
    ({"results": {"endpoints": ["tcp://*:5561"]}}, "results.endpoints"),
    ({"control": {"tcp_endpoint": "tcp://127.0.0.1:5562"}}, "control.tcp_endpoint"),
    ({"control": {"endpoint": "tcp://127.0.0.1:5562"}}, "control.endpoint"),
])
def test_exposed_endpoints_without_keys_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_exposure(SageConfig.model_validate(override), None)


def test_defaults_bind_loopback_only():
    cfg = SageConfig()
    assert all(is_loopback(ep) for ep in cfg.ingest.endpoints + cfg.results.endpoints + [cfg.control.endpoint])
    assert check_exposure(cfg, None) is None


def test_world_readable_secrets_are_refused(tmp_path, certs):
    secret = tmp_path / "server.key_secret"
    secret.write_bytes(certs["server"].read_bytes())
    cfg = SageConfig.model_validate({"security": {"curve_secret_key": str(secret),
                                                  "authorized_keys_dir": str(certs["authorized"])}})
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="curve_secret_key.*world-readable"):
        check_exposure(cfg, None)
    secret.chmod(0o640)
    assert check_exposure(cfg, None).public == zmq.auth.load_certificate(secret)[0]
    inline = tmp_path / "inline.yaml"
    key = zmq.curve_keypair()[1].decode()
    inline.write_text(f"plugins:\n  options:\n    uplink:\n      secret_key: \"{key}\"\n")
    inline.chmod(0o644)
    with pytest.raises(ConfigError, match="config file.*world-readable"):
        check_exposure(SageConfig(), inline)
    inline.chmod(0o600)
    check_exposure(SageConfig(), inline)


def test_the_daemon_exits_2_naming_the_key(tmp_path, certs):
    out = check_config(tmp_path, {"ingest": {"endpoints": [f"tcp://{public_host()}:{free_port('127.0.0.1')}"]}})
    assert out.returncode == 2 and "ingest.endpoints" in out.stderr and "CurveZMQ" in out.stderr
    secret = tmp_path / "open.key_secret"
    secret.write_bytes(certs["server"].read_bytes())
    secret.chmod(0o604)
    out = check_config(tmp_path, {"security": {"curve_secret_key": str(secret),
                                               "authorized_keys_dir": str(certs["authorized"])}})
    assert out.returncode == 2 and "security.curve_secret_key" in out.stderr and "world-readable" in out.stderr


# ---------------------------------------------------------------- CURVE on a real daemon


@pytest.fixture(scope="module")
def curve_daemon(tmp_path_factory, certs):
    host = public_host()
    ports = {name: free_port("127.0.0.1") for name in ("ingest", "results", "control")}
    d = DaemonProcess(tmp_path_factory.mktemp("curve"), {
        "plugins": {"enabled": ["tests.plugins_for_tests:Echo"]},
        "ingest": {"endpoints": ["ipc://{runtime_dir}/ingest.sock", f"tcp://{host}:{ports['ingest']}"],
                   "sensors": {"capped": {"kind": "tensor", "dtype": "uint8", "max_shape": [4, 4]}}},
        "results": {"endpoints": ["ipc://{runtime_dir}/results.sock", f"tcp://{host}:{ports['results']}"]},
        "control": {"tcp_endpoint": f"tcp://{host}:{ports['control']}"},
        "security": {"curve_secret_key": str(certs["server"]), "authorized_keys_dir": str(certs["authorized"])},
    }).start()
    d.ports = ports
    yield d
    d.kill()


def curve_socket(kind: int, certs: dict[str, Path], who: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(certs[who])
    sock.curve_serverkey = zmq.auth.load_certificate(certs["server_public"])[0]
    return sock


def test_control_socket_is_owner_and_group_only(curve_daemon):
    mode = stat.S_IMODE((curve_daemon.run_dir / "control.sock").stat().st_mode)
    assert mode == 0o660


def test_only_authorised_curve_clients_get_through(curve_daemon, certs):
    d, port = curve_daemon, curve_daemon.ports["ingest"]
    stranger = curve_socket(zmq.PUB, certs, "stranger")
    stranger.connect(f"tcp://127.0.0.1:{port}")
    plain = zmq.Context.instance().socket(zmq.PUB)
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(f"tcp://127.0.0.1:{port}")
    friend = curve_socket(zmq.PUB, certs, "client")
    friend.connect(f"tcp://127.0.0.1:{port}")

    def friend_in():
        friend.send_multipart(encode_ingest("friend", 0, "tensor", np.ones(4, np.float32), ts_ns=1))
        stranger.send_multipart(encode_ingest("stranger", 0, "tensor", np.ones(4, np.float32), ts_ns=1))
        plain.send_multipart(encode_ingest("plain", 0, "tensor", np.ones(4, np.float32), ts_ns=1))
        s = d.status()["ingest"]
        return s if "friend" in s["sensors"] and s["auth"]["failed_auth"] >= 1 \
            and s["auth"]["failed_protocol"] + s["auth"]["failed_no_detail"] >= 1 else None
    status = wait_for(friend_in, timeout_s=60, interval_s=0.1)
    assert "stranger" not in status["sensors"] and "plain" not in status["sensors"]
    assert status["auth"]["curve"] is True and status["auth"]["succeeded"] >= 1
    assert status["auth"]["failed_auth"] >= 1, "the unknown key must be refused at the handshake"
    # libzmq 4.3.5 reports a client without CURVE as a protocol failure or, when the server drops
    # it before the mechanism is compared, as "no detail" (both seen here, run to run; documented)
    assert status["auth"]["failed_protocol"] + status["auth"]["failed_no_detail"] >= 1, status["auth"]
    for sock in (stranger, plain, friend):
        sock.close()


def test_tcp_control_and_results_need_an_authorised_key(curve_daemon, certs):
    d = curve_daemon
    endpoint = f"tcp://127.0.0.1:{d.ports['control']}"
    stranger = curve_socket(zmq.REQ, certs, "stranger")
    stranger.connect(endpoint)
    stranger.send(encode_request("ping"))
    friend = curve_socket(zmq.REQ, certs, "client")
    friend.connect(endpoint)
    friend.send(encode_request("ping"))
    assert friend.poll(10000) and decode_reply(friend.recv())["result"]["pong"] is True
    wait_for(lambda: d.status()["control"]["auth"]["failed_auth"] >= 1, timeout_s=10)
    assert not stranger.poll(200), "an unauthorised client got a control reply"
    sub = curve_socket(zmq.SUB, certs, "stranger")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{d.ports['results']}")
    wait_for(lambda: d.status()["results"]["auth"]["failed_auth"] >= 1, timeout_s=10)
    for sock in (stranger, friend, sub):
        sock.close()


def test_per_sensor_element_limits(curve_daemon):
    """A declared max_shape caps its sensor (message size limits: test_faults' malformed-bytes test)."""
    d = curve_daemon
    from sage_runtime.client import SensorPublisher
    pub = SensorPublisher(d.ingest)

    def counted():
        pub.tensor("capped", np.zeros((5, 5), np.uint8))
        return d.status()["ingest"]["rejected"].get("declared_mismatch", 0) >= 1
    wait_for(counted, timeout_s=10, interval_s=0.1)
    pub.tensor("capped", np.zeros((4, 4), np.uint8))
    wait_for(lambda: d.status()["ingest"]["sensors"].get("capped", {}).get("received") == 1, timeout_s=10)
    pub.close()


# ---------------------------------------------------------------- no unsafe deserialisation on input paths

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}
#: Offline training scripts resume their own checkpoints; no daemon input reaches them.
ALLOWED = {("sage_plugins/language/train.py", "torch.load"),
           # Requests and answers between the daemon and its own plugin worker, over an unnamed
           # socketpair no other process can reach. Frames from the network ride inside as byte
           # buffers (never as pickle opcodes), and the worker runs plugin code the daemon would
           # otherwise run itself: no new way for data to become code.
           ("sage_runtime/plugin/worker.py", "import pickle")}


def unsafe_calls(source: str) -> list[str]:
    """What in `source` can run code from data: pickle-family imports, bare eval/exec, torch.load
    without weights_only=True, yaml.load, numpy loads with allow_pickle=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            found += [f"import {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                f"{getattr(func.value, 'id', '?')}.{func.attr}" if isinstance(func, ast.Attribute) else "")
            kw = {k.arg: k.value for k in node.keywords}
            if name in ("eval", "exec", "__import__"):
                found.append(name)
            elif name == "torch.load" and not (isinstance(kw.get("weights_only"), ast.Constant)
                                               and kw["weights_only"].value is True):
                found.append("torch.load")
            elif name == "yaml.load":
                found.append("yaml.load")
            elif name in ("np.load", "numpy.load") and isinstance(kw.get("allow_pickle"), ast.Constant) \
                    and kw["allow_pickle"].value is True:
                found.append("np.load")
    return found


def test_the_checker_catches_what_it_is_for():
    bad = ("import pickle\nfrom dill import loads\neval('1')\nexec('x=1')\ntorch.load(p)\n"
           "torch.load(p, weights_only=False)\nyaml.load(s)\nnp.load(p, allow_pickle=True)\n")
    assert unsafe_calls(bad) == ["import pickle", "import dill", "eval", "exec", "torch.load", "torch.load",
                                 "yaml.load", "np.load"]
    assert unsafe_calls("torch.load(p, weights_only=True)\nmodel.eval()\nyaml.safe_load(s)\n") == []


def test_no_pickle_or_eval_in_the_runtime_or_plugins():
    offenders = []
    for root in ("sage_runtime", "plugins"):
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            offenders += [f"{rel}: {hit}" for hit in unsafe_calls(path.read_text(encoding="utf-8"))
                          if (rel, hit) not in ALLOWED]
    assert offenders == []


def test_tcp_peers_past_the_cap_are_refused_and_the_daemon_stays_up(tmp_path, certs):
    """Was: ~1,100 loopback TCP connections pushed the daemon to 1,024 fds and the next ipc
    connection made libzmq abort it. Now ZAP refuses CURVE peers past capacity.max_tcp_peers."""
    port = free_port("127.0.0.1")
    d = DaemonProcess(tmp_path, {
        "plugins": {"enabled": ["tests.plugins_for_tests:Echo"]},
        "ingest": {"endpoints": ["ipc://{runtime_dir}/ingest.sock", f"tcp://127.0.0.1:{port}"]},
        "capacity": {"max_tcp_peers": 3},
        "security": {"curve_secret_key": str(certs["server"]), "authorized_keys_dir": str(certs["authorized"])},
    }).start()
    socks = []
    try:
        fds = d.status()["process"]["open_fds"]
        for i in range(3):  # one at a time: the cap counts peers from monitor events, ZAP can overtake them
            sock = curve_socket(zmq.PUB, certs, "client")
            sock.connect(f"tcp://127.0.0.1:{port}")
            socks.append(sock)
            wait_for(lambda: d.status()["ingest"]["auth"]["succeeded"] >= i + 1, timeout_s=30)
        for i in range(7):
            sock = curve_socket(zmq.PUB, certs, "client")
            sock.connect(f"tcp://127.0.0.1:{port}")
            socks.append(sock)
        auth = wait_for(lambda: (a := d.status()["ingest"]["auth"])["refused_peers"] >= 7 and a, timeout_s=60)
        assert auth["succeeded"] == 3, auth
        status = d.control(timeout_s=1.0).status()
        assert status["process"]["open_fds"] - fds < 20
        assert status["tick"]["count"] > 0 and d.proc.poll() is None
    finally:
        for sock in socks:
            sock.close(linger=0)
        d.kill()
