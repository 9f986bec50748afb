"""The fleet edge: one Zenoh session that makes this daemon one robot of many (docs/protocol.md).

Out: every published result and state transition (the ResultPublisher hands its wire v1 parts to
`publish`), a status summary every second, a liveliness token, and the same results and state
the way rmw_zenoh maps ROS 2 topics. In: sensor frames (through the ingest edge's own `handle`,
so validation, policies, limits and counters are the ZeroMQ ones) and control queries (through
the control edge's `answer`). Knows nothing of plugins.

Zenoh calls back on its own threads; those callbacks only copy bytes and hand them to the event
loop with `call_soon_threadsafe`. Everything that touches the daemon runs on the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import zenoh

from sage_runtime.config import ZenohSection
from sage_runtime.errors import ConfigError
from sage_runtime.edges import ros2
from sage_runtime.edges.security import is_loopback
from sage_runtime.wire import PROTOCOL_VERSION, encode_reply, encode_request, to_jsonable

log = logging.getLogger("sage.zenoh")

ROOT = "sage"
#: Commands any peer may query; the rest change the robot and need `zenoh.write_commands`.
READ_ONLY_COMMANDS = frozenset({"status", "stats", "trust", "plugins", "ping"})
WRITE_COMMANDS = frozenset({"pause", "resume", "state", "reload"})
MAX_ROS_TOPICS = 256
#: Zenoh's own reassembly limit per message, as a multiple of ingest.max_message_bytes.
RX_LIMIT_FACTOR = 4
CLIENT_RETRY_S = 2.0


def zenoh_config(cfg: ZenohSection, max_message_bytes: int) -> zenoh.Config:
    """The Zenoh session config: only the endpoints given (a peer listens nowhere unless told),
    no multicast unless enabled, TLS and access control passed through unchanged."""
    conf = zenoh.Config()
    conf.insert_json5("mode", json.dumps(cfg.mode))
    conf.insert_json5("listen/endpoints", json.dumps(cfg.listen))
    conf.insert_json5("connect/endpoints", json.dumps(cfg.connect))
    conf.insert_json5("connect/exit_on_failure", "false")
    conf.insert_json5("scouting/multicast/enabled", json.dumps(cfg.multicast_scouting))
    conf.insert_json5("transport/link/tx/lease", json.dumps(cfg.lease_ms))
    conf.insert_json5("transport/link/rx/max_message_size", json.dumps(max_message_bytes * RX_LIMIT_FACTOR))
    if cfg.tls is not None:
        conf.insert_json5("transport/link/tls", json.dumps(cfg.tls))
    if cfg.access_control is not None:
        conf.insert_json5("access_control", json.dumps(cfg.access_control))
    return conf


def check_config(cfg: ZenohSection, max_message_bytes: int) -> None:
    """Zenoh's own parse of the section (endpoints, TLS, access control): a ConfigError at
    `--check-config` time rather than a failed session later."""
    try:
        zenoh_config(cfg, max_message_bytes)
    except zenoh.ZError as exc:
        raise ConfigError(f"zenoh: Zenoh refuses this configuration: {exc}") from None


def status_summary(robot_id: str, status: dict[str, Any]) -> dict[str, Any]:
    """The fleet's view of one robot, from the daemon's full status."""
    atp = status.get("atp", {})
    tick = status.get("tick", {})
    return {
        "v": PROTOCOL_VERSION, "robot_id": robot_id, "ts": time.time(),
        "state": status.get("state", {}).get("name"), "health": status.get("health"),
        "health_reasons": status.get("health_reasons", []),
        "atp": atp.get("level"), "atp_capacity": atp.get("capacity"),
        "tick_p50_ms": tick.get("p50_ms"), "tick_p99_ms": tick.get("p99_ms"),
        "plugins": {name: p.get("status") for name, p in status.get("plugins", {}).items()},
        "version": status.get("version"), "uptime_s": status.get("uptime_s"),
    }


def split_published(parts: list[Any]) -> tuple[str, bytes, bytes]:
    """Wire v1 `[topic, header, *tensor parts]` -> (topic, header, tensor parts concatenated)."""
    topic = bytes(parts[0]).decode()
    return topic, bytes(parts[1]), b"".join(memoryview(p).cast("B") for p in parts[2:])


class _Ros2Side:
    """rmw_zenoh-shaped publishers: a node `sage_<robot>` in namespace `/sage/<robot>`, one
    publisher (and graph liveliness token) per topic, declared on first use."""

    def __init__(self, session: zenoh.Session, robot_id: str, domain_id: int) -> None:
        self.session = session
        self.domain = domain_id
        self.namespace = f"/{ROOT}/{ros2.ros_token(robot_id)}"
        self.node = "bridge"
        self.zid = str(session.zid())
        self.tokens = [session.liveliness().declare_token(ros2.node_token(domain_id, self.zid, self.namespace,
                                                                         self.node))]
        self.pubs: dict[str, tuple[zenoh.Publisher, bytes, list[int]]] = {}
        self.sent = 0

    def _publisher(self, topic: str, rtype: ros2.RosType) -> tuple[zenoh.Publisher, bytes, list[int]] | None:
        entry = self.pubs.get(topic)
        if entry is None and len(self.pubs) < MAX_ROS_TOPICS:
            token = ros2.publisher_token(self.domain, self.zid, self.namespace, self.node, len(self.pubs) + 1,
                                         topic, rtype)
            self.tokens.append(self.session.liveliness().declare_token(token))
            pub = self.session.declare_publisher(ros2.topic_keyexpr(self.domain, topic, rtype),
                                                 encoding=zenoh.Encoding("application/cdr"))
            entry = self.pubs[topic] = (pub, ros2.gid_of(token), [0])
        return entry

    def put(self, topic: str, rtype: ros2.RosType, cdr: bytes, ts_ns: int) -> None:
        entry = self._publisher(topic, rtype)
        if entry is None:
            return
        pub, gid, seq = entry
        seq[0] += 1
        pub.put(cdr, attachment=ros2.attachment(seq[0], ts_ns, gid))
        self.sent += 1

    def published(self, topic: str, header: dict[str, Any], tensors: list[memoryview]) -> None:
        """`state` -> String (JSON); `result/<plugin>` -> String (JSON header), and each uint8
        image output -> `.../<plugin>/<output>` Image."""
        ts_ns = int(header.get("ts_ns") or time.time_ns())
        ros_topic = f"{self.namespace}/" + "/".join(ros2.ros_token(c) for c in topic.split("/"))
        self.put(ros_topic, ros2.STRING, ros2.cdr_string(json.dumps(header, default=str)), ts_ns)
        parts = iter(tensors)
        for desc in header.get("outputs", []):
            if "dtype" not in desc:
                continue
            data = next(parts)
            encoding = ros2.image_encoding(desc["dtype"], desc["shape"])
            if encoding is not None:
                cdr = ros2.cdr_image(data, desc["shape"], encoding, ts_ns=ts_ns, frame_id=self.namespace[1:])
                self.put(f"{ros_topic}/{ros2.ros_token(desc['name'])}", ros2.IMAGE, cdr, ts_ns)

    def close(self) -> None:
        for pub, _, _ in self.pubs.values():
            pub.undeclare()
        for token in self.tokens:
            token.undeclare()


class ZenohBridge:
    """One Zenoh session for this robot; `start()`/`close()` or `async with`."""

    def __init__(self, cfg: ZenohSection, *, max_message_bytes: int, ingest: Callable[[list[Any]], None],
                 on_input: Callable[[], None], control: Callable[[bytes], Awaitable[bytes]],
                 status: Callable[[], dict[str, Any]]) -> None:
        self.cfg = cfg
        self.robot_id = cfg.robot_id
        self.prefix = f"{ROOT}/{cfg.robot_id}"
        self.max_message_bytes = max_message_bytes
        self._ingest, self._on_input, self._control, self._status = ingest, on_input, control, status
        self.session: zenoh.Session | None = None
        self.ros: _Ros2Side | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decl: list[Any] = []
        self._pubs: dict[str, zenoh.Publisher] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()  # guards the counters Zenoh threads write
        self._pending = 0
        self.counters = {"published": 0, "publish_errors": 0, "ros2_errors": 0, "ingest_received": 0,
                         "ingest_dropped_backlog": 0, "queries": 0, "queries_refused": 0,
                         "status_sent": 0}

    async def start(self) -> None:
        """Open the session and declare everything. A client whose router is not there yet does not
        hold the daemon back: it retries in the background. Any other refusal is a ConfigError."""
        self._loop = asyncio.get_running_loop()
        self._warn_if_exposed()
        try:
            conf = zenoh_config(self.cfg, self.max_message_bytes)
            session = await asyncio.to_thread(zenoh.open, conf)
        except zenoh.ZError as exc:
            if self.cfg.mode != "client" or "Unable to connect" not in str(exc):
                raise ConfigError(f"zenoh: cannot open the session: {exc}") from None
            log.warning("zenoh: no router at %s yet; retrying every %.0f s", ", ".join(self.cfg.connect),
                        CLIENT_RETRY_S)
            self._spawn(self._open_later())
            return
        self._declare(session)

    async def _open_later(self) -> None:
        while True:
            await asyncio.sleep(CLIENT_RETRY_S)
            try:
                session = await asyncio.to_thread(zenoh.open, zenoh_config(self.cfg, self.max_message_bytes))
            except zenoh.ZError:
                continue
            self._declare(session)
            return

    def _declare(self, session: zenoh.Session) -> None:
        self._decl += [
            session.declare_subscriber(f"{self.prefix}/sensor/**", self._on_sensor),
            session.declare_queryable(f"{self.prefix}/control/*", self._on_control_query),
            session.declare_queryable(f"{self.prefix}/status", self._on_status_query),
        ]
        self._pubs["status"] = session.declare_publisher(f"{self.prefix}/status")
        if self.cfg.ros2:
            self.ros = _Ros2Side(session, self.robot_id, self.cfg.ros2_domain_id)
        self.session = session
        self._spawn(self._status_loop())
        # Last: the fleet sees the robot only once it can answer.
        self._decl.append(session.liveliness().declare_token(f"{self.prefix}/alive"))
        log.info("zenoh: robot %s, %s mode, zid %s, listen %s, connect %s", self.robot_id, self.cfg.mode,
                 session.zid(), self.cfg.listen or "-", self.cfg.connect or "-")

    async def __aenter__(self) -> "ZenohBridge":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _warn_if_exposed(self) -> None:
        if self.cfg.tls or self.cfg.access_control:
            return
        open_eps = [ep for ep in self.cfg.listen + self.cfg.connect
                    if not is_loopback("tcp://" + ep.split("/", 1)[-1].split("#")[0])]
        if open_eps:
            log.warning("zenoh: %s reach beyond this host without zenoh.tls or zenoh.access_control: any peer "
                        "there can send this robot frames and read its status", ", ".join(open_eps))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    # ------------------------------------------------------------ out: results, state, status

    def publish(self, parts: list[Any]) -> None:
        """A ResultPublisher tap: the wire v1 parts of one `result/<plugin>` or `state` message."""
        if self.session is None:
            return
        try:
            topic, header, body = split_published(parts)
            pub = self._pubs.get(topic)
            if pub is None:
                pub = self._pubs[topic] = self.session.declare_publisher(f"{self.prefix}/{topic}")
            pub.put(body, attachment=header)
            self._count("published")
        except Exception:  # noqa: BLE001 - the fleet edge must never cost the tick
            self._count("publish_errors")
            log.exception("zenoh publish failed")
            return
        if self.ros is not None:
            try:
                self.ros.published(topic, msgpack.unpackb(header, raw=False), [memoryview(p) for p in parts[2:]])
            except Exception:  # noqa: BLE001
                self._count("ros2_errors")
                log.exception("zenoh ROS 2 publish failed")

    def summary(self) -> dict[str, Any]:
        return status_summary(self.robot_id, self._status())

    async def _status_loop(self) -> None:
        while True:
            try:
                self._pubs["status"].put(msgpack.packb(to_jsonable(self.summary()), use_bin_type=True))
                self._count("status_sent")
            except Exception:  # noqa: BLE001
                self._count("publish_errors")
                log.exception("zenoh status publish failed")
            await asyncio.sleep(self.cfg.status_interval_s)

    # ------------------------------------------------------------ in: sensor frames (Zenoh threads)

    def _on_sensor(self, sample: zenoh.Sample) -> None:
        """On a Zenoh thread: copy the bytes, hand them to the loop; never touch the daemon here."""
        key = str(sample.key_expr)
        with self._lock:
            self.counters["ingest_received"] += 1
            if self._pending >= self.cfg.max_pending:
                self.counters["ingest_dropped_backlog"] += 1
                return
            self._pending += 1
        topic = "sensor/" + key[len(self.prefix) + len("/sensor/"):]
        header = sample.attachment.to_bytes() if sample.attachment is not None else b""
        parts = [topic.encode(), header, sample.payload.to_bytes()]
        self._to_loop(self._admit, parts)

    def _to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closing: the daemon is stopping
            pass

    def _admit(self, parts: list[Any]) -> None:
        with self._lock:
            self._pending -= 1
        self._ingest(parts)
        self._on_input()

    # ------------------------------------------------------------ in: queries (Zenoh threads)

    def _on_status_query(self, query: zenoh.Query) -> None:
        self._to_loop(self._spawn, self._answer(query, None, b""))

    def _on_control_query(self, query: zenoh.Query) -> None:
        """`sage/<robot>/control/<cmd>`; the payload, if any, is a wire v1 control request."""
        cmd = str(query.key_expr).rsplit("/", 1)[-1]
        payload = query.payload.to_bytes() if query.payload is not None else b""
        self._to_loop(self._spawn, self._answer(query, cmd, payload))

    async def _answer(self, query: zenoh.Query, cmd: str | None, payload: bytes) -> None:
        """On the loop: the reply goes out under this robot's own (non-wildcard) key."""
        self._count("queries")
        try:
            if cmd is None:
                key, reply = f"{self.prefix}/status", msgpack.packb(to_jsonable(self.summary()), use_bin_type=True)
            else:
                reply = await self._command(cmd, payload)
                key = f"{self.prefix}/control/{cmd if '*' not in cmd else '_'}"  # a reply key is never a wildcard
            query.reply(key, reply)
        except Exception:  # noqa: BLE001 - one bad query costs its reply, never the loop
            log.exception("zenoh query %s failed", cmd or "status")
        finally:
            query.drop()

    async def _command(self, cmd: str, payload: bytes) -> bytes:
        """A control command over Zenoh: the ZeroMQ control edge's dispatch, behind the read/write gate."""
        if cmd not in READ_ONLY_COMMANDS and not (cmd in WRITE_COMMANDS and self.cfg.write_commands):
            self._count("queries_refused")
            why = ("changes the robot; set zenoh.write_commands (needs zenoh.tls or zenoh.access_control)"
                   if cmd in WRITE_COMMANDS else f"is not served over Zenoh; read-only: "
                   f"{', '.join(sorted(READ_ONLY_COMMANDS))}")
            return encode_reply(error=("forbidden", f"command {cmd!r} {why}"))
        if not payload:
            return await self._control(encode_request(cmd))
        try:
            asked = msgpack.unpackb(payload, raw=False)
        except Exception:  # noqa: BLE001 - the control edge reports the malformed request itself
            asked = None
        if isinstance(asked, dict) and asked.get("cmd") != cmd:
            self._count("queries_refused")
            return encode_reply(error=("bad_request", f"request names {asked.get('cmd')!r} on the key of {cmd!r}"))
        return await self._control(payload)

    # ------------------------------------------------------------ lifecycle

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self.counters, pending=self._pending, connected=self.session is not None)
        out.update(robot_id=self.robot_id, mode=self.cfg.mode, listen=self.cfg.listen, connect=self.cfg.connect,
                   zid=str(self.session.zid()) if self.session is not None else None,
                   ros2_sent=self.ros.sent if self.ros is not None else 0)
        return out

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        session, self.session = self.session, None
        if session is None:
            return
        if self.ros is not None:
            self.ros.close()
        for decl in [*self._decl, *self._pubs.values()]:
            decl.undeclare()
        session.close()
