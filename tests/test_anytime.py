"""Anytime jobs with real threads doing real compute (DESIGN.md 7a): a plugin's refinement runs on
its host thread across ticks, paid step by step from the ATP account the tick credits."""

from __future__ import annotations

import random
import sys
import time

import pytest
import torch

from sage_runtime.cognition.atp import AtpLedger, AtpParams
from sage_runtime.plugin.account import PluginAccount
from sage_runtime.mailbox import Mailbox
from sage_runtime.plugin.contract import IRPPlugin, PluginInputs
from sage_runtime.plugin.host import JobPolicy, PluginHost
from sage_runtime.plugin.runner import Job, StepCost, advance, begin, next_halt, run_plugin
from sage_runtime.records import Frame
from tests.plugins_for_tests import busy_wait

FAR = 1 << 62


class Matmul(IRPPlugin):
    """Real compute: power iteration on a fixed random matrix (a few ms per step); energy is the
    residual of the Rayleigh quotient, which falls monotonically; converges slowly."""

    name = "matmul"
    max_steps = 40
    halt_eps = 0.0  # never converges by slope: runs to max_steps

    def __init__(self, n: int = 256, reps: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g)
        self.a = a @ a.T
        self.reps = reps
        self.steps_started = 0

    def sample_inputs(self, seed: int) -> PluginInputs:
        return PluginInputs(tick=seed, frames={"s": Frame("s", seed, time.time_ns(), "tensor",
                                                          torch.full((self.a.shape[0],), 1.0 + seed))})

    def init_state(self, inputs: PluginInputs):
        frame = next(iter(inputs.frames.values()), None)
        return None if frame is None else {"v": frame.data.float().clone(), "seq": frame.seq}

    def step(self, s):
        self.steps_started += 1
        v = s["v"]
        for _ in range(self.reps):
            v = self.a @ v
            v = v / v.norm()
        return {**s, "v": v}

    def energy(self, s) -> float:
        v = s["v"] / s["v"].norm()
        lam = float(v @ self.a @ v)
        return float((self.a @ v - lam * v).norm())

    def outputs(self, s):
        return {"v": s["v"].clone(), "seq": s["seq"]}


