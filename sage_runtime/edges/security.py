"""Who may reach the daemon: loopback-only TCP by default, CurveZMQ (with ZAP) beyond it.

ipc sockets are guarded by file modes (the control socket is 0660). A TCP port is reachable by
anyone who can route to it, so an endpoint off loopback, or any TCP control endpoint, needs
CurveZMQ keys: the daemon's secret key and a directory of authorised client public keys
(`*.key` files as written by `zmq.auth.create_certificates`). pyzmq's ZAP authenticator decides
each handshake; socket monitors count the outcomes per edge for `sagectl status`.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import itertools
import logging
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import parse_monitor_message

from sage_runtime.limits import UnsafeDirectory, check_private
from sage_runtime.config import ConfigError, SageConfig

log = logging.getLogger("sage.security")

#: A Z85 CurveZMQ secret (exactly 40 characters) written into a text file: a pasted certificate's
#: `secret-key = "..."` or a YAML `secret_key: ...`; security.curve_secret_key holds a path, not a key.
_Z85 = r"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]"
_KEY_MATERIAL_RE = re.compile(rf"(?<!curve_)secret[-_]key\s*[=:]\s*[\"']?{_Z85}{{40}}(?!{_Z85})")
_HANDSHAKE_EVENTS = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "succeeded",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "failed_auth",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "failed_protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed_no_detail",
}
_PEER_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
_monitor_ids = itertools.count()


class _CappedAuthenticator(AsyncioAuthenticator):
    """pyzmq's ZAP handler, refusing a handshake (CURVE, or NULL on a plain TCP socket) while its
    edge already has `max_peers` connected TCP peers: each costs a file descriptor, and at the
    process's limit libzmq aborted."""

    def __init__(self, ctx: zmq.asyncio.Context, security: "EdgeSecurity") -> None:
        super().__init__(ctx, log=logging.getLogger("sage.security.zap"))
        self.security = security

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # [version, request_id, domain, address, identity, mechanism, ...]: NULL has no credentials
        # hook of its own in pyzmq, so its cap is checked here.
        if len(msg) >= 6 and msg[5] == b"NULL" and self.security.over_peer_cap(msg[2].decode(errors="replace")):
            self._send_zap_reply(msg[1], b"400", b"too many peers")
            return
        await super().handle_zap_message(msg)

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        if self.security.over_peer_cap(domain):
            return False, b"too many peers"
        return await super()._authenticate_curve(domain, client_key)


