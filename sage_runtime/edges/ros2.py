"""ROS 2 bytes the way rmw_zenoh puts them on Zenoh: key expressions, CDR messages, attachments.

Pure functions, no Zenoh import: the fleet bridge (zenoh_bridge.py) sends what these build.
The mapping follows ros2/rmw_zenoh's design document (Jazzy and later):
topic key `<domain_id>/<topic without leading slash>/<DDS type name>/<RIHS01 type hash>`, payload
CDR little-endian with its 4-byte encapsulation header, attachment (sequence number, source
timestamp, source gid) in zenoh-ext serialization, graph liveliness under `@ros2_lv`.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Any

CDR_LE = b"\x00\x01\x00\x00"  # encapsulation: CDR, little endian, no options
GID_BYTES = 16  # RMW_GID_STORAGE_SIZE since Iron
LIVELINESS_ROOT = "@ros2_lv"
#: rmw_zenoh's QoS string for reliable, volatile, keep-last 10 (empty fields are the defaults).
DEFAULT_QOS = "::,10:,:,:,,"
_NAME_BAD = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class RosType:
    """A message type: its ROS name, the DDS name rmw_zenoh uses in keys, its REP-2011 hash."""

    name: str
    dds_name: str
    type_hash: str


# The hashes are those of the Jazzy type descriptions; tests/test_zenoh_ros2.py checks them
# against rosbags' independent RIHS01 implementation.
STRING = RosType("std_msgs/msg/String", "std_msgs::msg::dds_::String_",
                 "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18")
IMAGE = RosType("sensor_msgs/msg/Image", "sensor_msgs::msg::dds_::Image_",
                "RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47")

#: uint8 image outputs by channel count -> sensor_msgs/Image encoding.
IMAGE_ENCODINGS = {1: "mono8", 3: "rgb8", 4: "rgba8"}


def ros_token(text: str) -> str:
    """A valid ROS 2 name token: letters, digits, `_`, not starting with a digit."""
    token = _NAME_BAD.sub("_", text) or "_"
    return f"_{token}" if token[0].isdigit() else token


def topic_keyexpr(domain_id: int, topic: str, rtype: RosType) -> str:
    """`/sage/r1/state` -> `0/sage/r1/state/std_msgs::msg::dds_::String_/RIHS01_...`."""
    return f"{domain_id}/{topic.strip('/')}/{rtype.dds_name}/{rtype.type_hash}"


def _mangle(name: str) -> str:
    return name.replace("/", "%") or "%"


def node_token(domain_id: int, zid: str, namespace: str, node: str) -> str:
    """The liveliness key rmw_zenoh declares for a node (entity kind NN, node id 0)."""
    return f"{LIVELINESS_ROOT}/{domain_id}/{zid}/0/0/NN/%/{_mangle(namespace)}/{node}"


def publisher_token(domain_id: int, zid: str, namespace: str, node: str, entity_id: int, topic: str,
                    rtype: RosType, qos: str = DEFAULT_QOS) -> str:
    """The liveliness key of a publisher (entity kind MP): how `ros2 topic list` finds it."""
    return (f"{LIVELINESS_ROOT}/{domain_id}/{zid}/0/{entity_id}/MP/%/{_mangle(namespace)}/{node}/"
            f"{_mangle(topic)}/{rtype.dds_name}/{rtype.type_hash}/{qos}")


def gid_of(token: str) -> bytes:
    """A stable 16-byte publisher gid derived from its liveliness key."""
    return hashlib.sha256(token.encode()).digest()[:GID_BYTES]


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def attachment(seq: int, ts_ns: int, gid: bytes) -> bytes:
    """rmw_zenoh's attachment in zenoh-ext serialization: int64 sequence number, int64 source
    timestamp (ns), then the gid as a length-prefixed byte sequence (33 bytes in all)."""
    if len(gid) != GID_BYTES:
        raise ValueError(f"gid must be {GID_BYTES} bytes")
    return struct.pack("<qq", seq, ts_ns) + _leb128(GID_BYTES) + gid


class _CdrWriter:
    """XCDR1 little-endian writer; alignment counts from the end of the encapsulation header."""

    def __init__(self) -> None:
        self.parts: list[Any] = [CDR_LE]
        self.offset = 0

    def _put(self, data: Any, size: int, align: int) -> None:
        pad = -self.offset % align
        if pad:
            self.parts.append(b"\0" * pad)
        self.parts.append(data)
        self.offset += pad + size

    def u8(self, value: int) -> None:
        self._put(struct.pack("<B", value), 1, 1)

    def u32(self, value: int) -> None:
        self._put(struct.pack("<I", value), 4, 4)

    def i32(self, value: int) -> None:
        self._put(struct.pack("<i", value), 4, 4)

    def string(self, text: str) -> None:
        raw = text.encode() + b"\0"
        self.u32(len(raw))
        self._put(raw, len(raw), 1)

    def octets(self, data: memoryview) -> None:
        self.u32(data.nbytes)
        self._put(data, data.nbytes, 1)

    def finish(self) -> bytes:
        return b"".join(self.parts)


def cdr_string(text: str) -> bytes:
    """A std_msgs/msg/String."""
    w = _CdrWriter()
    w.string(text)
    return w.finish()


def image_encoding(dtype: str, shape: list[int]) -> str | None:
    """The sensor_msgs/Image encoding of a uint8 H x W (x 1|3|4) output, or None when it is no image."""
    if dtype != "uint8" or len(shape) not in (2, 3) or min(shape[:2]) < 1:
        return None
    return IMAGE_ENCODINGS.get(1 if len(shape) == 2 else shape[2])


def cdr_image(data: Any, shape: list[int], encoding: str, *, ts_ns: int, frame_id: str) -> bytes:
    """A sensor_msgs/msg/Image of a C-contiguous uint8 H x W x C buffer."""
    height, width = shape[0], shape[1]
    channels = 1 if len(shape) == 2 else shape[2]
    view = memoryview(data).cast("B")
    if view.nbytes != height * width * channels:
        raise ValueError(f"image buffer has {view.nbytes} bytes, shape {shape} needs {height * width * channels}")
    w = _CdrWriter()
    w.i32(ts_ns // 1_000_000_000)
    w.u32(ts_ns % 1_000_000_000)
    w.string(frame_id)
    w.u32(height)
    w.u32(width)
    w.string(encoding)
    w.u8(0)  # is_bigendian
    w.u32(width * channels)  # step
    w.octets(view)
    return w.finish()