def wait_finished(host: PluginHost, n: int = 1, timeout_s: float = 30.0, feed: float = 0.0) -> list:
    """Collect `n` finished jobs, depositing `feed` ATP every 5 ms as a tick would."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} jobs finished; {host.summary()}"
        if feed:
            host.deposit(feed)
        got += host.take_finished()
        time.sleep(0.005)
    return got


@pytest.fixture
def hosts():
    made: list[PluginHost] = []

    def make(plugin: IRPPlugin, **policy) -> PluginHost:
        host = PluginHost(plugin, breaker_failures=3, breaker_cooldown_s=0.3,
                          policy=JobPolicy(**{"max_age_ms": 60_000.0, "nice": 0, **policy}))
        host.cost.observe(1.0)
        made.append(host)
        return host
    yield make
    for host in made:
        host.close()


def test_a_job_resumed_across_ticks_equals_an_uninterrupted_run(hosts):
    plugin = Matmul()
    whole = run_plugin(Matmul(), plugin.sample_inputs(3), atp_ms=1e9, deadline_ns=FAR, cost=StepCost())
    host = hosts(plugin)
    host.submit(plugin.sample_inputs(3))
    # Credit trickles in: a fraction of a step per "tick", so the job waits for credit many times.
    done = wait_finished(host, feed=0.3)
    res = done[0].result
    assert res.halt == "max_steps" == whole.halt and res.steps == whole.steps == Matmul.max_steps
    assert res.energies == pytest.approx(whole.energies, rel=1e-6)
    assert torch.allclose(res.outputs["v"], whole.outputs["v"], atol=1e-6)
    assert host.account.charged_total > 0 and host.stats.runs == 1


def test_no_step_starts_without_credit_and_every_charge_is_measured(hosts):
    plugin = Matmul(reps=400)
    host = hosts(plugin)
    host.submit(plugin.sample_inputs(1))
    time.sleep(0.2)
    assert plugin.steps_started == 0, "no ATP granted: not even the first step may start"
    grant = 20.0
    host.deposit(grant)
    time.sleep(0.5)
    started = plugin.steps_started
    assert started >= 1
    time.sleep(0.3)
    assert plugin.steps_started == started, "the grant is spent: steps stop until the next one"
    # Every ms charged was measured; the last step may overrun what was left by at most itself.
    assert grant - host.cost.ms * 3 <= host.account.charged_total <= grant + host.cost.ms * 3
    assert host.account.credit < host.cost.ms * 3


def test_restart_preempts_between_steps_and_holds_no_mailbox_lease(hosts):
    box = Mailbox(torch.device("cpu"))
    try:
        channel = box.register("cam", kind="focus", dtype=torch.float32, max_shape=(256,), policy="latest")
        plugin = Matmul(reps=200)
        host = hosts(plugin, input_policy="restart")
        for seq in range(2):
            channel.write(torch.full((256,), 1.0 + seq))
            lease = channel.read_latest()
            frame = Frame("cam", lease.seq, time.time_ns(), "tensor", lease.tensor)
            host.submit(PluginInputs(tick=seq, frames={"cam": frame.detached()}))  # what the tick does
            lease.release()  # at the end of the tick, whatever the job does next
            host.deposit(1e6 if seq == 0 else 0.0)
            if seq == 0:
                deadline = time.monotonic() + 10
                while plugin.steps_started < 2:
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
        first, second = (d.result for d in wait_finished(host, n=2))
        assert first.halt == "preempted" and 1 <= first.steps < Matmul.max_steps
        assert first.outputs["seq"] == 0 and second.outputs["seq"] == 1
        assert channel.stats()["leases_outstanding"] == 0
    finally:
        box.close()


def test_a_step_predicted_past_the_deadline_is_not_started():
    clock = {"t": 0}

    def now() -> int:
        return clock["t"]

    class Timed(Matmul):
        def step(self, s):
            clock["t"] += 10_000_000  # every step takes 10 ms of (fake) time
            return super().step(s)

    plugin = Timed(n=8, reps=1)
    job = Job(plugin.sample_inputs(0), deadline_ns=25_000_000)
    cost = StepCost(10.0, alpha=0.0)
    begin(plugin, job, clock_ns=now)
    halts = []
    while (halt := next_halt(plugin, job, cost, now)) is None:
        advance(plugin, job, cost, now)
        halts.append(clock["t"])
    assert halt == "deadline" and job.steps == 2 and plugin.steps_started == 2
    assert max(halts) <= job.deadline_ns  # no step ended past the deadline


@pytest.mark.parametrize("input_policy", ["restart", "warm"])
def test_the_deadline_is_the_input_s_maximum_age_on_the_host(hosts, input_policy):
    plugin = Matmul(reps=1000)
    host = hosts(plugin, max_age_ms=150.0, input_policy=input_policy)
    old = Frame("s", 1, time.time_ns() - int(100e6), "tensor", torch.ones(256))  # 100 ms old already
    host.submit(PluginInputs(frames={"s": old}))
    host.deposit(1e6)
    res = wait_finished(host)[0].result
    assert res.halt == "deadline" and res.steps < Matmul.max_steps
    assert res.latency_ms < 50.0 + host.wall.ms * 2  # 150 ms max age - 100 ms already old


def test_a_queued_request_gets_its_whole_budget_however_long_it_waited(hosts):
    """queue serves requests: a command or puzzle that waited past max_age is still refined
    (was: its deadline had passed before the job began, so it was answered with 0 steps)."""
    plugin = Matmul(reps=1000)
    host = hosts(plugin, max_age_ms=150.0, input_policy="queue")
    old = Frame("s", 1, time.time_ns() - int(400e6), "tensor", torch.ones(256))  # waited 400 ms
    host.submit(PluginInputs(frames={"s": old}))
    host.deposit(1e6)
    res = wait_finished(host)[0].result
    assert res.steps > 0 and res.halt != "error"


def test_queue_finishes_the_running_job_first_and_warm_starts_from_its_state(hosts):
    class Warmable(Matmul):
        def warm_state(self, prev, inputs):
            frame = next(iter(inputs.frames.values()))
            return {"v": prev["v"].clone(), "seq": frame.seq}

    for policy, warm in (("queue", False), ("warm", True)):
        plugin = Warmable(reps=50)
        host = hosts(plugin, input_policy=policy)
        host.submit(plugin.sample_inputs(1))
        host.deposit(1e6)
        while plugin.steps_started < 1:
            time.sleep(0.001)
        host.submit(plugin.sample_inputs(2))  # while the first job runs
        first, second = (d.result for d in wait_finished(host, n=2, feed=1e3))
        assert first.halt == "max_steps" and first.steps == Matmul.max_steps  # not preempted
        assert second.warm is warm and first.warm is False
        if warm:  # power iteration from a converged vector starts at a far lower residual
            assert second.energies[0] < 0.1 * first.energies[0]


def test_a_one_sensor_plugin_warm_starts_from_its_own_sensor_s_last_job(hosts):
    """Two cameras, jobs a, b, a: the third starts from camera a's state, not from b's (the last
    job), and the first job of each camera starts cold."""
    class PerCamera(Matmul):
        one_sensor_per_job = True
        max_steps = 2

        def init_state(self, inputs):
            (sensor, frame), = inputs.frames.items()
            return {"v": frame.data.float().clone(), "seq": frame.seq, "sensor": sensor}

        def warm_state(self, prev, inputs):
            (sensor, frame), = inputs.frames.items()
            self.warmed_from.append((sensor, prev["sensor"]))
            return {**prev, "seq": frame.seq, "sensor": sensor}

    plugin = PerCamera(reps=2)
    plugin.warmed_from = []
    host = hosts(plugin, input_policy="warm")
    host.deposit(1e6)
    for k, sensor in enumerate(("a", "b", "a")):
        host.submit(PluginInputs(tick=k, frames={sensor: Frame(sensor, k, time.time_ns(), "tensor",
                                                                torch.full((256,), 1.0 + k))}))
        done = wait_finished(host, n=1, feed=1e3)
        assert done[0].result.warm is (k == 2)
    assert plugin.warmed_from == [("a", "a")]


class Raiser(Matmul):
    def step(self, s):
        raise RuntimeError("injected")


def test_circuit_breaker_opens_after_failures_and_closes_after_cooldown(hosts):
    host = hosts(Raiser(n=8))
    for i in range(3):
        host.submit(host.plugin.sample_inputs(i))
        host.deposit(100.0)
        res = wait_finished(host)[0].result
        assert res.halt == "error" and "injected" in res.error
    now = time.monotonic()
    assert host.health(now) == "open" and not host.available(now)
    host.submit(host.plugin.sample_inputs(9))
    host.deposit(100.0)
    time.sleep(0.1)
    assert host.take_finished() == [] and host.plugin.steps_started == 0  # no job starts while open
    time.sleep(0.3)
    assert host.available(time.monotonic())
    assert wait_finished(host)[0].result.halt == "error"  # closed again: the queued input ran


def test_atp_conservation_over_100k_random_ticks_with_jobs_spanning_ticks():
    rng = random.Random(7)
    ledger = AtpLedger(AtpParams(capacity_atp=500.0, start_fraction=0.5))
    accounts = [PluginAccount() for _ in range(4)]
    costs = [0.3, 2.0, 7.0, 25.0]  # a step can cost more than a tick's grant: jobs span ticks
    charged = 0.0
    for _ in range(100_000):
        ledger.recharge(rng.uniform(0, 0.02))
        for acc, cost in zip(accounts, costs):
            acc.deposit(ledger.grant(rng.uniform(0, 10)))
            while rng.random() < 0.7 and acc.can_afford(cost):  # the host thread: steps it can afford
                measured = cost * rng.uniform(0.5, 1.6)  # measured, may overrun the prediction
                acc.charge(measured)
                charged += round(measured * 1000) / 1000
            keep = rng.choice([0.0, 4 * cost, 1e9])
            used, debit, returned = acc.collect(keep)
            assert used <= debit + 1e-9 and acc.credit <= keep + 1e-9
            ledger.settle(used + returned, debit)
        b = ledger.audit()
        assert b["level"] == b["start"] + b["recharged"] - b["spilled"] - b["debited"] + b["debt"]
        assert 0 <= b["level"] <= b["capacity"] and b["debt"] >= 0
        assert b["reserved"] == sum(round(a.credit * 1000) for a in accounts)
    assert ledger.audit()["debited"] == round(charged * 1000)
    assert ledger.audit()["granted"] >= ledger.audit()["debited"] - ledger.audit()["overrun"]


def test_the_tick_is_never_blocked_by_a_step_three_periods_long(hosts):
    """A plugin whose every step is ~30 ms of torch compute (big matmuls, which release the GIL)
    beside a 10 ms 'tick' on this thread, under the daemon's GIL switch interval: the tick keeps
    the periods it is owed (counted, not timed: missed periods against ticks run)."""

    class Heavy(Matmul):
        def step(self, s):
            self.steps_started += 1
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.03:
                self.a @ self.a
            return s

    def ticks_missed(step_inline: bool, plugin: Heavy, host: PluginHost | None, steps: int) -> tuple[int, int]:
        """Run a 10 ms tick loop until the plugin has started `steps` steps: (ticks, periods missed)."""
        period, ticks, missed = 0.01, 0, 0
        next_deadline = time.perf_counter()
        state = plugin.init_state(plugin.sample_inputs(0))
        while plugin.steps_started < steps:
            next_deadline += period
            if step_inline:  # the old design: the tick awaits the plugin's step
                plugin.step(state)
            else:
                host.deposit(40.0)
                host.take_finished()
            behind = time.perf_counter() - next_deadline
            if behind < 0:
                time.sleep(-behind)
            else:  # overran into the next period(s): count and realign, as the tick loop does
                skipped = int(behind // period) + 1
                missed += skipped
                next_deadline += skipped * period
            ticks += 1
        return ticks, missed

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.001)  # tick.gil_switch_interval_ms default
    try:
        inline = ticks_missed(True, Heavy(n=384), None, 8)
        plugin = Heavy(n=384)
        host = hosts(plugin)
        host.submit(plugin.sample_inputs(0))
        jobs = ticks_missed(False, plugin, host, 8)
    finally:
        sys.setswitchinterval(old)
    # The same machine load in both runs: awaiting each 30 ms step misses about 2 periods a tick;
    # with the step on the plugin's thread the tick keeps (nearly) every period.
    assert inline[1] >= inline[0], inline
    assert jobs[1] / jobs[0] < 0.25 * inline[1] / inline[0], (jobs, inline)


def test_daemon_grants_no_atp_while_a_plugin_s_breaker_is_open(tmp_path):
    """Through the real daemon and ZeroMQ: a plugin that raises opens its breaker after
    `breaker_failures` errors, gets no ATP while open, and is granted again after the cooldown."""
    import numpy as np

    from sage_runtime.client import SensorPublisher
    from tests.harness import DaemonProcess, wait_for

    d = DaemonProcess(tmp_path, {"plugins": {"enabled": ["tests.plugins_for_tests:Raiser"],
                                             "options": {"raiser": {"after": 2}},  # warmup runs first
                                             "breaker_failures": 2, "breaker_cooldown_s": 3.0}}).start()
    pub = SensorPublisher(d.ingest)
    try:
        def raiser() -> dict:
            pub.tensor("cam", np.ones(4, np.float32))
            return d.status()["plugins"]["raiser"]
        wait_for(lambda: raiser()["status"] == "open", timeout_s=20, interval_s=0.05)
        opened = raiser()
        assert opened["errors"] >= 2
        for _ in range(20):  # input keeps arriving while the breaker is open
            now = raiser()
            if now["status"] != "open":
                break
            assert now["atp_granted"] == opened["atp_granted"] and now["errors"] == opened["errors"]
            time.sleep(0.05)
        wait_for(lambda: raiser()["atp_granted"] > opened["atp_granted"], timeout_s=10, interval_s=0.05)
        # One snapshot: between two status calls the retried job can fail and reopen the breaker.
        after = raiser()
        assert after["errors"] > opened["errors"] or after["status"] != "open"
    finally:
        pub.close()
        d.stop()


def test_a_grant_ends_a_plugin_s_wait_only_if_it_covers_the_next_unit_of_work(hosts):
    """The tick resets a plugin's waiting time (which ranks an overdue plugin first) only when
    credit plus the grant covers its next unit: a job's start when idle, a step while one runs."""
    plugin = Matmul(reps=400)
    host = hosts(plugin)
    host.init_cost.observe(10.0)
    host.cost.observe(1.0)
    assert not host.affords_next_unit(5.0) and host.affords_next_unit(host.init_cost.ms)
    host.deposit(host.init_cost.ms / 2)
    assert host.affords_next_unit(host.init_cost.ms / 2) and not host.affords_next_unit(0.0)


