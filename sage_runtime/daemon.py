"""The daemon's lifecycle, the way uvicorn does it: build everything in one place, each resource
registered on an AsyncExitStack as it is made (so teardown is the mirror of build), then start,
signal READY, wait for SIGTERM/SIGINT (or the tick loop failing).

Typed failures (AlreadyRunning, ConfigError, PluginLoadError) propagate to the command line
(cli.py), which owns the exit codes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

import torch
import zmq
import zmq.asyncio

from sage_runtime import __version__
from sage_runtime.capabilities import capability_report
from sage_runtime.cognition.commands import cognition_commands
from sage_runtime.cognition.plan import Cognition
from sage_runtime.config import (
    SageConfig, expand_endpoint, load_config, receive_hwm, resolve_runtime_dir, resolve_state_dir, split_reload,
)
from sage_runtime.edges.control import CommandError, ControlServer
from sage_runtime.edges.ingest import IngestServer, SensorTable
from sage_runtime.edges.notify import SystemdNotifier
from sage_runtime.edges.foxglove_view import FoxgloveView
from sage_runtime.edges.loopcall import call_on_loop
from sage_runtime.edges.prometheus import MetricsServer
from sage_runtime.edges.publish import ResultPublisher
from sage_runtime.edges.security import EdgeSecurity, load_keys
from sage_runtime.edges.tap import IngestTap
from sage_runtime.errors import AlreadyRunning, ConfigError, PluginLoadError
from sage_runtime.limits import bound_malloc, private_dir, raise_nofile
from sage_runtime.logs import feed_hint, setup_logging
from sage_runtime.mailbox import Mailbox
from sage_runtime.plugin.contract import PluginContext
from sage_runtime.plugin.host import PluginHost, job_policy
from sage_runtime.plugin.priority import raise_tick_priority
from sage_runtime.plugin.registry import check_plugins, load_plugin_classes
from sage_runtime.plugin.worker import RemotePlugin
from sage_runtime.status import StatusReport
from sage_runtime.telemetry import open_telemetry
from sage_runtime.tick import Orchestrator

log = logging.getLogger("sage.daemon")
#: Below this soft fd limit (after raising it to the hard one) the daemon warns at start.
MIN_NOFILE = 4096

STOP_TIMEOUT_S = 4.0
SOCKET_FILES = ("control.sock", "ingest.sock", "results.sock")


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class Daemon:
    """`demo` is the module of the `sage_runtime.demo` entry point (cli.py looks it up), or None;
    `replay` a replay.DeterministicReplay, which then drives the tick instead of live ingest."""

    def __init__(self, cfg: SageConfig, config_path: str | None, *, demo: Any = None, replay: Any = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.demo = demo
        self.replay = replay
        self.runtime_dir = resolve_runtime_dir(cfg)
        self.state_dir = resolve_state_dir(cfg)
        self.device = pick_device(cfg.runtime.device)
        self.notifier = SystemdNotifier()
        self.last_reload: dict[str, Any] | None = None
        self._last_watchdog = 0.0
        self._last_status = 0.0
        self._stopping = asyncio.Event()
        self._stop_t0 = 0.0
        self._tasks: list[asyncio.Task[Any]] = []

    async def run(self) -> int:
        """Build, start, signal READY, wait; teardown (the exit stack) mirrors the build."""
        async with contextlib.AsyncExitStack() as stack:
            hosts = self._build(stack)
            await self._start(stack, hosts)
            await self._wait()
        return 0

    # ---------------------------------------------------------------- build

    def _host(self, plugin: Any) -> PluginHost:
        """A plugin's host thread, its job policy from config. ATP is compute time: a CPU thread's
        own CPU time (not the time other processes held its core); on CUDA the step's wall time.
        A replay's hosts run in virtual time instead (replay.DeterministicReplay.host_options)."""
        if self.replay is not None:
            options = self.replay.host_options(plugin)
        elif self._isolation(plugin) == "process":
            remote = RemotePlugin(type(plugin), nice=self.cfg.plugins.thread_nice, torch_threads=self.cfg.runtime.torch_threads)
            options = {"plugin": remote, "cost_clock": time.perf_counter_ns if self.device.type == "cuda" else remote.cpu_ns}
        else:
            options = {"plugin": plugin, "cost_clock": time.perf_counter_ns if self.device.type == "cuda" else None}
        return PluginHost(breaker_failures=self.cfg.plugins.breaker_failures,
                          breaker_cooldown_s=self.cfg.plugins.breaker_cooldown_s, policy=job_policy(self.cfg, plugin),
                          **options)

    def _isolation(self, plugin: Any) -> str:
        """`thread` or `process` for this plugin; `auto` is a process on CPU, a thread on CUDA."""
        job = self.cfg.plugins.jobs.get(plugin.name)
        chosen = (job.isolation if job is not None else None) or self.cfg.plugins.isolation
        if chosen == "auto":
            return "process" if self.device.type == "cpu" else "thread"
        return chosen

    def _clocks(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Cognition's and the tick's clock arguments: the machine's by default, a replay's virtual time."""
        if self.replay is None:
            return {}, {}
        clock = self.replay.clock
        return {"clock": clock.monotonic, "wall_ns": clock.time_ns}, {"clock": clock, "cores": self.cfg.replay.cores}

    def _build(self, stack: contextlib.AsyncExitStack) -> list[PluginHost]:
        """Make every resource, registering its teardown right after it is made."""
        cfg = self.cfg
        torch.set_num_threads(cfg.runtime.torch_threads)
        sys.setswitchinterval(cfg.tick.gil_switch_interval_ms / 1e3)
        raise_tick_priority()  # before any thread starts: plugin threads then know what the tick got
        stack.callback(self._stopped)
        stack.callback(self.notifier.close)
        self._prepare_dirs()
        stack.callback(self._remove_socket_files)
        self.mailbox = Mailbox(self.device)
        stack.callback(self.mailbox.close)
        actx = self._open_control_and_results(stack)
        self.compute = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        stack.callback(self.compute.shutdown, wait=False, cancel_futures=True)
        self.compute.submit(lambda: None)  # its thread now, not at the first trust save: thread count stays flat
        self.telemetry = open_telemetry(cfg.telemetry)
        self.telemetry.start()
        stack.callback(self.telemetry.stop)
        self.plugin_options = check_plugins(cfg.plugins.enabled, cfg.plugins.options)
        classes = load_plugin_classes(cfg.plugins.enabled)
        cognition_clock, tick_clock = self._clocks()
        self.cognition = Cognition(cfg, [c.name for c in classes], self.mailbox, self.state_dir, self.device,
                                   telemetry=self.telemetry.latest, **cognition_clock)
        stack.callback(self.cognition.save_trust)
        hosts = [self._host(c()) for c in classes]
        stack.callback(self._close_hosts, hosts)
        self.table = SensorTable(cfg.ingest, self.mailbox, cfg.capacity)
        self.orch = Orchestrator(cfg, self.table, hosts, self.publisher, self.cognition, on_tick=self._on_tick,
                                 **tick_clock)
        self.tap = IngestTap(actx, self.runtime_dir)
        stack.callback(self.tap.close)
        self.ingest = IngestServer(actx, self._endpoints(cfg.ingest.endpoints), self.table,
                                   self.orch.notify_input, self.security, tap=self.tap)
        stack.callback(self.ingest.close)
        stack.push_async_callback(self._stop_tasks)
        self.report = StatusReport(
            lambda: self.cfg, str(self.device), self.runtime_dir, self.state_dir, self.orch, self.cognition,
            self.table, self.ingest, self.publisher, self.security, self.mailbox, self.control, self.telemetry,
            capability_report(str(self.device), jtop_socket=cfg.telemetry.jtop_socket), lambda: self.last_reload)
        self._register_commands()
        self._open_views(stack)
        self._install_signals(stack)
        return hosts

    def _open_control_and_results(self, stack: contextlib.AsyncExitStack) -> zmq.asyncio.Context:
        """The ZeroMQ context, edge security, the control socket and the results publisher."""
        cfg = self.cfg
        actx = zmq.asyncio.Context()
        stack.callback(actx.destroy, linger=0)
        self.security = EdgeSecurity(actx, load_keys(cfg), max_peers=cfg.capacity.max_tcp_peers)
        stack.callback(self.security.close)
        self.control = ControlServer(actx, expand_endpoint(cfg.control.endpoint, self.runtime_dir),
                                     cfg.control.socket_mode, tcp_endpoint=cfg.control.tcp_endpoint,
                                     security=self.security, max_parts=cfg.capacity.max_message_parts,
                                     max_request_bytes=cfg.capacity.max_request_bytes,
                                     rcvhwm=receive_hwm(cfg.capacity, cfg.capacity.max_request_bytes))
        stack.callback(self.control.close)
        self.publisher = ResultPublisher(zmq.Context.shadow(actx.underlying), self._endpoints(cfg.results.endpoints),
                                         cfg.results.sndhwm, self.security)
        stack.callback(self.publisher.close)
        return actx

    def _open_views(self, stack: contextlib.AsyncExitStack) -> None:
        """Prometheus /metrics and the Foxglove live view (each only when its `listen` is set): readers
        of the status document and of the tap/results sockets, off the tick's path."""
        loop = asyncio.get_running_loop()
        self.metrics = MetricsServer(self.cfg.metrics.listen, loop, self.report.status,
                                     lambda: {"duration": self.orch.tick_ms, "lateness": self.orch.lateness_ms})
        stack.callback(self.metrics.close)
        self.foxglove = FoxgloveView(self.cfg.foxglove.listen, self.tap.endpoint, self.publisher.endpoints[0],
                                     lambda: call_on_loop(loop, self.report.status))
        stack.callback(self.foxglove.close)

    def _prepare_dirs(self) -> None:
        private_dir(self.runtime_dir, "runtime dir")  # UnsafeDirectory (a ConfigError): exit 2, saying why
        try:
            private_dir(self.state_dir, "state dir")
        except OSError as exc:  # run without persistence rather than not at all; status says so
            log.error("state dir %s unusable: %s", self.state_dir, exc)
        control = self.runtime_dir / "control.sock"
        if control.exists():
            if _daemon_answers(f"ipc://{control}"):
                raise AlreadyRunning(f"another sage-runtime is running on {control}")
            self._remove_socket_files()

    def _endpoints(self, eps: list[str]) -> list[str]:
        return [expand_endpoint(ep, self.runtime_dir) for ep in eps]

    def _install_signals(self, stack: contextlib.AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                             (signal.SIGHUP, self._reload_from_signal)):
            loop.add_signal_handler(sig, handler)
            stack.callback(loop.remove_signal_handler, sig)

    # ---------------------------------------------------------------- start, ready, wait

    def _task(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    async def _start(self, stack: contextlib.AsyncExitStack, hosts: list[PluginHost]) -> None:
        """Serve control while plugins set up and warm, then take input and tick."""
        log.info("sage-runtime %s starting: device=%s torch=%s threads=%d runtime_dir=%s state_dir=%s",
                 __version__, self.device, torch.__version__, torch.get_num_threads(), self.runtime_dir,
                 self.state_dir)
        if self.demo is None and self.replay is None:
            log.info("%s", feed_hint(self.ingest.endpoints))
        self._task("control", self.control.run())
        self._task("security", self.security.run())
        await self._warmup(hosts)
        # Start-up objects (torch, weights, plugins) go to the permanent generation, so a full
        # collection later walks only what the loop allocates: ~280 ms -> ~0 ms measured.
        gc.collect()
        gc.freeze()
        self._task("tap", self.tap.run())
        await self._open_fleet(stack)
        if self.replay is not None:  # the recording is the input; the daemon exits when it ends
            self._tick_task = self._task("replay", self.replay.run(self.ingest.handle, self.orch, self.publisher))
        else:
            self._task("ingest", self.ingest.run())
            self._tick_task = self._task("tick", self.orch.run())
        self._task("trust", self._save_trust_periodically())
        if self.demo is not None:
            sources = self.demo.DemoSources(self.ingest.endpoints[0], rate_hz=self.cfg.demo.rate_hz)
            sources.start()
            stack.callback(sources.stop)

    async def _open_fleet(self, stack: contextlib.AsyncExitStack) -> None:
        """The Zenoh fleet edge when `zenoh.enabled` (the `zenoh` extra): a results tap, remote
        ingest through the ingest edge, control queryables. Closed first, before ingest stops."""
        if not self.cfg.zenoh.enabled:
            return
        from sage_runtime.edges.zenoh_bridge import ZenohBridge

        bridge = ZenohBridge(self.cfg.zenoh, max_message_bytes=self.cfg.ingest.max_message_bytes,
                             ingest=self.ingest.handle, on_input=self.orch.notify_input,
                             control=self.control.answer, status=self.report.status)
        self.report.fleet = await stack.enter_async_context(bridge)
        self.publisher.add_tap(bridge.publish)

    async def _warmup(self, hosts: list[PluginHost]) -> None:
        """Every plugin's setup and warmup at once, each on its own host thread (a worker
        process's start is seconds of imports)."""
        await asyncio.gather(*(self._warmup_one(host) for host in hosts))

    async def _warmup_one(self, host: PluginHost) -> None:
        pdir = self.state_dir / "plugins" / host.name
        try:
            pdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("plugin %s state dir %s unusable: %s", host.name, pdir, exc)
        ctx = PluginContext(self.device, self.plugin_options[host.name], pdir,
                            logging.getLogger(f"sage.plugin.{host.name}"))
        try:
            await asyncio.wrap_future(host.setup_and_warmup(ctx))
        except Exception as exc:  # noqa: BLE001 - any setup failure means this plugin set cannot run
            raise PluginLoadError(f"plugin {host.name}: setup failed: {type(exc).__name__}: {exc}") from exc

    async def _wait(self) -> None:
        """READY after the first full tick; then until stop is requested or the tick loop fails."""
        tick = self._tick_task
        first = asyncio.create_task(self.orch.first_full_tick.wait())
        stop = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({first, stop, tick}, return_when=asyncio.FIRST_COMPLETED)
            if tick.done():
                tick.result()  # surfaces the loop's exception
            if first.done():
                self.notifier.ready(self.report.line())
                log.info("ready: ingest %s; results %s; control %s", ", ".join(self.ingest.endpoints),
                         ", ".join(self.publisher.endpoints), self.control.endpoint)
            await asyncio.wait({stop, tick}, return_when=asyncio.FIRST_COMPLETED)
            if tick.done() and not self._stopping.is_set():
                tick.result()
        finally:
            first.cancel()
            stop.cancel()

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stopping")
            self.notifier.stopping()
            self._stopping.set()

    # ---------------------------------------------------------------- teardown (registered in _build)

    async def _stop_tasks(self) -> None:
        """Let the tick in progress finish (bounded), then cancel every task."""
        self._stop_t0 = time.monotonic()
        self.orch.stop()
        tick = getattr(self, "_tick_task", None)
        if tick is not None and not tick.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(tick), timeout=STOP_TIMEOUT_S / 2)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _close_hosts(self, hosts: list[PluginHost]) -> None:
        budget = max(0.1, STOP_TIMEOUT_S - (time.monotonic() - (self._stop_t0 or time.monotonic())))
        for host in hosts:
            host.close(timeout_s=budget / max(len(hosts), 1))

    def _remove_socket_files(self) -> None:
        for name in SOCKET_FILES:
            with contextlib.suppress(FileNotFoundError):
                (self.runtime_dir / name).unlink()

    def _stopped(self) -> None:
        if self._stop_t0:
            log.info("stopped in %.2f s", time.monotonic() - self._stop_t0)

    async def _save_trust_periodically(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.cfg.cognition.trust_save_interval_s)
            await loop.run_in_executor(self.compute, self.cognition.save_trust)

    # ---------------------------------------------------------------- systemd

    def _on_tick(self) -> None:
        now = time.monotonic()
        interval = self.notifier.watchdog_interval_s
        if interval is not None and now - self._last_watchdog >= interval / 2:
            self.notifier.watchdog()
            self._last_watchdog = now
        if self.notifier.enabled and now - self._last_status >= 1.0:
            self.notifier.send_status(self.report.line())
            self._last_status = now

    # ---------------------------------------------------------------- reload

    def _reload_from_signal(self) -> None:
        report = self.reload()
        log.info("reload (SIGHUP): %s", report)

    def _read_config(self) -> SageConfig:
        """The config file as the CLI reads it (demo overlay included), its plugins resolved and
        their options validated; ConfigError when any of it is wrong."""
        new = load_config(self.config_path)
        if self.demo is not None:
            new = self.demo.demo_overlay(new)
        check_plugins(new.plugins.enabled, new.plugins.options)
        return new

    def reload(self) -> dict[str, Any]:
        """Re-read the config; apply what can change live, report the rest; keep the old on error."""
        try:
            new = self._read_config()
        except ConfigError as exc:
            self.last_reload = {"ok": False, "error": str(exc), "at": time.time()}
            log.error("reload refused, keeping the running config: %s", exc)
            return self.last_reload
        live, restart = split_reload(self.cfg, new)
        merged, fresh = self.cfg.model_dump(), new.model_dump()
        for key in live:
            section, _, name = key.partition(".")
            if name:
                merged[section][name] = fresh[section][name]
            else:
                merged[section] = fresh[section]
        applied = SageConfig.model_validate(merged)
        self.cfg = applied
        self.orch.apply_config(applied)
        logging.getLogger().setLevel(applied.runtime.log_level.upper())
        self.last_reload = {"ok": True, "applied": live, "needs_restart": restart, "at": time.time()}
        return self.last_reload

    # ---------------------------------------------------------------- control commands

    def _register_commands(self) -> None:
        c = self.control
        c.register("status", lambda args: self.report.status())
        c.register("stats", lambda args: self.report.stats())
        c.register("config", lambda args: self.cfg.model_dump(mode="json"))
        c.register("plugins", lambda args: self.orch.plugins_summary())
        c.register("reload", lambda args: self.reload())
        c.register("pause", lambda args: self._set_paused(args, True))
        c.register("resume", lambda args: self._set_paused(args, False))
        c.register("ping", lambda args: {"pong": True, "pid": os.getpid()})
        c.register("tap", lambda args: self.tap.stats())
        for name, handler in cognition_commands(self.cognition, self.publisher.state).items():
            c.register(name, handler)

    def _set_paused(self, args: dict[str, Any], paused: bool) -> dict[str, Any]:
        name = args.get("plugin")
        host = self.orch.hosts.get(name) if isinstance(name, str) else None
        if host is None:
            raise CommandError("not_found", f"no plugin {name!r}; loaded: {', '.join(self.orch.hosts) or 'none'}")
        host.paused = paused
        if not paused:
            host.breaker_until = 0.0
            host.consecutive_failures = 0
        return {"plugin": name, "status": host.health()}


def _daemon_answers(endpoint: str, timeout_ms: int = 300) -> bool:
    from sage_runtime.wire import encode_request

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(encode_request("ping"))
        return bool(sock.poll(timeout_ms))
    finally:
        sock.close(linger=0)


def serve(cfg: SageConfig, config_path: str | None, *, demo: Any = None, replay: Any = None) -> int:
    """Run the daemon until SIGTERM/SIGINT. Typed failures propagate (cli.py maps them to codes)."""
    setup_logging(cfg.runtime.log_level)
    bound_malloc()
    soft, _ = raise_nofile()
    if soft < MIN_NOFILE:
        # libzmq aborts when an ipc accept meets EMFILE: a burst of TCP connections that ZAP has not
        # shed yet (1,100 at once, on a loaded box) can take the daemon to a limit this low.
        log.warning("file descriptor limit is %d: a flood of connections can abort the daemon; give it "
                    "LimitNOFILE=65536 (the unit does) or ulimit -n %d", soft, MIN_NOFILE)
    if cfg.runtime.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(Daemon(cfg, config_path, demo=demo, replay=replay).run())
