"""Where plugins run: one thread each, serving refinement jobs that outlive a tick.

The tick never waits here. It `submit`s new input (the host applies the plugin's input policy:
`queue` finishes the running job first, `restart` and `warm` preempt it at its next step
boundary, `warm` starting the next job from its state), `deposit`s the ATP the allocator granted
into the plugin's account, and `take_finished` results to publish. The host thread starts a job
when the account covers the measured init cost, runs a step while it covers the measured step
cost (`StepCost`), and ends the job on the plugin's halting rule, max_steps, the job's ATP cap,
preemption, or its deadline (the input's maximum age). A step that never returns cannot be
interrupted in Python: the tick abandons it past the deadline plus a grace period (`check_hang`)
and skips the plugin until its thread comes back; jobs hold copies of their frames, never
mailbox leases, so an abandoned step pins nothing.

With `synchronous=True` (deterministic replay, sage_runtime/replay.py) there is no thread: the
caller runs the ready units in its own thread with `drain()`, on the host's injected `clock`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sage_runtime.clock import SYSTEM, Clock
from sage_runtime.plugin.account import PluginAccount
from sage_runtime.metrics import LatencyWindow
from sage_runtime.plugin.contract import IRPPlugin, PluginContext, PluginInputs
from sage_runtime.plugin.priority import ThreadSchedstat, host_thread_priority, lower_thread_priority
from sage_runtime.plugin.runner import Job, StepCost, advance, begin, failed, finish, next_halt, run_plugin
from sage_runtime.plugin.sensor_share import SensorShare, split_sensor
from sage_runtime.plugin.worker import RemotePlugin, WorkerDied
from sage_runtime.records import Frame, RunResult

log = logging.getLogger("sage.plugins")

INPUT_POLICIES = ("queue", "restart", "warm")
#: Credit a plugin may hold while it has a job: this many of its steps (docs/metabolic.md).
CREDIT_STEPS = 4.0
#: Steps of the warm-up's representative job: enough for the step estimate (an EWMA) to settle.
WARMUP_STEPS = 32
#: Frames kept per fifo sensor for a plugin's next job; older ones are dropped and counted.
MAX_BACKLOG = 64
#: ... and at most this many bytes of them: 64 texts of 4 MiB held for a busy plugin, once in its
#: pending input and again in its running job, took a daemon under a 1.5 GiB RLIMIT_AS to MemoryError.
MAX_BACKLOG_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class JobPolicy:
    """input_policy: what new input does to a running job; max_age_ms: a job's deadline, as the
    maximum age of its oldest frame; max_atp: cap on one job's spend (halt `quota`); nice: how
    far below the tick the plugin thread runs."""

    input_policy: str = "queue"
    max_age_ms: float = 250.0
    max_atp: float = math.inf
    nice: int = 10
    #: A one-sensor plugin's jobs among its sensors by salience, or in equal turns under the
    #: uniform allocator (so the baseline is uniform at both levels, plugins and sensors).
    sensor_share_uniform: bool = False


@dataclass(frozen=True)
class Finished:
    """A job's result and the inputs it served, for the publisher."""

    result: RunResult
    inputs: PluginInputs


def job_policy(cfg: Any, plugin: IRPPlugin) -> JobPolicy:
    """A plugin's JobPolicy from config (`plugins.jobs.<name>`, then `plugins` defaults), its
    input policy defaulting to the plugin's own `input_policy` attribute (else `queue`)."""
    section = cfg.plugins.jobs.get(plugin.name)
    policy = (section.input_policy if section is not None else None) or getattr(plugin, "input_policy", "queue")
    if policy not in INPUT_POLICIES:
        raise ValueError(f"plugin {plugin.name}: input_policy must be one of {INPUT_POLICIES}, not {policy!r}")
    max_age = section.max_age_ms if section is not None and section.max_age_ms else cfg.plugins.max_age_ms
    max_atp = section.max_atp if section is not None and section.max_atp else math.inf
    return JobPolicy(policy, max_age, max_atp, cfg.plugins.thread_nice,
                     sensor_share_uniform=cfg.attention.allocator == "uniform")