class UnevenSteps(IRPPlugin):
    """A 2 ms init, then steps that alternate 0.1 ms and 3 ms of busy work: the step estimate (an
    EWMA) never equals their mean, so a run's total less steps x estimate is not the init."""

    name = "uneven"
    max_steps = 10_000
    INIT_MS = 2.0

    def init_state(self, inputs: PluginInputs):
        busy_wait(self.INIT_MS / 1e3, time.thread_time)
        return {"k": 0}

    def step(self, s):
        busy_wait((0.1 if s["k"] % 2 else 3.0) / 1e3, time.thread_time)
        return {"k": s["k"] + 1}

    def energy(self, s) -> float:
        return 1.0 / (1 + s["k"])

    def outputs(self, s):
        return {"k": s["k"]}

    def sample_inputs(self, seed: int) -> PluginInputs:
        return PluginInputs(tick=seed, frames={"s": Frame("s", seed, time.time_ns(), "tensor", torch.zeros(1))})


def test_warm_up_measures_the_init_itself_and_a_job_can_start_on_that_much_credit(tmp_path):
    import logging

    from sage_runtime.plugin.contract import PluginContext, PluginOptions

    plugin = UnevenSteps()
    host = PluginHost(plugin, breaker_failures=3, breaker_cooldown_s=0.3, policy=JobPolicy(max_age_ms=60_000.0, nice=0))
    try:
        host.setup_and_warmup(PluginContext(torch.device("cpu"), PluginOptions(), tmp_path,
                                            logging.getLogger("test"))).result(timeout=60)
        # Measured on the plugin's thread clock: the 2 ms init, whatever the steps did.
        assert UnevenSteps.INIT_MS * 0.9 <= host.init_cost.ms <= UnevenSteps.INIT_MS * 2, host.summary()
        assert 0.1 <= host.cost.ms <= 3.0
        # Credit for the init (and a step) starts a job: the plugin is not priced out.
        host.submit(plugin.sample_inputs(1))
        done = wait_finished(host, feed=host.init_cost.ms + 3.5)
        assert done[0].result.steps > 0
    finally:
        host.close()
