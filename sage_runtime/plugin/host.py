"""Where plugins run: one thread each, a step-cost estimate, a circuit breaker, and hang isolation.

The runner (irp.run_plugin) bounds a well-behaved plugin by quota and deadline between steps; a
step that never returns cannot be interrupted in Python, so the host abandons it after the
deadline plus a grace period, reports `halt: "error"`, and skips the plugin until its thread
comes back. The tick never waits on a hung plugin twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from sage_runtime.plugin.contract import IRPPlugin, PluginContext, PluginInputs
from sage_runtime.plugin.runner import StepCost, run_plugin
from sage_runtime.records import RunResult
from sage_runtime.mailbox import Lease
from sage_runtime.metrics import LatencyWindow

log = logging.getLogger("sage.plugins")


class PluginHost:
    """One plugin, its thread and its health."""

    def __init__(self, plugin: IRPPlugin, *, breaker_failures: int, breaker_cooldown_s: float) -> None:
        self.plugin = plugin
        self.name = plugin.name
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"plugin-{plugin.name}")
        self.cost = StepCost()
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self.latency = LatencyWindow(2048)
        self.runs = 0
        self.steps = 0  # refinement steps over all runs (sagectl top, /metrics)
        self.errors = 0
        self.hangs = 0
        self.consecutive_failures = 0
        self.breaker_until = 0.0
        self.paused = False
        self.last_halt: str | None = None
        self.last_error: str | None = None
        self.halts: dict[str, int] = {}
        self.atp_spent = 0.0
        self._busy: concurrent.futures.Future[Any] | None = None
        self._new_hang: concurrent.futures.Future[Any] | None = None

    # ---------------------------------------------------------------- lifecycle (compute thread)

    def _call(self, fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
        return self.executor.submit(fn, *args)

    def setup_and_warmup(self, ctx: PluginContext) -> concurrent.futures.Future[None]:
        def work() -> None:
            self.plugin.setup(ctx)
            t0 = time.perf_counter()
            self.plugin.warmup()
            # Measure a representative run so the first quota is based on a real step cost.
            run_plugin(self.plugin, self.plugin.sample_inputs(0), atp_ms=1e9, deadline_ns=time.perf_counter_ns()
                       + int(5e9), cost=self.cost)
            log.info("plugin %s warm: %.1f ms, step %.3f ms", self.name, (time.perf_counter() - t0) * 1e3,
                     self.cost.ms)
        return self._call(work)

    def close(self, timeout_s: float = 2.0) -> None:
        fut = self._call(self.plugin.close)
        try:
            fut.result(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - shutdown goes on
            log.warning("plugin %s close failed: %s", self.name, exc)
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- state

    def health(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        if self.paused:
            return "paused"
        if self._busy is not None and not self._busy.done():
            return "hung"
        if self.breaker_until > now:
            return "open"  # circuit breaker tripped, cooling down
        return "degraded" if self.consecutive_failures else "ok"

    def available(self, now: float) -> bool:
        if self._busy is not None:
            if not self._busy.done():
                return False
            self._busy = None
            log.info("plugin %s returned from its hang", self.name)
        return not self.paused and self.breaker_until <= now

    # ---------------------------------------------------------------- running

    async def run(self, inputs: PluginInputs, *, atp_ms: float, deadline_ns: int, grace_ms: float) -> RunResult:
        """Run on the plugin thread; give up waiting at deadline + grace."""
        loop = asyncio.get_running_loop()
        fut = self.executor.submit(run_plugin, self.plugin, inputs, atp_ms=atp_ms, deadline_ns=deadline_ns,
                                   cost=self.cost)
        wait_s = max(0.0, (deadline_ns - time.perf_counter_ns()) / 1e9) + grace_ms / 1e3
        t0 = time.perf_counter()
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(fut, loop=loop), timeout=wait_s)
        except asyncio.TimeoutError:
            self._busy = fut
            self._new_hang = fut
            self.hangs += 1
            spent = (time.perf_counter() - t0) * 1e3
            result = RunResult(self.name, "error", 0, None, [], {}, spent, spent, 0,
                               error=f"hung: no return {grace_ms:.0f} ms past its deadline")
        self._account(result)
        return result

    def take_new_hang(self) -> concurrent.futures.Future[Any] | None:
        """The run abandoned since the last call, if any: its thread may still read that tick's frames."""
        fut, self._new_hang = self._new_hang, None
        return fut

    def _account(self, result: RunResult) -> None:
        self.runs += 1
        self.steps += result.steps
        self.latency.record(result.latency_ms)
        self.atp_spent += result.atp_spent
        self.last_halt = result.halt
        self.halts[result.halt] = self.halts.get(result.halt, 0) + 1
        if result.halt == "error":
            self.errors += 1
            self.consecutive_failures += 1
            self.last_error = result.error
            log.warning("plugin %s error: %s", self.name, result.error)
            if self.consecutive_failures >= self.breaker_failures:
                self.breaker_until = time.monotonic() + self.breaker_cooldown_s
                log.warning("plugin %s circuit open for %.1f s after %d failures", self.name,
                            self.breaker_cooldown_s, self.consecutive_failures)
        else:
            self.consecutive_failures = 0

    def summary(self) -> dict[str, Any]:
        lat = self.latency.summary()
        return {
            "status": self.health(), "runs": self.runs, "steps": self.steps, "errors": self.errors, "hangs": self.hangs,
            "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "step_ms": round(self.cost.ms, 4),
            "last_halt": self.last_halt, "halts": dict(self.halts), "last_error": self.last_error,
            "atp_spent": round(self.atp_spent, 3), "consecutive_failures": self.consecutive_failures,
            "health_reasons": self._health_reasons(),
        }

    def _health_reasons(self) -> list[str]:
        try:
            return [str(r) for r in getattr(self.plugin, "health_reasons", list)()]
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must not break `sagectl status`
            return [f"health_reasons() failed: {type(exc).__name__}: {exc}"]


def release_after_hangs(leases: Iterable[Lease], hosts: Iterable[PluginHost]) -> None:
    """Release a tick's mailbox leases, or, when a plugin was abandoned in that tick, once the last
    such plugin's thread returns: until then it may still read the frames, and a released slot
    would be rewritten under it. Only that tick's leases wait, so a long hang holds one slot per
    sensor, not the whole ring."""
    leases = list(leases)
    hung = [fut for host in hosts if (fut := host.take_new_hang()) is not None]
    if not hung:
        for lease in leases:
            lease.release()
        return
    log.warning("holding %d frame lease(s) until %d hung plugin(s) return", len(leases), len(hung))
    remaining = [len(hung)]
    lock = threading.Lock()

    def returned(_: concurrent.futures.Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            for lease in leases:
                lease.release()  # thread-safe: takes the channel's lock
    for fut in hung:
        fut.add_done_callback(returned)