def merge_inputs(old: PluginInputs | None, new: PluginInputs) -> tuple[PluginInputs, int]:
    """New input joins input not yet served: newest frame per sensor, fifo backlogs in order (at
    most MAX_BACKLOG frames and MAX_BACKLOG_BYTES per sensor; returns how many older ones that
    dropped); context (state, fused, upstream) from `new`; salience per sensor from both, newest first."""
    if old is None:
        return new, 0
    frames = {**old.frames, **new.frames}
    backlog: dict[str, list[Frame]] = {}
    dropped = 0
    for sensor in frames:
        got = [*(old.backlog.get(sensor) or ([old.frames[sensor]] if sensor in old.frames else [])),
               *(new.backlog.get(sensor) or ([new.frames[sensor]] if sensor in new.frames else []))]
        if len(got) > 1 and (sensor in old.backlog or sensor in new.backlog):
            kept = _newest_within(got[-MAX_BACKLOG:], MAX_BACKLOG_BYTES)
            dropped += len(got) - len(kept)
            backlog[sensor] = kept
    salience = {**old.salience, **new.salience}  # a held frame keeps the salience it was scored with
    return PluginInputs(tick=new.tick, state=new.state, frames=frames, backlog=backlog, salience=salience,
                        fused=new.fused, upstream=new.upstream), dropped


def _newest_within(frames: list[Frame], budget: int) -> list[Frame]:
    """The newest frames whose payloads fit `budget` bytes (the newest always stays)."""
    total, keep = 0, 0
    for frame in reversed(frames):
        data = frame.data
        total += len(data) if isinstance(data, (str, bytes)) else int(getattr(data, "nbytes", 0))
        if keep and total > budget:
            break
        keep += 1
    return frames[len(frames) - keep:]


def oldest_ts_ns(inputs: PluginInputs) -> int | None:
    stamps = [f.ts_ns for f in inputs.every_frame()]
    return min(stamps) if stamps else None


def newest_ts_ns(inputs: PluginInputs) -> int | None:
    stamps = [f.ts_ns for f in inputs.frames.values()]
    return max(stamps) if stamps else None


