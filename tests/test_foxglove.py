"""`foxglove.listen`: a real WebSocket client speaking the Foxglove protocol subscribes to the
daemon's camera, result-image and status channels and gets their messages."""

from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import pytest

pytest.importorskip("foxglove")
websockets = pytest.importorskip("websockets")

from sage_runtime.client import SensorPublisher  # noqa: E402
from sage_runtime.edges.foxglove_view import image_fields  # noqa: E402
from tests.harness import DaemonProcess, wait_for  # noqa: E402
from tests.test_prometheus import free_port  # noqa: E402

#: The SDK's server speaks "foxglove.sdk.v1" (the successor of foxglove.websocket.v1, same framing).
SUBPROTOCOLS = ["foxglove.sdk.v1", "foxglove.websocket.v1"]
WANT = ("/camera/cam", "/vision/reconstruction", "/vision/error_map", "/sage/status")


def test_image_fields():
    assert image_fields(np.zeros((4, 5, 3), np.uint8))[:4] == (5, 4, "rgb8", 15)
    assert image_fields(np.zeros((4, 5), np.float32))[:4] == (5, 4, "32FC1", 20)
    assert image_fields(np.zeros((3, 4, 5), np.float32))[:4] == (5, 4, "rgb8", 15)  # CHW
    assert image_fields(np.zeros(6, np.float32)) is None and image_fields(np.zeros((1, 6), np.uint8)) is None


async def watch(port: int, publish, timeout_s: float = 60.0) -> dict[str, list[bytes]]:
    """Connect, subscribe to WANT as they are advertised, collect payloads until each has one."""
    got: dict[str, list[bytes]] = {}
    async with websockets.connect(f"ws://127.0.0.1:{port}", subprotocols=SUBPROTOCOLS,
                                  max_size=None) as ws:
        assert ws.subprotocol in SUBPROTOCOLS
        topics: dict[int, str] = {}  # subscription id -> topic
        info = json.loads(await ws.recv())
        assert info["op"] == "serverInfo"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        next_send = 0.0
        while not all(got.get(t) for t in WANT):
            if loop.time() > deadline:
                raise TimeoutError(f"got {sorted(got)}, subscribed {sorted(topics.values())}")
            if loop.time() >= next_send:
                await loop.run_in_executor(None, publish)
                next_send = loop.time() + 0.2
            try:
                msg = await asyncio.wait_for(ws.recv(), 0.2)
            except asyncio.TimeoutError:
                continue
            if isinstance(msg, str):
                body = json.loads(msg)
                if body["op"] == "advertise":
                    subs = [{"id": ch["id"], "channelId": ch["id"]} for ch in body["channels"]
                            if ch["topic"] in WANT and ch["id"] not in topics]
                    for ch in body["channels"]:
                        if ch["topic"] in WANT:
                            topics[ch["id"]] = ch["topic"]
                    if subs:
                        await ws.send(json.dumps({"op": "subscribe", "subscriptions": subs}))
                continue
            opcode, sub_id, _ts = struct.unpack_from("<BIQ", msg)
            if opcode == 1 and sub_id in topics:
                got.setdefault(topics[sub_id], []).append(msg[13:])
    return got


def test_foxglove_client_sees_camera_results_and_status(tmp_path):
    port = free_port()
    d = DaemonProcess(tmp_path, {"foxglove": {"listen": f"127.0.0.1:{port}"},
                                 "plugins": {"enabled": ["vision"]}}).start(timeout_s=120)
    try:
        pub = SensorPublisher(d.ingest)
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        got = asyncio.run(watch(port, lambda: pub.tensor("cam", frame)))
        assert any(frame.tobytes() in payload for payload in got["/camera/cam"])  # the pixels, unchanged
        status = json.loads(got["/sage/status"][-1])
        assert status["state"] in ("WAKE", "FOCUS", "CRISIS", "REST", "DREAM") and status["atp_level"] > 0
        assert status["tick_p99_ms"] is not None
        assert len(got["/vision/reconstruction"][0]) >= 48 * 64 * 3  # restored at the frame's own size
        wait_for(lambda: d.control().call("tap")["subscriptions"] >= 1)
        pub.close()
        code, took = d.stop()
        assert code == 0 and took < 8, d.log()
    finally:
        d.kill()
