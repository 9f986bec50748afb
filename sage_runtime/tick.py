"""The tick loop: take frames, score and plan, run plugins under budget, publish.

Ticks follow absolute deadlines (`start + k * period`), so lateness never accumulates into drift.
With `wake_on_input` a frame arriving between deadlines starts a tick at once (at most
`max_rate_hz`), which keeps frame-to-result latency near one hop; the periodic ticks still run so
state, ATP and the watchdog advance when nothing arrives. Tensor compute never runs on the event
loop: cognition runs on the compute thread, each plugin on its own thread (plugin_host).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

from sage_runtime.cognition.plan import Cognition, PluginView, TickPlan
from sage_runtime.config import SageConfig
from sage_runtime.edges.ingest import SensorTable
from sage_runtime.plugin.contract import PluginInputs
from sage_runtime.records import Frame
from sage_runtime.metrics import LatencyWindow, Stages
from sage_runtime.plugin.host import PluginHost, release_after_hangs
from sage_runtime.edges.publish import ResultPublisher

log = logging.getLogger("sage.tick")

#: A tick this long is a stall (counted in status as tick.stalls_over_100ms), whatever the budget.
STALL_MS = 100.0

#: What a plugin is offered in a tick: the newest frame per sensor, and the fifo backlog per sensor.
Offer = tuple[dict[str, Frame], dict[str, list[Frame]]]


class Orchestrator:
    def __init__(self, cfg: SageConfig, table: SensorTable, hosts: list[PluginHost], publisher: ResultPublisher,
                 cognition: Cognition, compute: concurrent.futures.ThreadPoolExecutor,
                 on_tick: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.table = table
        self.hosts = {h.name: h for h in hosts}
        self.publisher = publisher
        self.cognition = cognition
        self.compute = compute
        self.on_tick = on_tick
        self.stages = Stages()
        self.tick_ms = LatencyWindow(4096)
        self.lateness_ms = LatencyWindow(4096)
        self.tick_count = 0
        self.overruns = 0
        self.stalls = 0
        self.missed_periods = 0
        self.input_ticks = 0
        self._input = asyncio.Event()
        self._stop = asyncio.Event()
        self._misses: collections.deque[bool] = collections.deque(maxlen=cfg.tick.miss_window)
        self.first_full_tick = asyncio.Event()
        self.started = time.monotonic()
        # Requests outlive a tick that does not serve them: fifo frames a plugin was offered but not
        # run for wait here (copied out of the mailbox) until it runs; and since when each plugin
        # has wanted to run without being scheduled, which cognition ranks by.
        self._held: dict[str, dict[str, list[Frame]]] = {}
        self._held_dropped: collections.Counter[str] = collections.Counter()
        self._waiting_since: dict[str, float] = {}

    # ---------------------------------------------------------------- control from outside

    def notify_input(self) -> None:
        self._input.set()

    def stop(self) -> None:
        self._stop.set()

    def apply_config(self, cfg: SageConfig) -> None:
        self.cfg = cfg
        for host in self.hosts.values():
            host.breaker_failures = cfg.plugins.breaker_failures
            host.breaker_cooldown_s = cfg.plugins.breaker_cooldown_s

    @property
    def rate_hz(self) -> float:
        return self.cognition.tick_rate_hz(self.cfg.tick.rate_hz)

    def deadline_miss_rate(self) -> float:
        """Share of the last `miss_window` ticks that overran; ticks before start count as met, so
        one slow first tick is not a 100 % miss rate."""
        return sum(self._misses) / (self._misses.maxlen or 1)

    # ---------------------------------------------------------------- the loop

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate_hz
        next_deadline = loop.time()
        last_tick = 0.0
        while not self._stop.is_set():
            now = loop.time()
            wait = next_deadline - now
            if wait > 0:
                if self.cfg.tick.wake_on_input:
                    # Never start input ticks closer together than 1/max_rate_hz.
                    earliest = last_tick + 1.0 / self.cfg.tick.max_rate_hz
                    try:
                        if earliest > now:
                            await asyncio.sleep(min(earliest - now, wait))
                        if loop.time() < next_deadline:
                            await asyncio.wait_for(self._input.wait(), timeout=next_deadline - loop.time())
                    except asyncio.TimeoutError:
                        pass
                else:
                    await asyncio.sleep(wait)
            if self._stop.is_set():
                break
            start = loop.time()
            # Woken without input means the timer fired; event-loop timers may fire up to a
            # millisecond early, which must not turn into a burst of empty "input" ticks.
            periodic = start >= next_deadline or not self._input.is_set()
            if periodic:
                self.lateness_ms.record(max(start - next_deadline, 0.0) * 1e3)
            else:
                self.input_ticks += 1
            self._input.clear()
            await self.tick(period)
            last_tick = start
            if periodic:
                period = 1.0 / self.rate_hz
                next_deadline += period
                behind = loop.time() - next_deadline
                if behind > 0:
                    # Overran into the next period(s): count them and realign instead of bursting.
                    skipped = int(behind // period) + 1
                    self.missed_periods += skipped
                    next_deadline += skipped * period

    async def tick(self, period_s: float) -> None:
        t0 = time.perf_counter()
        self.tick_count += 1
        tick_no = self.tick_count
        frames, leases = self.table.take()
        t1 = time.perf_counter()
        self.stages.record("ingest", (t1 - t0) * 1e3)
        budget_ms = period_s * 1e3 * self.cfg.tick.plugin_share
        deadline_ns = time.perf_counter_ns() + int(budget_ms * 1e6)
        plan: TickPlan | None = None
        try:
            now = time.monotonic()
            available = [host for host in self.hosts.values() if host.available(now)]
            offered: dict[str, Offer] = {}  # every plugin's input, available or not: what is not served is held
            for host in self.hosts.values():
                if (got := self._inputs_for(host, frames)) is not None:
                    offered[host.name] = got
            wanting: dict[str, Offer] = {}
            for host in available:
                got = offered.get(host.name)
                if got is None and self._count(host, "pending_input") > 0:
                    got = ({}, {})  # work the plugin queued itself in earlier ticks
                if got is not None:
                    wanting[host.name] = got
            pending = {host.name: self._count(host, "pending_consolidation") for host in available}
            views = {name: PluginView(self.hosts[name].cost.ms, tuple(latest),
                                      waiting_s=now - self._waiting_since.get(name, now))
                     for name, (latest, _) in wanting.items()}
            sensors = {sid: (s.modality, s.expected_hz) for sid in frames
                       if (s := self.table.sensors.get(sid)) is not None}
            args = (tick_no, frames, views, sensors, budget_ms, period_s, self.deadline_miss_rate(), pending)
            if frames or views:
                plan = await asyncio.get_running_loop().run_in_executor(self.compute, self.cognition.plan, *args)
            else:
                # Nothing arrived: only the pure-logic bookkeeping runs (recharge, state), no tensor
                # work, so it stays on the loop and an idle daemon skips the thread hop.
                plan = self.cognition.plan(*args)
            for stage, ms in plan.timings_ms.items():
                self.stages.record(stage, ms)
            for transition in plan.transitions:
                self.publisher.state(transition)
            upstream: dict[str, dict[str, Any]] = {}
            ts_ns = time.time_ns()
            served: set[str] = set()
            for name in plan.order:
                host = self.hosts[name]
                atp = plan.allocation[name]
                if not host.available(time.monotonic()):
                    continue
                served.add(name)
                inputs = PluginInputs(tick=tick_no, state=plan.state, frames=wanting[name][0],
                                      backlog=wanting[name][1], salience=plan.salience, fused=plan.fused,
                                      upstream=upstream)
                result = await host.run(inputs, atp_ms=atp, deadline_ns=deadline_ns,
                                        grace_ms=self.cfg.tick.hang_grace_ms)
                self.stages.record(f"plugin:{name}", result.latency_ms)
                self.cognition.settle(name, atp, result)
                if result.halt != "error":
                    upstream[name] = result.outputs
                tp = time.perf_counter()
                self.publisher.result(result, tick=tick_no, ts_ns=ts_ns, state=plan.state,
                                      inputs={s: f.seq for s, f in inputs.frames.items()})
                self.stages.record("publish", (time.perf_counter() - tp) * 1e3)
            self._hold_unserved(offered, wanting, served, now)
            await self._offline_work(plan)
        finally:
            self.cognition.release_unused()
            release_after_hangs(leases + (plan.leases if plan is not None else []), self.hosts.values())
        elapsed_ms = (time.perf_counter() - t0) * 1e3
        self.tick_ms.record(elapsed_ms)
        missed = elapsed_ms > period_s * 1e3
        self._misses.append(missed)
        if missed:
            self.overruns += 1
        if elapsed_ms > STALL_MS:
            self.stalls += 1
        if self.on_tick is not None:
            self.on_tick()
        if not self.first_full_tick.is_set():
            self.first_full_tick.set()

    def _inputs_for(self, host: PluginHost, frames: dict[str, list[Frame]]) -> Offer | None:
        """The newest accepted frame per sensor (of those `plugins.inputs` routes to it), plus the
        in-order backlog for fifo sensors, behind the frames held for this plugin from earlier ticks."""
        latest: dict[str, Frame] = {}
        backlog: dict[str, list[Frame]] = {}
        routed = self.cfg.plugins.inputs.get(host.name)
        held = self._held.get(host.name, {})
        for sensor in dict.fromkeys([*held, *frames]):
            if routed is not None and sensor not in routed:
                continue
            mine = held.get(sensor, []) + [f for f in frames.get(sensor, ()) if host.plugin.accepts(f)]
            if mine:
                latest[sensor] = mine[-1]
                if len(mine) > 1:
                    backlog[sensor] = mine
        return (latest, backlog) if latest else None

    def _hold_unserved(self, offered: dict[str, Offer], wanting: dict[str, Offer], served: set[str],
                       now: float) -> None:
        """Keep the fifo frames of every plugin that was offered input but not run, up to each
        sensor's fifo depth (older ones are dropped and counted), and start its waiting clock."""
        for name in served:
            self._held.pop(name, None)
            self._waiting_since.pop(name, None)
        for name in wanting.keys() - served:
            self._waiting_since.setdefault(name, now)
        for name, (latest, backlog) in offered.items():
            if name in served:
                continue
            before = {id(f) for frames in self._held.get(name, {}).values() for f in frames}
            kept = {}
            for sensor, newest in latest.items():
                spec = self.table.sensors.get(sensor)
                if spec is None or spec.policy != "fifo":
                    continue  # `latest` sensors: the next frame supersedes this one anyway
                frames = [f if id(f) in before else f.detached() for f in backlog.get(sensor) or [newest]]
                self._held_dropped[name] += max(len(frames) - spec.depth, 0)
                kept[sensor] = frames[-spec.depth:]
            if kept:
                self._held[name] = kept
            else:
                self._held.pop(name, None)

    async def _offline_work(self, plan: TickPlan) -> None:
        """DREAM/REST consolidation with whatever ATP the plan set aside for it."""
        for name, budget_ms in plan.offline.items():
            host = self.hosts.get(name)
            if host is None or not host.available(time.monotonic()):
                continue
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            try:
                summary = await asyncio.wait_for(
                    asyncio.wrap_future(host.executor.submit(host.plugin.consolidate, budget_ms), loop=loop),
                    timeout=budget_ms / 1e3 + self.cfg.tick.hang_grace_ms / 1e3)
            except Exception as exc:  # noqa: BLE001 - offline work must not stop the tick
                log.warning("consolidation in %s failed: %s", name, exc)
                summary = {"error": str(exc)}
            spent = (time.perf_counter() - t0) * 1e3
            self.cognition.settle_offline(name, spent, summary)

    @staticmethod
    def _count(host: PluginHost, hook: str) -> int:
        """A plugin's pending_input / pending_consolidation; a hook that raises counts as 0."""
        try:
            return int(getattr(host.plugin, hook)())
        except Exception as exc:  # noqa: BLE001 - a faulty plugin must not stop the tick
            log.warning("%s of %s failed: %s", hook, host.name, exc)
            return 0

    # ---------------------------------------------------------------- reporting

    def tick_summary(self) -> dict[str, Any]:
        s = self.tick_ms.summary()
        late = self.lateness_ms.summary()
        return {
            "rate_hz": round(self.rate_hz, 3), "count": self.tick_count, "input_ticks": self.input_ticks,
            "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "max_ms": s["max_ms"],
            "budget_ms": round(1e3 / self.rate_hz, 3), "overruns": self.overruns,
            "stalls_over_100ms": self.stalls,
            "missed_periods": self.missed_periods, "lateness_p50_ms": late["p50_ms"],
            "lateness_p99_ms": late["p99_ms"], "deadline_miss_rate": round(self.deadline_miss_rate(), 4),
        }

    def plugins_summary(self) -> dict[str, Any]:
        """Each plugin's host summary, plus the frames held for its next run and those it lost
        because more arrived than its sensors' fifo depth while it was not scheduled."""
        now = time.monotonic()
        return {name: {**host.summary(), "held_frames": sum(map(len, self._held.get(name, {}).values())),
                       "held_dropped": self._held_dropped[name],
                       "waiting_s": round(now - self._waiting_since.get(name, now), 3)}
                for name, host in self.hosts.items()}