class PluginHost:
    """One plugin, its thread, its ATP account, its jobs and its health."""

    def __init__(self, plugin: IRPPlugin, *, breaker_failures: int, breaker_cooldown_s: float,
                 policy: JobPolicy | None = None, cost_clock: Callable[[], int] | None = None,
                 clock: Clock = SYSTEM, synchronous: bool = False) -> None:
        self.plugin = plugin
        self.name = plugin.name
        #: In a worker process (plugin/worker.py): killable when hung, restarted when dead.
        self.remote: RemotePlugin | None = plugin if isinstance(plugin, RemotePlugin) else None
        self.policy = policy or JobPolicy(input_policy=getattr(plugin, "input_policy", "queue"))
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self.account = PluginAccount()
        self.cost = StepCost()       # a step's measured cost (the cost clock): what it is charged
        self.wall = StepCost()       # a step's wall time: what the deadline check predicts with
        self.init_cost = StepCost()
        self.cost_clock: Callable[[], int] = cost_clock or time.thread_time_ns
        self.clock = clock  # deadlines, ages, breakers: the machine's, or a replay's virtual time
        self.on_finished: Callable[[], None] | None = None
        self.stats = HostStats()
        self.consecutive_failures = 0
        self.breaker_until = 0.0
        self.paused = False
        self.hung = False
        self.held_dropped = 0
        self.priority = "default"
        self.share = SensorShare(uniform=self.policy.sensor_share_uniform)
        self._cond = threading.Condition()
        self._calls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = collections.deque()
        self._job: Job | None = None
        self._next: PluginInputs | None = None
        #: The last finished job's state, per sensor for a one-sensor plugin (a camera's next
        #: frame warm-starts from that camera's last job, not from whichever camera ran last).
        self._last_state: dict[str | None, Any] = {}
        self._unit_since_ns: int | None = None
        #: The plugin thread's schedstat reader, its reading at the start of the running unit, and the
        #: hang check's last look at a unit past its bound (unit start, when, what it saw): the
        #: check tells a slow unit (still moving) from a stuck one. None: not known.
        self._schedstat: ThreadSchedstat | None = None
        self._unit_stat: tuple[int, int, bool] | None = None
        self._watch: tuple[int, int, tuple[int, Any]] | None = None
        self._finished: collections.deque[Finished] = collections.deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        if not synchronous:
            self._thread = threading.Thread(target=self._serve, name=f"plugin-{self.name}", daemon=True)
            self._thread.start()

    # ---------------------------------------------------------------- lifecycle

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run fn on the plugin thread between job units (setup, warmup, consolidate, close)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            self._calls.append((fn, fut))
            self._cond.notify_all()
        if self._thread is None:
            self.drain()
        return fut

    def setup_and_warmup(self, ctx: PluginContext) -> concurrent.futures.Future[Any]:
        def work() -> None:
            self.plugin.setup(ctx)
            t0 = time.perf_counter()
            self.plugin.warmup()
            # A representative job, so the first live job's step and init costs are measured ones.
            # The init is its own measurement (res.init_ms): inferred as the run's total less steps
            # x the final step estimate, a burner's 10,000-step run under load read 266 ms for a
            # no-op init, more than a small reservoir holds, and it never started a job.
            res = run_plugin(self.plugin, self.plugin.sample_inputs(0), atp_ms=1e9, deadline_ns=2**62,
                             cost=self.cost, clock_ns=self.cost_clock, max_steps=WARMUP_STEPS)
            if res.halt != "error":
                self.init_cost.observe(res.init_ms)
            self.wall.observe(self.cost.ms)
            log.info("plugin %s warm: %.1f ms, step %.3f ms, init %.3f ms", self.name,
                     (time.perf_counter() - t0) * 1e3, self.cost.ms, self.init_cost.ms)
        return self.call(work)

    def close(self, timeout_s: float = 2.0) -> None:
        """Close the plugin between job units, stop the thread there, and join it: a thread still
        inside torch when the interpreter exits can abort the process (measured: exit -6)."""
        def work() -> None:
            try:
                self.plugin.close()
            finally:
                with self._cond:
                    self._stopping = True
        deadline = time.monotonic() + timeout_s
        fut = self.call(work)
        try:
            fut.result(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - shutdown goes on
            log.warning("plugin %s close failed: %s", self.name, exc)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(max(deadline - time.monotonic(), 0.05))

    # ---------------------------------------------------------------- the tick's side

    def submit(self, inputs: PluginInputs) -> None:
        """New input: queued behind the running job, or (restart, warm) preempting it."""
        with self._cond:
            self._next, dropped = merge_inputs(self._next, inputs)
            self.held_dropped += dropped
            if self._job is not None and self.policy.input_policy == "restart":
                self._job.preempt = True
            self._cond.notify_all()

    def deposit(self, granted: float) -> None:
        if granted > 0:
            self.account.deposit(granted)
            with self._cond:
                self._cond.notify_all()

    def affords_next_unit(self, granted: float) -> bool:
        """Whether credit plus `granted` covers the next unit of work: a step while a job runs,
        else a job's start."""
        with self._cond:
            running = self._job is not None
        need = self.cost.ms if running else self.init_cost.ms
        return self.account.credit + granted >= need

    def credit_cap(self) -> float:
        """Credit this plugin may keep past a collect: none when idle, a few steps with work."""
        return CREDIT_STEPS * max(self.cost.ms, self.init_cost.ms) if self.wants_atp() else 0.0

    def wants_atp(self) -> bool:
        """A job runs or waits to start: the allocator should consider this plugin."""
        with self._cond:
            return self._job is not None or self._next is not None or self._pending_input() > 0

    def take_finished(self) -> list[Finished]:
        self.stats.sample(self.account)
        if not self._finished:
            return []  # nothing ended: no lock on an idle tick (a job appended now is taken next time)
        with self._cond:
            out = list(self._finished)
            self._finished.clear()
        for done in out:
            self._account(done.result)
            if self.plugin.one_sensor_per_job:
                for sensor in done.inputs.frames:
                    self.stats.atp_by_sensor[sensor] += done.result.atp_spent
        return out

    def check_hang(self, grace_ms: float) -> None:
        """Abandon a job whose unit has run past the job's deadline plus `grace_ms` and is stuck."""
        if self._job is None:
            return  # no job: no lock on an idle tick
        with self._cond:
            job, since = self._job, self._unit_since_ns
            if job is None or since is None or self.hung:
                return
            now = self.clock.monotonic_ns()
            # Past the job's deadline plus grace, and 10x the unit's usual wall time; then it must
            # also be stuck (_stuck): in the 3x soak a niced vision thread, starved of the CPU and
            # the GIL but computing, was abandoned 14 times in 10 minutes and its breaker opened.
            bound = max(job.deadline_ns - since, int(10 * max(self.wall.ms, self.init_cost.ms) * 1e6)) \
                + int(grace_ms * 1e6)
            if now - since < bound:
                return
            why = self._stuck(now, since, bound, int(grace_ms * 1e6))
            if why is None:
                return
            self.hung = True
            job.abandoned = True
            self._job = None
            self.stats.hangs += 1
            res = RunResult(self.name, "error", job.steps, job.energies[-1] if job.energies else None,
                            list(job.energies), {}, (now - job.started_ns) / 1e6, job.spent_ms, job.steps,
                            error=f"hung: no return {grace_ms:.0f} ms past its deadline ({why})")
            self._finished.append(Finished(res, job.inputs))
        if self.remote is not None:
            self.remote.kill()  # its unit then fails on the host thread, which comes back; the next starts a worker

    def _stuck(self, now: int, since: int, bound: int, grace: int) -> str | None:
        """(Under the lock.) Why the unit running since `since`, past `bound`, counts as hung, or
        None while it is slow but moving. Where the kernel says (schedstat): time waiting for a
        CPU does not count; more than `bound` on a CPU is a runaway; else it is stuck only when
        over `grace` it gained under 1 ms of CPU and its Python position did not move (a thread
        starved of the GIL still moves between torch ops; one blocked in a sleep or a lock does
        not)."""
        elapsed = f"{(now - since) / 1e6:.0f} ms"
        stat = self._thread_stat()
        if stat is None or self._unit_stat is None:
            return elapsed
        run, wait = stat[0] - self._unit_stat[0], stat[1] - self._unit_stat[1]
        detail = f"{elapsed}: {run / 1e6:.0f} ms on a CPU, {wait / 1e6:.0f} ms waiting for one"
        if run >= bound:
            return detail + ", a runaway"
        if stat[2] or now - since - wait < bound:
            return None  # runnable (on a CPU or waiting for one), or it has not been off one long
        # sys._current_frames: the one way to see where another thread is (a specialised use)
        frame = sys._current_frames().get(self._thread.ident) if self._thread is not None else None
        mark = (stat[0], None if frame is None else (id(frame), frame.f_lasti))
        watch = self._watch
        if watch is None or watch[0] != since or mark[0] - watch[2][0] >= 1_000_000 or mark[1] != watch[2][1]:
            self._watch = (since, now, mark)
            return None
        if now - watch[1] < grace:
            return None
        return detail + f", nothing moved for {(now - watch[1]) / 1e6:.0f} ms"

    # ---------------------------------------------------------------- state

    def health(self, now: float | None = None) -> str:
        now = self.clock.monotonic() if now is None else now
        if self.paused:
            return "paused"
        if self.hung:
            return "hung"
        if self.breaker_until > now:
            return "open"  # circuit breaker tripped, cooling down
        return "degraded" if self.consecutive_failures else "ok"

    def available(self, now: float) -> bool:
        return not self.paused and not self.hung and self.breaker_until <= now

    def _account(self, result: RunResult) -> None:
        """Health bookkeeping of a finished job (tick thread): errors feed the circuit breaker."""
        self.stats.record(result)
        if result.halt != "error":
            self.consecutive_failures = 0
            return
        self.consecutive_failures += 1
        log.warning("plugin %s error: %s", self.name, result.error)
        if self.consecutive_failures >= self.breaker_failures:
            self.breaker_until = self.clock.monotonic() + self.breaker_cooldown_s
            log.warning("plugin %s circuit open for %.1f s after %d failures", self.name,
                        self.breaker_cooldown_s, self.consecutive_failures)

    def summary(self) -> dict[str, Any]:
        return {"status": self.health(), **self.stats.summary(self.account), "health_reasons": self._health_reasons(), "step_ms": round(self.cost.ms, 4),
                "init_ms": round(self.init_cost.ms, 4), "credit": round(self.account.credit, 3),
                "atp_granted": round(self.account.deposited_total, 3),
                "input_policy": self.policy.input_policy, "job_running": self._job is not None,
                "priority": self.priority, "consecutive_failures": self.consecutive_failures,
                "held_frames": self._held_frames(), "held_dropped": self.held_dropped, **self._isolation()}

    def _isolation(self) -> dict[str, Any]:
        if self.remote is None:
            return {"isolation": "thread"}
        return {"isolation": "process", "worker_pid": self.remote.worker_pid, "worker_restarts": self.remote.restarts,
                "worker_states": self.remote.held_states}

    def _health_reasons(self) -> list[str]:
        try:
            return [str(r) for r in getattr(self.plugin, "health_reasons", list)()]
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must not break `sagectl status`
            return [f"health_reasons() failed: {type(exc).__name__}: {exc}"]

    def _held_frames(self) -> int:
        with self._cond:
            return len(self._next.every_frame()) if self._next is not None else 0

    # ---------------------------------------------------------------- the plugin thread

    def _pending_input(self) -> int:
        try:
            return int(self.plugin.pending_input())
        except Exception:  # noqa: BLE001 - a faulty hook counts as nothing pending
            return 0

    def _serve(self) -> None:
        # a worker process has its own reader and lowers itself; its host thread only waits on it
        stat = ThreadSchedstat.open(threading.get_native_id()) if self.remote is None else None
        with self._cond:
            self._schedstat = stat
        self.priority = host_thread_priority(self.name) if self.remote is not None \
            else lower_thread_priority(self.name, self.policy.nice)
        try:
            while True:
                work = self._wait_for_work()
                if work is None:
                    return
                self._do(work)
        finally:
            with self._cond:  # the tick reads it under the lock: no read of a reused descriptor
                self._schedstat = None
            if stat is not None:
                stat.close()

    def drain(self) -> int:
        """(synchronous hosts) Run every unit that is ready now on the caller's thread, in the
        host's clock: the jobs' steps as far as their credit goes; the number of units run. Stops
        when a job unit changes nothing (a job at its deadline's edge with no credit)."""
        done = 0
        while not self._stopping:
            with self._cond:
                work, _ = self._ready()
            if work is None:
                break
            before = self._progress()
            self._do(work)
            done += 1
            if work[0] == "job" and self._progress() == before:
                break
        return done

    def _progress(self) -> tuple[Any, int]:
        return self._job, self._job.steps if self._job is not None else -1

    def _do(self, work: tuple[str, Any]) -> None:
        kind, arg = work
        if kind == "call":
            fn, fut = arg
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(exc)
        elif kind == "start":
            self._start(arg)
        else:
            self._advance(arg)

    def _wait_for_work(self) -> tuple[str, Any] | None:
        """Under the lock: the next unit of work, or None when stopping. Waits for credit,
        input or a call; a job waiting for credit wakes at its deadline."""
        with self._cond:
            while not self._stopping:
                work, timeout = self._ready()
                if work is not None:
                    return work
                self._cond.wait(timeout)
        return None

    def _ready(self) -> tuple[tuple[str, Any] | None, float | None]:
        """(Under the lock.) The unit of work ready now, else None and how long to wait for one."""
        if self._calls:
            return ("call", self._calls.popleft()), None
        job = self._job
        if job is not None:
            if job.preempt or self.account.can_afford(self.cost.ms):
                return ("job", job), None
            timeout = (job.deadline_ns - self.clock.monotonic_ns()) / 1e9 - self.wall.ms / 1e3
            return (("job", job), None) if timeout <= 0 else (None, timeout)
        if self._next is None and self._pending_input() > 0:
            self._next = PluginInputs()  # work the plugin queued itself in an earlier job
        if self._next is not None and self.available(self.clock.monotonic()) \
                and self.account.can_afford(self.init_cost.ms):
            inputs, self._next = self._take_next(self._next)
            return ("start", inputs), None
        return None, (0.5 if self._next is not None else None)

    def _take_next(self, held: PluginInputs) -> tuple[PluginInputs, PluginInputs | None]:
        """(Under the lock.) The next job's inputs and what stays held: everything, or for a
        one-sensor plugin one sensor's frames picked by salience share."""
        if not self.plugin.one_sensor_per_job or len(held.frames) <= 1:
            return held, None
        return split_sensor(held, self.share.pick(sorted(held.frames), held.salience))

    def _warm_key(self, inputs: PluginInputs) -> str | None:
        """Whose last state a job warm-starts from: its sensor's for a one-sensor plugin (at most
        one entry per sensor), else the plugin's one last state."""
        if self.plugin.one_sensor_per_job and len(inputs.frames) == 1:
            return next(iter(inputs.frames))
        return None

    def _deadline_ns(self, inputs: PluginInputs) -> int:
        """restart/warm serve samples, so the deadline is the oldest frame's age; queue serves
        requests in order, so each job gets max_age_ms from its start (a command or puzzle that
        waited in line, or a puzzle continued after a cut, is still answered, not cut at once)."""
        oldest = oldest_ts_ns(inputs) if self.policy.input_policy != "queue" else None
        age_ms = max((self.clock.time_ns() - oldest) / 1e6, 0.0) if oldest is not None else 0.0
        return self.clock.monotonic_ns() + int(max(self.policy.max_age_ms - age_ms, 0.0) * 1e6)

    def _start(self, inputs: PluginInputs) -> None:
        job = Job(inputs, self._deadline_ns(inputs), max_atp=self.policy.max_atp, wall_ns=self.clock.monotonic_ns)
        warm_from = self._last_state.get(self._warm_key(inputs)) if self.policy.input_policy == "warm" else None
        with self._cond:
            self._job = job
        ok, _, ms = self._unit(job, lambda: begin(self.plugin, job, warm_from, self.cost_clock))
        if not ok:
            return
        self.init_cost.observe(ms)
        if job.state is None:
            self.stats.empty += 1
            self._end(job, None)

    def _advance(self, job: Job) -> None:
        """One unit of a running job: end it when it must stop, else one step if credit covers it."""
        ok, halt, _ = self._unit(job, lambda: next_halt(self.plugin, job, self.cost, job.wall_ns, wall=self.wall))
        if not ok:
            return
        if halt is not None:
            self._end(job, halt)
        elif self.account.can_afford(self.cost.ms):
            self._unit(job, lambda: advance(self.plugin, job, self.cost, self.cost_clock, self.wall))

    def _unit(self, job: Job, fn: Callable[[], Any]) -> tuple[bool, Any, float]:
        """Run one unit of plugin code for `job`, charging its measured time to the account:
        (ok, what fn returned, ms). A plugin exception ends the job with `error`; a unit that
        returns after the tick abandoned it as hung is discarded; both give ok False."""
        t0 = self.cost_clock()
        self._unit_began()
        try:
            out, ok = fn(), True
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            out, ok = exc, False
        ms = (self.cost_clock() - t0) / 1e6
        self.account.charge(ms)
        with self._cond:
            self._unit_since_ns = None
            abandoned = job.abandoned
            if abandoned:
                self._returned()
        if isinstance(out, WorkerDied):
            self._respawn()
        if abandoned:
            return False, None, ms
        if not ok:
            self._publish(job, failed(self.plugin, job, out))
        return ok, out, ms

    def _respawn(self) -> None:
        """A plugin worker died (or was killed as hung): its successor starts now, outside any
        unit, so its seconds of imports and setup are neither charged nor seen as a hang."""
        try:
            if self.remote is not None:
                self.remote.respawn()
        except Exception as exc:  # noqa: BLE001 - the plugin's next units fail and feed its breaker
            log.error("plugin %s: worker restart failed: %s: %s", self.name, type(exc).__name__, exc)

    def _thread_stat(self) -> tuple[int, int, bool] | None:
        """The kernel's view of the thread that runs the plugin's code: the host thread, or a
        worker process's."""
        reader = self.remote.schedstat if self.remote is not None else self._schedstat
        return reader.read() if reader is not None else None

    def _unit_began(self) -> None:
        stat = self._thread_stat()
        with self._cond:
            self._unit_since_ns, self._unit_stat = self.clock.monotonic_ns(), stat

    def _end(self, job: Job, halt: str | None) -> None:
        if halt is None:
            with self._cond:
                self._job = None
            return
        t0 = self.cost_clock()
        self._unit_began()
        try:
            res = finish(self.plugin, job, halt, self.cost_clock)
        except Exception as exc:  # noqa: BLE001
            res = failed(self.plugin, job, exc, self.cost_clock)
            if isinstance(exc, WorkerDied):
                self._respawn()
        self.account.charge((self.cost_clock() - t0) / 1e6)
        with self._cond:
            self._unit_since_ns = None
        if res.halt != "error":
            self._last_state[self._warm_key(job.inputs)] = job.state
        self._publish(job, res)

    def _returned(self) -> None:
        """(Under the lock.) The thread is back from a unit the tick abandoned as hung."""
        if self.hung:
            self.hung = False
            log.info("plugin %s returned from its hang", self.name)

    def _publish(self, job: Job, res: RunResult) -> None:
        with self._cond:
            if self._job is job:
                self._job = None
            if job.abandoned:
                self._returned()
                return
            self._finished.append(Finished(res, job.inputs))
        if self.on_finished is not None:
            self.on_finished()


class HostStats:
    """Per-plugin counters for status: results by halt, steps per result, ATP per second."""

    def __init__(self) -> None:
        self.runs = 0
        self.steps = 0  # refinement steps over all jobs (sagectl top, /metrics)
        self.errors = 0
        self.hangs = 0
        self.empty = 0
        self.warm = 0
        self.atp_spent = 0.0
        self.atp_by_sensor: collections.Counter[str] = collections.Counter()  # one-sensor plugins
        self.halts: collections.Counter[str] = collections.Counter()
        self.last_halt: str | None = None
        self.last_error: str | None = None
        self.latency = LatencyWindow(2048)
        self._steps: collections.deque[int] = collections.deque(maxlen=512)
        self._spend: collections.deque[tuple[float, float]] = collections.deque(maxlen=256)

    def record(self, res: RunResult) -> None:
        self.runs += 1
        self.steps += res.steps
        self.halts[res.halt] += 1
        self.last_halt = res.halt
        self.atp_spent += res.atp_spent
        self.warm += res.warm
        self.latency.record(res.latency_ms)
        self._steps.append(res.steps)
        if res.halt == "error":
            self.errors += 1
            self.last_error = res.error

    def sample(self, account: PluginAccount) -> None:
        """Every half second, what the account has been charged so far: ATP/s over ~10 s."""
        now = time.monotonic()
        if not self._spend or now - self._spend[-1][0] >= 0.5:
            self._spend.append((now, account.charged_total))
            while len(self._spend) > 2 and now - self._spend[0][0] > 10.0:
                self._spend.popleft()

    def summary(self, account: PluginAccount) -> dict[str, Any]:
        now = time.monotonic()
        self.sample(account)
        t0, c0 = self._spend[0]
        lat = self.latency.summary()
        return {"runs": self.runs, "steps": self.steps, "errors": self.errors, "hangs": self.hangs, "halts": dict(self.halts),
                "last_halt": self.last_halt, "last_error": self.last_error, "p50_ms": lat["p50_ms"],
                "p99_ms": lat["p99_ms"], "atp_spent": round(self.atp_spent, 3),
                "steps_p50": statistics.median(self._steps) if self._steps else None,
                "atp_per_s": round((account.charged_total - c0) / (now - t0), 3) if now - t0 > 0.5 else None,
                "preempted": self.halts["preempted"], "warm_starts": self.warm, "empty_jobs": self.empty,
                "atp_by_sensor": {k: round(v, 3) for k, v in sorted(self.atp_by_sensor.items())}}
