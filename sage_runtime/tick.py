"""The tick loop: take frames, score and plan, grant ATP to plugin jobs, publish finished results.

Ticks follow absolute deadlines (`start + k * period`), so lateness never accumulates into drift.
With `wake_on_input` a frame arriving between deadlines starts a tick at once (at most
`max_rate_hz`), which keeps frame-to-result latency near one hop; the periodic ticks still run so
state, ATP and the watchdog advance when nothing arrives. A job that ends is published by the
event loop as soon as its plugin thread hands it over, not in the next tick (a plugin still
holding input then asks for a tick, for its next grant).

The tick never awaits plugin compute (DESIGN.md 7a): plugins refine on their own threads
(`plugin.host`) in jobs that outlive a tick; the tick hands them new input (frames copied out
of the mailbox, so no lease outlives the tick), credits the allocator's grants to their ATP
accounts, settles what they measured against the ledger, and publishes the jobs that ended.
Cognition (fusion, selection, allocation) runs inline in the tick.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sage_runtime.clock import SYSTEM, Clock
from sage_runtime.cognition.plan import Cognition, PluginView, TickPlan
from sage_runtime.config import SageConfig
from sage_runtime.edges.ingest import SensorTable
from sage_runtime.edges.publish import ResultPublisher
from sage_runtime.mailbox import Lease
from sage_runtime.metrics import LatencyWindow, Stages
from sage_runtime.plugin.contract import PluginInputs
from sage_runtime.plugin.host import PluginHost, newest_ts_ns
from sage_runtime.plugin.priority import tick_priority
from sage_runtime.records import Frame

log = logging.getLogger("sage.tick")

#: A tick this long is a stall (counted in status as tick.stalls_over_100ms), whatever the budget.
STALL_MS = 100.0

#: What a plugin is offered in a tick: the newest frame per sensor, and the fifo backlog per sensor.
Offer = tuple[dict[str, Frame], dict[str, list[Frame]]]


@dataclass
class TickBooks:
    """Counters of the loop itself, for status."""

    count: int = 0
    overruns: int = 0
    #: Ticks longer than 1.5 periods (15 ms at 100 Hz): with `count`, the share over p99.9's bound.
    over_1_5x: int = 0
    stalls: int = 0
    missed_periods: int = 0
    input_ticks: int = 0


class Orchestrator:
    def __init__(self, cfg: SageConfig, table: SensorTable, hosts: list[PluginHost], publisher: ResultPublisher,
                 cognition: Cognition, on_tick: Callable[[], None] | None = None, *, clock: Clock = SYSTEM,
                 cores: int | None = None) -> None:
        self.cfg = cfg
        self.table = table
        self.hosts = {h.name: h for h in hosts}
        self.publisher = publisher
        self.cognition = cognition
        self.on_tick = on_tick
        # What `tick` reads (deadlines, ages, stamps): the machine's clock, or a replay's virtual
        # one (sage_runtime/replay.py drives `tick` itself then). `cores` sizes the plugins' budget.
        self.clock = clock
        self.cores = cores or os.cpu_count() or 1
        self.stages = Stages()
        self.tick_ms = LatencyWindow(4096)
        self.lateness_ms = LatencyWindow(4096)
        self.books = TickBooks()
        self.priority = "default"
        # The loop's wait (`_wait`): one future resolved by the period's timer, by input (after
        # 1/max_rate_hz) or by stop; cheaper per tick than asyncio.wait_for on an Event.
        self._pending = False  # input arrived since the last tick started
        self._waiter: asyncio.Future[None] | None = None
        self._earliest = 0.0   # loop time before which input does not start a tick
        self._hold: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._misses: collections.deque[bool] = collections.deque(maxlen=cfg.tick.miss_window)
        self._missed = 0  # True entries in _misses, kept as they come and go (no sum per tick)
        self.first_full_tick = asyncio.Event()
        # The newest outputs of every plugin (memory reads the vision embedding from here), and
        # since when each plugin has wanted ATP without being granted any (cognition ranks by it).
        self._upstream: dict[str, dict[str, Any]] = {}
        self._waiting_since: dict[str, float] = {}
        self._offline: dict[str, concurrent.futures.Future[Any]] = {}
        for host in hosts:
            host.on_finished = lambda host=host: self._job_finished(host)

    # ---------------------------------------------------------------- control from outside

    def notify_input(self) -> None:
        """(Event loop.) Input arrived: with wake_on_input a tick starts now, or at 1/max_rate_hz
        after the last one."""
        self._pending = True
        waiter = self._waiter
        if waiter is None or waiter.done() or not self.cfg.tick.wake_on_input or self._loop is None:
            return
        if self._loop.time() >= self._earliest:
            waiter.set_result(None)
        elif self._hold is None:
            self._hold = self._loop.call_at(self._earliest, self._wake)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _job_finished(self, host: PluginHost) -> None:
        """Called on a plugin thread when a job ends: the event loop publishes it at once, not
        in the next tick (the replay drives `tick` itself and sets its own on_finished)."""
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._publish_now, host)
            except RuntimeError:  # the loop is closing: the daemon is stopping
                pass

    def _publish_now(self, host: PluginHost) -> None:
        """(Event loop, between ticks.) A stopping daemon publishes nothing more, as before."""
        if not self._stop.is_set():
            self._publish_host(host)

    def stop(self) -> None:
        self._stop.set()
        self._wake()

    def apply_config(self, cfg: SageConfig) -> None:
        self.cfg = cfg
        for host in self.hosts.values():
            host.breaker_failures = cfg.plugins.breaker_failures
            host.breaker_cooldown_s = cfg.plugins.breaker_cooldown_s

    @property
    def rate_hz(self) -> float:
        return self.cognition.tick_rate_hz(self.cfg.tick.rate_hz)

    @property
    def tick_count(self) -> int:
        return self.books.count

    def deadline_miss_rate(self) -> float:
        """Share of the last `miss_window` ticks that overran; ticks before start count as met, so
        one slow first tick is not a 100 % miss rate."""
        return self._missed / (self._misses.maxlen or 1)

    # ---------------------------------------------------------------- the loop

    async def run(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.priority = tick_priority()
        period = 1.0 / self.rate_hz
        next_deadline = loop.time()
        last_tick = 0.0
        while not self._stop.is_set():
            await self._wait(next_deadline, last_tick)
            if self._stop.is_set():
                break
            start = loop.time()
            # Woken without input means the timer fired; event-loop timers may fire up to a
            # millisecond early, which must not turn into a burst of empty "input" ticks.
            periodic = start >= next_deadline or not self._pending or not self.cfg.tick.wake_on_input
            if periodic:
                self.lateness_ms.record(max(start - next_deadline, 0.0) * 1e3)
            else:
                self.books.input_ticks += 1
            self._pending = False
            await self.tick(period)
            last_tick = start
            if periodic:
                period = 1.0 / self.rate_hz
                next_deadline += period
                behind = loop.time() - next_deadline
                if behind > 0:
                    # Overran into the next period(s): count them and realign instead of bursting.
                    skipped = int(behind // period) + 1
                    self.books.missed_periods += skipped
                    next_deadline += skipped * period

    async def _wait(self, next_deadline: float, last_tick: float) -> None:
        """Until the next periodic deadline, or (wake_on_input) the next input after 1/max_rate_hz."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if next_deadline <= now:
            return
        wake_on_input = self.cfg.tick.wake_on_input
        self._earliest = last_tick + 1.0 / self.cfg.tick.max_rate_hz if wake_on_input else math.inf
        if wake_on_input and self._pending and now >= self._earliest:
            return  # input arrived during the last tick
        waiter = self._waiter = loop.create_future()
        timer = loop.call_at(next_deadline, self._wake)
        if wake_on_input and self._pending:
            self._hold = loop.call_at(self._earliest, self._wake)
        try:
            await waiter
        finally:
            timer.cancel()
            if self._hold is not None:
                self._hold.cancel()
                self._hold = None
            self._waiter = None

    async def tick(self, period_s: float) -> None:
        t0 = self.clock.monotonic()
        self.books.count += 1
        frames, leases = self.table.take()
        self.stages.record("ingest", (self.clock.monotonic() - t0) * 1e3)
        plan: TickPlan | None = None
        try:
            self._publish_finished()
            offers = {name: got for name, host in self.hosts.items()
                      if (got := self._inputs_for(host, frames))} if frames else {}
            plan = self._plan(frames, offers, period_s)
            for transition in plan.transitions:
                self.publisher.state(transition)
            self._dispatch(plan, offers)
            self._offline_work(plan)
            self._settle()
        finally:
            self._release(leases)
            if plan is not None:
                self._release(plan.leases)
        self._close_tick(t0, period_s)

    def _plan(self, frames: dict[str, list[Frame]], offers: dict[str, Offer], period_s: float) -> TickPlan:
        """Cognition's plan for this tick over the plugins that want ATP (a job runs or waits, or
        input arrived)."""
        now = self.clock.monotonic()
        views = {name: PluginView(host.cost.ms, tuple(offers[name][0]) if name in offers else (),
                                  waiting_s=now - self._waiting_since.get(name, now),
                                  requests=host.plugin.answers_requests)
                 for name, host in self.hosts.items()
                 if host.available(now) and (name in offers or host.wants_atp())}
        sensors = {sid: (s.modality, s.expected_hz) for sid in frames
                   if (s := self.table.sensors.get(sid)) is not None}
        # Plugin threads run beside the tick on every core, so one tick may grant up to the
        # plugins' share of every core's period (the ledger's pace bounds the sustained rate).
        wall_ms = period_s * 1e3 * self.cfg.tick.plugin_share * max(min(self.cores, len(self.hosts)), 1)
        pending = {name: self._count(host, "pending_consolidation") for name, host in self.hosts.items()
                   if host.available(now) and name not in self._offline}
        args = (self.books.count, frames, views, sensors, wall_ms, period_s, self.deadline_miss_rate(), pending)
        # Inline, not on a compute thread: cognition's tensor work is about a millisecond, and
        # the hop to another thread (which must win the GIL back from plugin threads) measured
        # tick p99 14.3 ms against 6.9 ms inline in the demo (loaded 2-core box).
        plan = self.cognition.plan(*args)
        for stage, ms in plan.timings_ms.items():
            self.stages.record(stage, ms)
        for name in views:
            # A plugin waits until a grant lets it make progress: crumbs below its next unit of
            # work (measured: vision, 4th of 4 with max_active_plugins 3, got ~1 ATP per second
            # against a 23 ATP job start and published 6 results in a 60 s soak).
            if name in plan.allocation and self.hosts[name].affords_next_unit(plan.allocation[name]):
                self._waiting_since.pop(name, None)
            else:
                self._waiting_since.setdefault(name, now)
        return plan

    def _dispatch(self, plan: TickPlan, offers: dict[str, Offer]) -> None:
        """New input to each plugin (copied out of the mailbox, with this tick's context), and
        each plugin's grant into its ATP account."""
        # Grants first: a plugin thread woken by its input then finds the credit to start on
        # (the other order woke it twice, once to find no credit, while the tick held the GIL).
        for name, granted in plan.allocation.items():
            self.hosts[name].deposit(granted)
        fused = plan.fused.clone() if plan.fused is not None and offers else None
        for name, (latest, backlog) in offers.items():
            inputs = PluginInputs(tick=self.books.count, state=plan.state,
                                  frames={s: f.detached() for s, f in latest.items()},
                                  backlog={s: [f.detached() for f in got] for s, got in backlog.items()},
                                  salience=plan.salience, fused=fused, upstream=dict(self._upstream))
            self.hosts[name].submit(inputs)

    def _publish_finished(self) -> None:
        """Publish every job that ended and was not published yet (see `_publish_host`)."""
        for host in self.hosts.values():
            host.check_hang(self.cfg.tick.hang_grace_ms)
            self._publish_host(host)

    def _publish_host(self, host: PluginHost) -> None:
        """Publish the jobs of `host` that ended: from the tick, or (live daemon) from the event
        loop as soon as the plugin thread finished one; trust learns from each."""
        tp = self.clock.monotonic()
        finished = host.take_finished()
        if not finished:
            return
        state, name = self.cognition.state, host.name
        for done in finished:
            res = done.result
            self.cognition.record_result(name, res)
            if res.halt != "error":
                self._upstream[name] = res.outputs
            newest = newest_ts_ns(done.inputs)
            stamp = self.clock.time_ns()
            age_ms = (stamp - newest) / 1e6 if newest is not None else None
            # `tick`: the tick whose input the job answers (its newest), not the one publishing it.
            self.publisher.result(res, tick=done.inputs.tick or self.books.count, ts_ns=stamp, state=state,
                                  inputs={s: f.seq for s, f in done.inputs.frames.items()}, age_ms=age_ms)
            self.stages.record(f"plugin:{name}", res.latency_ms)
        self.stages.record("publish", (self.clock.monotonic() - tp) * 1e3)
        if self._waiter is not None and host.wants_atp():
            self.notify_input()  # between ticks: its held input needs the next grant

    def _settle(self) -> None:
        """What each plugin thread measured is debited against what it was granted; credit past
        the plugin's cap returns to the reservoir (docs/metabolic.md, "Credit"). A plugin that is
        unavailable or paused by trust keeps none: it would start a job on what is left."""
        for host in self.hosts.values():
            off = not host.available(self.clock.monotonic()) or self.cognition.trust.plugin_paused(host.name)
            keep = 0.0 if off else host.credit_cap()
            used, debit, returned = host.account.collect(keep)
            if used or debit or returned:
                self.cognition.settle_account(used, debit, returned)

    def _inputs_for(self, host: PluginHost, frames: dict[str, list[Frame]]) -> Offer | None:
        """The newest accepted frame per sensor (of those `plugins.inputs` routes to it), plus the
        in-order backlog of fifo sensors (even of one frame, so it queues behind earlier ones)."""
        latest: dict[str, Frame] = {}
        backlog: dict[str, list[Frame]] = {}
        routed = self.cfg.plugins.inputs.get(host.name)
        for sensor, got in frames.items():
            if routed is not None and sensor not in routed:
                continue
            mine = [f for f in got if host.plugin.accepts(f)]
            if mine:
                latest[sensor] = mine[-1]
                spec = self.table.sensors.get(sensor)
                if len(mine) > 1 or (spec is not None and spec.policy == "fifo"):
                    backlog[sensor] = mine  # a fifo sensor's frames queue for the plugin's next job
        return (latest, backlog) if latest else None

    def _offline_work(self, plan: TickPlan) -> None:
        """DREAM/REST consolidation on the plugin thread with the ATP the plan set aside; settled
        with its measured time in the tick after it returns, never awaited."""
        for name, fut in list(self._offline.items()) if self._offline else ():
            if fut.done():
                del self._offline[name]
                try:
                    spent, summary = fut.result()
                except Exception as exc:  # noqa: BLE001 - offline work must not stop the tick
                    log.warning("consolidation in %s failed: %s", name, exc)
                    spent, summary = 0.0, {"error": str(exc)}
                self.cognition.settle_offline(name, spent, summary)
        for name, budget_ms in plan.offline.items():
            host = self.hosts[name]

            def work(host: PluginHost = host, budget_ms: float = budget_ms) -> tuple[float, Any]:
                t0 = host.clock.monotonic_ns()  # wall time, or a replay's virtual lane
                try:
                    summary = host.plugin.consolidate(budget_ms)
                finally:
                    spent = (host.clock.monotonic_ns() - t0) / 1e6
                return spent, summary
            self._offline[name] = host.call(work)

    @staticmethod
    def _count(host: PluginHost, hook: str) -> int:
        """A plugin's pending_consolidation; a hook that raises counts as 0."""
        try:
            return int(getattr(host.plugin, hook)())
        except Exception as exc:  # noqa: BLE001 - a faulty plugin must not stop the tick
            log.warning("%s of %s failed: %s", hook, host.name, exc)
            return 0

    @staticmethod
    def _release(leases: list[Lease]) -> None:
        for lease in leases:
            lease.release()

    def _close_tick(self, t0: float, period_s: float) -> None:
        elapsed_ms = (self.clock.monotonic() - t0) * 1e3
        self.tick_ms.record(elapsed_ms)
        missed = elapsed_ms > period_s * 1e3
        if len(self._misses) == self._misses.maxlen:
            self._missed -= self._misses[0]
        self._misses.append(missed)
        self._missed += missed
        self.books.overruns += missed
        self.books.over_1_5x += elapsed_ms > 1.5 * period_s * 1e3
        self.books.stalls += elapsed_ms > STALL_MS
        if self.on_tick is not None:
            self.on_tick()
        if not self.first_full_tick.is_set():
            self.first_full_tick.set()

    # ---------------------------------------------------------------- reporting

    def tick_summary(self) -> dict[str, Any]:
        s = self.tick_ms.summary()
        late = self.lateness_ms.summary()
        b = self.books
        return {
            "rate_hz": round(self.rate_hz, 3), "count": b.count, "input_ticks": b.input_ticks,
            "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "p999_ms": self._p999(), "max_ms": s["max_ms"],
            "budget_ms": round(1e3 / self.rate_hz, 3), "overruns": b.overruns, "over_1_5x_budget": b.over_1_5x,
            "stalls_over_100ms": b.stalls,
            "missed_periods": b.missed_periods, "lateness_p50_ms": late["p50_ms"],
            "lateness_p99_ms": late["p99_ms"], "deadline_miss_rate": round(self.deadline_miss_rate(), 4),
            "priority": self.priority,
        }

    def health_reasons(self) -> list[str]:
        """Degraded while the tick's p99 (over its recent window) is past its period."""
        p99, budget = self.tick_ms.percentile(99), 1e3 / self.rate_hz
        if p99 is not None and self.tick_ms.count >= 100 and p99 > budget:
            return [f"tick p99 {p99:.1f} ms over its {budget:.1f} ms budget"]
        return []

    def _p999(self) -> float | None:
        value = self.tick_ms.percentile(99.9)
        return None if value is None else round(value, 4)

    def plugins_summary(self) -> dict[str, Any]:
        """Each plugin's host summary, plus how long it has wanted ATP without a grant."""
        now = self.clock.monotonic()
        return {name: {**host.summary(), "waiting_s": round(now - self._waiting_since.get(name, now), 3)}
                for name, host in self.hosts.items()}
