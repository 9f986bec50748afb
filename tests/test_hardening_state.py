"""Issue 16: corrupt state is kept and reported, local users stay out, config keys are checked.

Real files, a real daemon where the behaviour is the daemon's (health, exit codes)."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq.auth

from sage_plugins.memory.store import Record, SqliteStore
from sage_runtime import statefile
from sage_runtime.cognition.trust import TrustLedger, TrustParams
from sage_runtime.config import ConfigError, SageConfig, load_config
from tests.harness import SAGE_RUNTIME, DaemonProcess

ECHO = {"plugins": {"enabled": ["tests.plugins_for_tests:Echo"]}}


def kept_files(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}.corrupt-*"))


# ---------------------------------------------------------------- trust.json


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_trust_file_is_kept_reported_and_never_overwritten(tmp_path, damage):
    d = DaemonProcess(tmp_path, ECHO)
    d.state_dir.mkdir(mode=0o750)
    good = tmp_path / "good.json"
    ledger = TrustLedger(TrustParams())
    ledger.record_plugin_error("echo")
    statefile.write_atomic(good, ledger.snapshot(), kind="trust")
    raw = good.read_bytes()
    bad = raw[: len(raw) // 2] if damage == "truncated" else os.urandom(300)
    (d.state_dir / "trust.json").write_bytes(bad)
    d.start()
    try:
        status = d.status()
        kept = kept_files(d.state_dir, "trust.json")
        assert len(kept) == 1 and kept[0].read_bytes() == bad
        assert status["health"] == "degraded"
        assert any(str(kept[0]) in r and "trust ledger" in r for r in status["health_reasons"])
        assert str(kept[0]) in status["trust_summary"]["restore"]
        code, _ = d.stop()
        assert code == 0
        assert kept[0].read_bytes() == bad  # the save at shutdown wrote a fresh trust.json beside it
        statefile.read(d.state_dir / "trust.json", kind="trust")
    finally:
        d.kill()


def test_every_trust_field_survives_a_restart_with_its_value(tmp_path):
    """Field by field against the live ledger (a snapshot compared with a snapshot cannot see a
    field that neither writes). Sensor `last` is a monotonic time and is documented as not kept."""
    ledger = TrustLedger(TrustParams())
    for i in range(5):
        ledger.record_plugin_run("p", [3.0, 2.0, 1.5 - 0.1 * i], "converged", 4.0 + i)
    ledger.record_plugin_error("p")
    ledger.record_plugin_error("q", "timeout")
    ledger.record_sensor("cam", 10.0, 0.05, 0.1, agreement=0.7)
    ledger.record_sensor("cam", 10.1, 0.3, 0.1, agreement=0.4)
    ledger.update_expert("FOCUS", "p", 0.9)
    ledger.update_expert("WAKE", "q", 0.2)
    path = tmp_path / "trust.json"
    statefile.write_atomic(path, ledger.snapshot(), kind="trust")
    restarted = TrustLedger(TrustParams())
    restarted.restore(statefile.read(path, kind="trust"))
    for name, plugin in ledger._plugins.items():
        for f in dataclasses.fields(plugin):
            assert getattr(restarted._plugins[name], f.name) == pytest.approx(getattr(plugin, f.name)), f.name
    for name, sensor in ledger._sensors.items():
        for f in dataclasses.fields(sensor):
            if f.name != "last":
                assert getattr(restarted._sensors[name], f.name) == pytest.approx(getattr(sensor, f.name)), f.name
    assert restarted._experts == ledger._experts and ledger._experts  # JSON keeps floats exactly
    assert ledger._plugins["p"].runs == 6 and ledger._plugins["p"].efficiency_avg > 0


# ---------------------------------------------------------------- memory.db


def _good_db(path: Path) -> None:
    store = SqliteStore(path, 8)
    store.open()
    for i in range(50):
        store.insert(Record(i + 1, i, "cam", 0.5, np.full(8, i, np.float32), {"surprise": 0.1}, {"n": i}))
    assert store.flush()
    store.close()


@pytest.mark.parametrize("damage", ["garbage", "half", "zeroed"])
def test_unreadable_memory_db_is_moved_aside_and_the_store_starts_empty(tmp_path, damage):
    path = tmp_path / "memory.db"
    _good_db(path)
    raw = bytearray(path.read_bytes())
    if damage == "garbage":
        raw = bytearray(os.urandom(len(raw)))
    elif damage == "half":
        raw = raw[: len(raw) // 2]
    else:
        raw[4096:8192] = b"\0" * 4096
    path.write_bytes(bytes(raw))
    store = SqliteStore(path, 8)
    records = store.open()
    try:
        assert records == [] and store.recovered is not None
        kept = Path(store.recovered["kept"])
        assert kept.read_bytes() == bytes(raw) and str(path) in store.recovered["error"]
        assert store.insert(Record(1, 1, "cam", 0.5, np.ones(8, np.float32), {}, {})) and store.flush()
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 1


def test_daemon_with_a_garbage_memory_db_starts_and_keeps_the_file(tmp_path):
    d = DaemonProcess(tmp_path, {"plugins": {"enabled": ["memory"]}})
    db = d.state_dir / "plugins" / "memory" / "memory.db"
    db.parent.mkdir(parents=True)
    os.chmod(d.state_dir, 0o750)
    garbage = os.urandom(64 * 1024)
    db.write_bytes(garbage)
    d.start()
    try:
        status = d.status()
        assert status["plugins"]["memory"]["status"] == "ok"
        kept = kept_files(db.parent, "memory.db")
        assert len(kept) == 1 and kept[0].read_bytes() == garbage
        assert status["health"] == "degraded"
        assert any("plugin memory" in r and str(kept[0]) in r for r in status["health_reasons"]), status
        assert "memory.db" in d.log() and "kept as" in d.log()
    finally:
        d.kill()


# ---------------------------------------------------------------- local access


@pytest.mark.parametrize("unsafe", ["world_writable", "group_writable", "other_owner"])
def test_unsafe_runtime_dir_is_refused_with_exit_2_saying_why(tmp_path, unsafe):
    d = DaemonProcess(tmp_path, ECHO)
    d.run_dir.mkdir(mode=0o750)
    if unsafe == "world_writable":
        os.chmod(d.run_dir, 0o777)
    elif unsafe == "group_writable":
        os.chmod(d.run_dir, 0o770)
    else:
        if os.getuid() != 0:
            pytest.skip("chown to another user needs root")
        os.chown(d.run_dir, 65534, 65534)
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(timeout=60) == 2
    log = d.log()
    assert "runtime dir" in log and str(d.run_dir) in log
    assert not (d.run_dir / "control.sock").exists()


def test_runtime_dir_is_created_private(tmp_path):
    d = DaemonProcess(tmp_path, ECHO).start()
    try:
        assert (d.run_dir.stat().st_mode & 0o777) == 0o750
        assert (d.state_dir.stat().st_mode & 0o777) == 0o750
    finally:
        d.kill()


def test_world_writable_authorized_keys_dir_is_refused(tmp_path):
    keys = tmp_path / "keys"
    clients = tmp_path / "clients"
    keys.mkdir()
    clients.mkdir()
    _, secret = zmq.auth.create_certificates(str(keys), "server")
    zmq.auth.create_certificates(str(clients), "client")
    os.chmod(secret, 0o600)
    os.chmod(clients, 0o777)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"security": {"curve_secret_key": str(secret),
                                                "authorized_keys_dir": str(clients)}}))
    out = subprocess.run([SAGE_RUNTIME, "--check-config", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "authorized_keys_dir" in out.stderr and "0777" in out.stderr, out.stderr
    os.chmod(clients, 0o755)
    out = subprocess.run([SAGE_RUNTIME, "--check-config", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr


def test_default_config_binds_no_tcp_endpoint():
    cfg = load_config(environ={})
    assert not any(ep.startswith("tcp://") for ep in cfg.ingest.endpoints + cfg.results.endpoints)
    assert cfg.control.tcp_endpoint is None


# ---------------------------------------------------------------- unknown keys at every level


def _levels() -> list[tuple[str, dict]]:
    """A config overlay with an unknown key at each level a user can write."""
    out = [(name, {name: {"no_such_key": 1}}) for name in SageConfig.model_fields]
    out += [
        ("top level", {"no_such_section": {}}),
        ("ingest.sensors.x", {"ingest": {"sensors": {"x": {"kind": "text", "no_such_key": 1}}}}),
        ("salience.weights", {"salience": {"weights": {"no_such_key": 1}}}),
        ("metabolic.policies.WAKE", {"metabolic": {"policies": {"WAKE": {"no_such_key": 1}}}}),
        ("metabolic.edges[0]", {"metabolic": {"edges": [{"source": "WAKE", "target": "REST",
                                                         "when": {"atp_below": 0.1}, "no_such_key": 1}]}}),
        ("metabolic.edges[0].when", {"metabolic": {"edges": [{"source": "WAKE", "target": "REST",
                                                              "when": {"no_such_condition": 1}}]}}),
    ]
    return out


@pytest.mark.parametrize("where,overlay", _levels(), ids=[w for w, _ in _levels()])
def test_unknown_keys_are_refused_at_every_config_level(tmp_path, where, overlay):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(overlay))
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert "no_such" in str(err.value)
