"""The control edge: a ROUTER socket on a local ipc path answering one request with one reply.

Handlers are plain callables registered by the daemon; this module knows the framing, not the
commands. A malformed request gets an error reply and is counted; it never reaches a handler.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from sage_runtime.edges.receive import OVERSIZE, TOO_MANY_PARTS, receive_bounded
from sage_runtime.edges.security import EdgeSecurity, bind
from sage_runtime.wire import WireError, decode_request, encode_reply

log = logging.getLogger("sage.control")

Handler = Callable[[dict[str, Any]], Any | Awaitable[Any]]


class CommandError(Exception):
    """A handler's refusal, sent back as {"ok": false, "error": {code, message}}."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ControlServer:
    """The ipc control socket (mode `socket_mode`), plus a CURVE-only TCP one when `tcp_endpoint` is set."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, socket_mode: int = 0o660, *,
                 tcp_endpoint: str | None = None, security: EdgeSecurity | None = None,
                 max_parts: int = 8, max_request_bytes: int = 64 * 1024, rcvhwm: int = 16) -> None:
        # max_request_bytes: ZMQ_MAXMSGSIZE (libzmq drops a peer whose part is larger) and the most
        # one request may carry in all its parts (refused past it, counted).
        self.max_parts, self.max_request_bytes, self.rcvhwm = max_parts, max_request_bytes, rcvhwm
        self.sock = self._socket(ctx)
        if endpoint.startswith("ipc://"):
            path = endpoint[len("ipc://"):]
            old = os.umask(0o777 & ~socket_mode)  # created with the right mode, no window
            try:
                bind(self.sock, endpoint, "control.endpoint")
            finally:
                os.umask(old)
            os.chmod(path, socket_mode)
        else:
            if security is None or not security.enabled:
                raise ValueError(f"control endpoint {endpoint} is not ipc:// and no CurveZMQ keys are configured")
            security.secure(self.sock, "control")
            bind(self.sock, endpoint, "control.endpoint")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.socks = [self.sock]
        self.tcp_endpoint: str | None = None
        if tcp_endpoint is not None:
            if security is None or not security.enabled:
                raise ValueError("control.tcp_endpoint needs CurveZMQ keys")
            tcp = self._socket(ctx)
            security.secure(tcp, "control")
            bind(tcp, tcp_endpoint, "control.tcp_endpoint")
            self.tcp_endpoint = tcp.getsockopt_string(zmq.LAST_ENDPOINT)
            self.socks.append(tcp)
        self.handlers: dict[str, Handler] = {}
        self.requests = 0
        self.bad_requests = 0
        self.refused: dict[str, int] = {TOO_MANY_PARTS: 0, OVERSIZE: 0}

    def _socket(self, ctx: zmq.asyncio.Context) -> zmq.asyncio.Socket:
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_request_bytes)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        return sock

    def register(self, cmd: str, handler: Handler) -> None:
        self.handlers[cmd] = handler

    async def _answer(self, raw: bytes) -> bytes:
        try:
            cmd, args = decode_request(raw)
        except WireError as exc:
            self.bad_requests += 1
            return encode_reply(error=("bad_request", str(exc)))
        handler = self.handlers.get(cmd)
        if handler is None:
            self.bad_requests += 1
            return encode_reply(error=("unknown_command", f"unknown command {cmd!r}; known: "
                                       + ", ".join(sorted(self.handlers))))
        try:
            result = handler(args)
            if inspect.isawaitable(result):
                result = await result
            return encode_reply(result)
        except CommandError as exc:
            return encode_reply(error=(exc.code, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a handler bug must not take the daemon down
            log.exception("control command %s failed", cmd)
            return encode_reply(error=("internal", f"{type(exc).__name__}: {exc}"))

    async def answer(self, raw: bytes) -> bytes:
        """One request, one reply, counted like the socket's: for another transport (Zenoh queryables)."""
        self.requests += 1
        return await self._answer(raw)

    async def run(self) -> None:
        await asyncio.gather(*(self._serve(sock) for sock in self.socks))

    def _receive(self, raw: zmq.Socket) -> list[bytes] | None:
        """One request through the shared bounded receive; past max_parts or max_request_bytes it is
        counted in `refused` and never assembled."""
        got = receive_bounded(raw, self.max_parts, self.max_request_bytes)
        if got.refused is not None:
            self.refused[got.refused] += 1
            log.warning("control request refused: %s", got.detail(
                "capacity.max_message_parts", "capacity.max_request_bytes", self.max_parts, self.max_request_bytes))
            return None
        return [frame.bytes for frame in got.parts]

    async def _serve(self, sock: zmq.asyncio.Socket) -> None:
        raw = zmq.Socket.shadow(sock.underlying)
        while True:
            await sock.poll(flags=zmq.POLLIN)
            while raw.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                frames = self._receive(raw)
                self.requests += 1
                if frames is None or len(frames) < 2:
                    continue
                # ROUTER: [identity, (empty delimiter from REQ/DEALER-with-envelope)..., body]
                envelope, body = frames[:-1], frames[-1]
                reply = await self._answer(body)
                await sock.send_multipart([*envelope, reply])

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
