"""The ROS 2 bytes (edges/ros2.py) against independent implementations: rosbags' CDR deserializer
and RIHS01 type hashes, zenoh-ext's serializer for the attachment; the zenoh config section.
Needs the `zenoh` extra (rosbags is part of it)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

zenoh = pytest.importorskip("zenoh")
typesys = pytest.importorskip("rosbags.typesys")

from sage_runtime.config import ConfigError, SageConfig, ZenohSection, load_config  # noqa: E402
from sage_runtime.edges import ros2  # noqa: E402
from sage_runtime.edges.zenoh_bridge import split_published, status_summary, zenoh_config  # noqa: E402
from sage_runtime.wire import decode_published, encode_result  # noqa: E402
from tests.harness import REPO, SAGE_RUNTIME, SAGECTL  # noqa: E402


@pytest.fixture(scope="module")
def store():
    return typesys.get_typestore(typesys.Stores.ROS2_JAZZY)


@pytest.mark.parametrize("rtype", [ros2.STRING, ros2.IMAGE])
def test_type_hashes_match_rosbags(store, rtype):
    assert store.hash_rihs01(rtype.name) == rtype.type_hash
    package, _, name = rtype.name.split("/")
    assert rtype.dds_name == f"{package}::msg::dds_::{name}_"


@pytest.mark.parametrize("text", ["", "a", "WAKE -> FOCUS", "ü" * 5, '{"k": [1, 2]}' * 50])
def test_string_cdr_decodes_with_rosbags(store, text):
    raw = ros2.cdr_string(text)
    assert raw[:4] == b"\x00\x01\x00\x00"
    assert store.deserialize_cdr(raw, "std_msgs/msg/String").data == text
    assert store.serialize_cdr(store.types["std_msgs/msg/String"](data=text), "std_msgs/msg/String") == raw


@pytest.mark.parametrize("shape", [(3, 4), (5, 7, 3), (2, 9, 4), (1, 1, 1)])
def test_image_cdr_decodes_with_rosbags(store, shape):
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    encoding = ros2.image_encoding("uint8", list(shape))
    ts = 1_700_000_123_456_789_012
    raw = ros2.cdr_image(image, list(shape), encoding, ts_ns=ts, frame_id="sage/r1")
    msg = store.deserialize_cdr(raw, "sensor_msgs/msg/Image")
    channels = 1 if len(shape) == 2 else shape[2]
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_123, 456_789_012)
    assert (msg.header.frame_id, msg.height, msg.width, msg.step) == ("sage/r1", shape[0], shape[1], shape[1] * channels)
    assert msg.encoding == {1: "mono8", 3: "rgb8", 4: "rgba8"}[channels] and msg.is_bigendian == 0
    assert np.array_equal(np.asarray(msg.data).reshape(shape), image)
    assert store.serialize_cdr(msg, "sensor_msgs/msg/Image") == raw


def test_only_uint8_image_shapes_become_images():
    assert ros2.image_encoding("uint8", [4, 4, 3]) == "rgb8"
    assert ros2.image_encoding("float32", [4, 4, 3]) is None
    assert ros2.image_encoding("uint8", [4, 4, 2]) is None
    assert ros2.image_encoding("uint8", [16]) is None
    with pytest.raises(ValueError):
        ros2.cdr_image(np.zeros((2, 2), np.uint8), [2, 3], "mono8", ts_ns=0, frame_id="x")


def test_attachment_is_zenoh_ext_serialization():
    gid = bytes(range(16))
    raw = ros2.attachment(42, 1_700_000_000_000_000_000, gid)
    ext = zenoh.ext
    assert ext.z_deserialize(tuple[ext.Int64, ext.Int64, bytes], zenoh.ZBytes(raw)) == (42, 1_700_000_000_000_000_000, gid)
    assert ext.z_serialize((ext.Int64(42), ext.Int64(1_700_000_000_000_000_000), gid)).to_bytes() == raw


def test_key_expressions_and_graph_tokens():
    assert ros2.topic_keyexpr(3, "/sage/r1/state", ros2.STRING) == \
        f"3/sage/r1/state/std_msgs::msg::dds_::String_/{ros2.STRING.type_hash}"
    zid = "aac3178e146ba6f1fc6e6a4085e77f21"
    assert ros2.node_token(0, zid, "/sage/r1", "bridge") == f"@ros2_lv/0/{zid}/0/0/NN/%/%sage%r1/bridge"
    token = ros2.publisher_token(0, zid, "/sage/r1", "bridge", 2, "/sage/r1/state", ros2.STRING)
    assert token == (f"@ros2_lv/0/{zid}/0/2/MP/%/%sage%r1/bridge/%sage%r1%state/std_msgs::msg::dds_::String_/"
                     f"{ros2.STRING.type_hash}/::,10:,:,:,,")
    assert len(ros2.gid_of(token)) == 16 and ros2.gid_of(token) != ros2.gid_of(token + "x")
    assert ros2.ros_token("front-cam.1") == "front_cam_1" and ros2.ros_token("9lives") == "_9lives"
    zenoh.KeyExpr(token)  # a valid Zenoh key expression


def test_result_body_is_the_tensor_parts_in_header_order():
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(4, dtype=np.uint8)
    parts = encode_result({"plugin": "p", "tick": 1}, {"a": a, "note": "hi", "b": b, "n": 3})
    topic, header, body = split_published(parts)
    assert topic == "result/p" and body == a.tobytes() + b.tobytes()
    back = decode_published([topic.encode(), header, a.tobytes(), b.tobytes()])
    assert np.array_equal(back.outputs["a"], a) and back.outputs["note"] == "hi" and back.outputs["n"] == 3


def test_config_section_defaults_and_refusals(tmp_path):
    z = SageConfig().zenoh
    assert not z.enabled and not z.multicast_scouting and z.listen == [] and not z.write_commands
    assert z.robot_id and z.robot_id[0].isalpha()
    conf = zenoh_config(ZenohSection(listen=["tcp/127.0.0.1:0"]), 1 << 20)
    assert conf.get_json("scouting/multicast/enabled") == "false"
    assert conf.get_json("listen/endpoints") == '["tcp/127.0.0.1:0"]'
    assert conf.get_json("transport/link/rx/max_message_size") == str(4 << 20)
    for bad in ({"robot_id": "has/slash"}, {"mode": "router"}, {"bogus": 1}, {"write_commands": True},
                {"write_commands": True, "access_control": {"enabled": False}},
                {"write_commands": True, "tls": {"root_ca_certificate": "/ca.pem"}, "listen": ["tcp/0.0.0.0:7447"]}):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"zenoh": bad}))
        with pytest.raises(ConfigError, match="zenoh"):
            load_config(path)
    # the daemon refuses to start with write commands and neither TLS nor access control
    path.write_text(yaml.safe_dump({"zenoh": {"enabled": True, "write_commands": True}}))
    out = subprocess.run([SAGE_RUNTIME, "--config", str(path), "--check-config"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "write_commands" in out.stderr
    path.write_text(yaml.safe_dump({"zenoh": {"write_commands": True, "tls": {"root_ca_certificate": "/ca.pem"},
                                              "connect": ["tls/fleet:7447"]}}))
    assert load_config(path).zenoh.write_commands


def test_status_summary_fields():
    s = status_summary("r1", {"state": {"name": "WAKE"}, "health": "ok", "atp": {"level": 12.5, "capacity": 50},
                              "tick": {"p50_ms": 1.0, "p99_ms": 2.0}, "plugins": {"echo": {"status": "ok"}}})
    assert {k: s[k] for k in ("robot_id", "state", "health", "atp", "tick_p99_ms", "plugins")} == \
        {"robot_id": "r1", "state": "WAKE", "health": "ok", "atp": 12.5, "tick_p99_ms": 2.0, "plugins": {"echo": "ok"}}


def test_fleet_table_and_endpoints():
    from sage_runtime.fleet import client_endpoints, render_fleet

    view = {"robots": [{"robot_id": "r1", "state": "WAKE", "health": "ok", "tick_p99_ms": 3.2, "atp": 4999.6,
                        "age_s": 0.4, "plugins": {"echo": "ok"}},
                       {"robot_id": "r2", "state": None, "health": None, "tick_p99_ms": None, "atp": None,
                        "age_s": None, "plugins": {}}]}
    lines = render_fleet(view).splitlines()
    assert lines[0].split()[:6] == ["robot_id", "state", "health", "tick_p99_ms", "atp", "age_s"]
    assert lines[1].split() == ["r1", "WAKE", "ok", "3.2", "5000", "0.4", "echo:ok"]
    assert lines[2].split() == ["r2", "-", "-", "-", "-", "-", "-"]
    assert render_fleet({"robots": []}) == "no robots alive on this Zenoh network"
    z = ZenohSection(listen=["tcp/0.0.0.0:7447", "tcp/[::]:7448"])
    assert client_endpoints(z, None) == ["tcp/127.0.0.1:7447", "tcp/[::1]:7448"]
    assert client_endpoints(z, ["tcp/h:1"]) == ["tcp/h:1"]
    assert client_endpoints(ZenohSection(connect=["tcp/r:7447"]), None) == ["tcp/r:7447"]


def test_sagectl_fleet_without_a_network_exits_3():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    out = subprocess.run([SAGECTL, "--timeout", "1", "fleet", "--connect", f"tcp/127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and "cannot join Zenoh" in out.stderr, out.stderr


def test_core_never_imports_zenoh():
    """Without the extra nothing changes: the daemon, sagectl and the client do not import zenoh."""
    code = ("import sys, sage_runtime.daemon, sage_runtime.sagectl, sage_runtime.client, sage_runtime.cli; "
            "sys.exit('zenoh' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0
