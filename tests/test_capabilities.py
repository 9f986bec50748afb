"""The capability report: JSON-able, probes that answer for real on this machine, jtop socket states."""

from __future__ import annotations

import json
import socket

from sage_runtime.capabilities import capability_report, jtop_state, l4t_release, shm_size


def test_report_is_json_and_names_every_section(tmp_path):
    report = capability_report("cpu", jtop_socket=str(tmp_path / "jtop.sock"), etc_root=str(tmp_path))
    assert json.loads(json.dumps(report)) == report
    assert {"device", "sdpa_backends", "cuda_graphs", "shm", "realtime", "jtop", "versions"} <= set(report)
    assert report["sdpa_backends"]["math"] is True, "the math kernel runs everywhere"
    assert report["cuda_graphs"]["available"] is False and report["cuda_graphs"]["reason"]
    assert report["versions"]["torch"] and report["versions"]["l4t"] is None
    assert report["jtop"]["state"] == "absent"


def test_jtop_socket_states(tmp_path):
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens: a service that died
    assert jtop_state(str(stale))["state"].startswith("not answering")
    live = tmp_path / "live.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(live))
    server.listen(1)
    try:
        assert jtop_state(str(live))["state"] == "answering"
    finally:
        server.close()
    plain = tmp_path / "plain"
    plain.write_text("")
    assert jtop_state(str(plain))["state"] in ("not answering (stale socket)", "not a socket")


def test_l4t_release_parses_nv_tegra_release(tmp_path):
    (tmp_path / "nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n")
    assert l4t_release(str(tmp_path)) == "36.4.3"
    (tmp_path / "nv_tegra_release").write_text("garbage\n")
    assert l4t_release(str(tmp_path)) is None


def test_shm_size_of_a_real_mount_and_a_missing_path(tmp_path):
    assert shm_size(str(tmp_path))["total_bytes"] > 0
    missing = shm_size(str(tmp_path / "nope"))
    assert missing["total_bytes"] is None and missing["error"]