def is_tcp(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


def is_loopback(endpoint: str) -> bool:
    """True for non-TCP transports and TCP on 127.0.0.0/8, ::1 or `localhost`; `*`, 0.0.0.0,
    interface names and other hosts are not loopback."""
    if not is_tcp(endpoint):
        return True
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class CurveKeys:
    """The daemon's CURVE key pair and where the authorised client keys live."""

    public: bytes
    secret: bytes
    authorized_keys_dir: Path


def _refuse_world_readable(path: Path, key: str) -> None:
    mode = path.stat().st_mode
    if mode & stat.S_IROTH:
        raise ConfigError(f"{key}: {path} holds secret key material and is world-readable "
                          f"(mode {stat.S_IMODE(mode):04o}); chmod o-r it")


def load_keys(cfg: SageConfig) -> CurveKeys | None:
    """The configured CURVE keys, or None; ConfigError (naming the key) when they cannot be used."""
    sec = cfg.security
    if sec.curve_secret_key is None:
        return None
    path = Path(sec.curve_secret_key)
    try:
        _refuse_world_readable(path, "security.curve_secret_key")
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise ConfigError(f"security.curve_secret_key: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"security.curve_secret_key: {path} is not a CurveZMQ certificate: {exc}") from None
    if not secret:
        raise ConfigError(f"security.curve_secret_key: {path} holds only a public key")
    keys_dir = Path(sec.authorized_keys_dir or "")
    if not keys_dir.is_dir():
        raise ConfigError(f"security.authorized_keys_dir: {keys_dir} is not a directory")
    try:  # whoever can add a file here can let a client in
        check_private(keys_dir, "security.authorized_keys_dir")
    except UnsafeDirectory as exc:
        raise ConfigError(str(exc)) from None
    return CurveKeys(public, secret, keys_dir)


def check_exposure(cfg: SageConfig, config_path: str | os.PathLike[str] | None) -> CurveKeys | None:
    """Refuse to start (ConfigError, exit 2) when an endpoint would be open to the network without
    CURVE, or a file holding secret key material is world-readable. Returns the keys, if any."""
    if config_path is not None:
        path = Path(config_path)
        if _KEY_MATERIAL_RE.search(path.read_text(encoding="utf-8", errors="replace")):
            _refuse_world_readable(path, "config file")
    keys = load_keys(cfg)
    if keys is not None:
        return keys
    remedy = "configure security.curve_secret_key and security.authorized_keys_dir (CurveZMQ)"
    for key, endpoints in (("ingest.endpoints", cfg.ingest.endpoints), ("results.endpoints", cfg.results.endpoints)):
        for ep in endpoints:
            if not is_loopback(ep):
                raise ConfigError(f"{key}: {ep} is not a loopback address; to listen beyond this host {remedy}")
    for key, ep in (("control.endpoint", cfg.control.endpoint), ("control.tcp_endpoint", cfg.control.tcp_endpoint)):
        if ep is not None and is_tcp(ep):
            raise ConfigError(f"{key}: {ep}: a TCP control endpoint needs CurveZMQ keys; {remedy}")
    return None


class EdgeSecurity:
    """CURVE for the TCP sockets of the three edges: one ZAP authenticator, handshake counters per edge.

    With no keys it only counts nothing, so the edges need no special case."""

    def __init__(self, ctx: zmq.asyncio.Context, keys: CurveKeys | None, max_peers: int = 64) -> None:
        self.ctx = ctx
        self.keys = keys
        self.max_peers = max_peers
        self.auth: AsyncioAuthenticator | None = None
        self.counts: dict[str, collections.Counter[str]] = {}
        self.peers: collections.Counter[str] = collections.Counter()  # TCP peers connected now, per edge
        self._monitors: list[tuple[str, zmq.Socket, zmq.asyncio.Socket]] = []
        self.curve_edges: set[str] = set()
        if keys is not None:
            # Before any secured socket binds: a handshake without a ZAP handler would pass unchecked.
            self._start_auth()
            log.info("CurveZMQ on TCP endpoints: %d authorised client key(s) in %s",
                     len(zmq.auth.load_certificates(keys.authorized_keys_dir)), keys.authorized_keys_dir)

    def _start_auth(self) -> AsyncioAuthenticator:
        if self.auth is None:
            self.auth = _CappedAuthenticator(self.ctx, self)
            self.auth.start()
        return self.auth

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def secure(self, sock: zmq.Socket, edge: str) -> None:
        """Make `sock` a CURVE server checked by ZAP, counting its handshakes under `edge`.
        Call before bind."""
        assert self.keys is not None, "no CurveZMQ keys configured"
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_server = True
        self._start_auth().configure_curve(domain=edge, location=str(self.keys.authorized_keys_dir))
        self.curve_edges.add(edge)
        self.cap_peers(sock, edge)

    def cap_peers(self, sock: zmq.Socket, edge: str) -> None:
        """Count `sock`'s TCP peers and handshakes under `edge` and refuse a handshake past
        max_peers (ZAP; NULL handshakes too on a plain socket). Call before bind, on a socket with
        TCP endpoints only: its every peer counts."""
        self._start_auth()
        sock.zap_domain = edge.encode()
        address = f"inproc://sage-monitor-{edge}-{next(_monitor_ids)}"
        sock.monitor(address, sum(_HANDSHAKE_EVENTS) | _PEER_EVENTS)
        mon = self.ctx.socket(zmq.PAIR)
        mon.connect(address)
        self._monitors.append((edge, sock, mon))
        self.counts.setdefault(edge, collections.Counter())

    async def run(self) -> None:
        """Read every monitor until cancelled."""
        await asyncio.gather(*(self._watch(edge, mon) for edge, _, mon in self._monitors))

    def over_peer_cap(self, edge: str) -> bool:
        """True (and counted as `refused_peers`) when the edge's connected peers exceed the cap; the
        peer asking is already among them (its accept came before its handshake)."""
        if self.peers[edge] <= self.max_peers:
            return False
        self.counts[edge]["refused_peers"] += 1
        refused = self.counts[edge]["refused_peers"]
        if refused == 10 ** int(math.log10(refused)):  # 1st, 10th, 100th...: a flood is not a log flood
            log.warning("%s: refusing TCP peers (%d so far): %d connected, capacity.max_tcp_peers is %d", edge,
                        refused, self.peers[edge], self.max_peers)
        return True

    async def _watch(self, edge: str, mon: zmq.asyncio.Socket) -> None:
        while True:
            event = parse_monitor_message(await mon.recv_multipart())
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.peers[edge] += 1
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.peers[edge] = max(self.peers[edge] - 1, 0)
            outcome = _HANDSHAKE_EVENTS.get(event["event"])
            if outcome is not None:
                self.counts[edge][outcome] += 1
                if outcome != "succeeded":
                    log.warning("%s: CURVE handshake %s from %s", edge, outcome.replace("_", " "),
                                event.get("endpoint", b"?").decode(errors="replace"))

    def stats(self, edge: str) -> dict[str, Any]:
        counts = self.counts.get(edge, collections.Counter())
        return {"curve": edge in self.curve_edges, **{name: counts[name] for name in _HANDSHAKE_EVENTS.values()},
                "peers": self.peers[edge], "refused_peers": counts["refused_peers"]}

    def close(self) -> None:
        for _, sock, mon in self._monitors:
            if not sock.closed:
                sock.disable_monitor()
            mon.close(linger=0)
        self._monitors.clear()
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


def bind(sock: zmq.Socket, endpoint: str, key: str) -> None:
    """sock.bind, with a port in use (or any bind failure) as a ConfigError naming the key and the
    endpoint: the daemon exits 2 with that line instead of a traceback."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"{key}: cannot bind {endpoint}: {exc.strerror}") from None


def bind_edge(ctx: zmq.Context, sock_type: int, endpoints: list[str], edge: str,
              options: dict[int, Any], security: EdgeSecurity | None) -> tuple[list[Any], list[str]]:
    """Bind an edge's endpoints: one plain socket, and with CurveZMQ keys a second, CURVE socket
    for the TCP endpoints (a security option applies to every endpoint of a socket; ipc endpoints
    stay plain, file modes guard them). Returns the sockets and the bound endpoints."""
    secured = security is not None and security.enabled
    groups = [[ep for ep in endpoints if not is_tcp(ep)], [ep for ep in endpoints if is_tcp(ep)]]
    socks: list[Any] = []
    bound: list[str] = []
    for tcp, group in enumerate(groups):
        if not group:
            continue
        sock = ctx.socket(sock_type)
        for option, value in options.items():
            sock.setsockopt(option, value)
        if tcp and secured:
            security.secure(sock, edge)  # type: ignore[union-attr]
        elif tcp and security is not None:
            security.cap_peers(sock, edge)  # plain TCP (loopback opt-in): its peers are capped too
        for ep in group:
            bind(sock, ep, f"{edge}.endpoints")
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        socks.append(sock)
    return socks, bound
