"""Cognition as the tick uses it: salience and events move the state, fusion goes into the mailbox,
the selector picks which plugins run, the allocator splits ATP, grants never exceed the ledger."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from sage_runtime.plugin.account import PluginAccount
from sage_runtime.cognition.plan import Cognition, PluginView
from sage_runtime.cognition.status import cognition_status
from sage_runtime.config import SageConfig
from sage_runtime.records import Frame, RunResult
from sage_runtime.mailbox import Mailbox

PLUGINS = ["vision", "imu_filter", "planner"]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def mailbox():
    box = Mailbox(torch.device("cpu"))
    yield box
    box.close()


def make(tmp_path, mailbox, **overrides) -> tuple[Cognition, Clock]:
    clock = Clock()
    cfg = SageConfig.model_validate(overrides)
    return Cognition(cfg, PLUGINS, mailbox, tmp_path, torch.device("cpu"), clock=clock), clock


def frames(rng, event: str | None = None) -> dict[str, list[Frame]]:
    ts = time.time_ns()
    out = {"cam": [Frame("cam", 1, ts, "tensor", torch.from_numpy(rng.random((16, 16, 3), dtype=np.float32)))],
           "imu": [Frame("imu", 1, ts, "tensor", torch.from_numpy(rng.standard_normal(6).astype(np.float32)))]}
    if event:
        out["bus"] = [Frame("bus", 1, ts, "event", {"type": "estop", "priority": event})]
    return out


SENSORS = {"cam": ("image", 10.0), "imu": ("vector", 100.0), "bus": ("event", None)}
VIEWS = {"vision": PluginView(2.0, ("cam",)), "imu_filter": PluginView(0.5, ("imu",)),
         "planner": PluginView(1.0, ("bus",))}


def tick(cog: Cognition, clock: Clock, n: int, got: dict, pending: dict | None = None, budget_ms: float = 8.0,
         waiting: dict | None = None):
    clock.t += 0.01
    views = {k: replace(v, waiting_s=(waiting or {}).get(k, 0.0)) for k, v in VIEWS.items()
             if any(s in got for s in v.sensors)}
    plan = cog.plan(n, got, views, {s: SENSORS[s] for s in got}, budget_ms, 0.01, 0.0, pending or {})
    for name in plan.order:
        account = PluginAccount()  # what the tick does with a grant: credit, measured charge, collect
        account.deposit(plan.allocation[name])
        account.charge(plan.allocation[name] / 2)
        cog.settle_account(*account.collect(keep=0.0))
        cog.record_result(name, RunResult(name, "converged", 3, 0.1, [1.0, 0.5, 0.1], {}, 1.0,
                                          plan.allocation[name] / 2, 3))
    cog.release_unused()
    for lease in plan.leases:
        lease.release()
    return plan


def test_fused_context_is_in_the_mailbox_and_depends_on_the_input(tmp_path, mailbox):
    cog, clock = make(tmp_path, mailbox)
    rng = np.random.default_rng(0)
    first = tick(cog, clock, 1, frames(rng))
    assert first.fused is not None and first.fused.shape == (256,)
    a = first.fused.clone()
    second = tick(cog, clock, 2, frames(rng))
    assert not torch.equal(a, second.fused)
    assert mailbox.get("context/fused").last_seq >= 1
    weights = cognition_status(cog)["fusion"]["weights"]
    assert set(weights) == {"cam", "imu"} and sum(weights.values()) == pytest.approx(1.0, abs=1e-3)


def test_grants_never_exceed_the_ledger_and_debits_are_measured(tmp_path, mailbox):
    cog, clock = make(tmp_path, mailbox, atp={"capacity_atp": 30.0, "duty_cycle": 0.5})
    rng = np.random.default_rng(1)
    for n in range(1, 300):
        available = cog.ledger.available
        plan = tick(cog, clock, n, frames(rng))
        assert sum(plan.allocation.values()) <= available + 1e-9
        books = cog.ledger.audit()
        assert books["level"] == books["start"] + books["recharged"] - books["spilled"] - books["debited"] \
            + books["debt"]
        assert books["reserved"] == 0  # every grant was settled or released
    assert cog.ledger.audit()["debited"] > 0


def test_a_critical_event_is_crisis_in_the_same_tick_and_its_reader_runs_alone(tmp_path, mailbox):
    cog, clock = make(tmp_path, mailbox)
    rng = np.random.default_rng(2)
    calm = tick(cog, clock, 1, frames(rng))
    assert calm.state == "WAKE" and len(calm.order) >= 2
    plan = tick(cog, clock, 2, frames(rng, event="critical"))
    assert plan.state == "CRISIS" and plan.transitions and plan.transitions[0]["tick"] == 2
    assert plan.order == ["planner"]  # CRISIS runs one plugin: the one reading the event's sensor
    later = tick(cog, clock, 3, frames(rng))  # no new event, still CRISIS: planner has no input now
    assert later.state == "CRISIS" and len(later.order) <= 1


def test_the_selector_ranks_by_expert_trust_in_the_current_state(tmp_path):
    one = {s: {"max_active_plugins": 1} for s in ("WAKE",)}
    rng = np.random.default_rng(3)
    picked = {}
    for favourite in ("vision", "imu_filter"):
        box = Mailbox(torch.device("cpu"))
        cog, clock = make(tmp_path, box, metabolic={"policies": one}, attention={"selector_alpha": 1.0},
                          cognition={"abundant_fraction": None})
        for _ in range(50):
            cog.trust.update_expert("WAKE", favourite, 1.0)
            cog.trust.update_expert("FOCUS", favourite, 0.0)
        picked[favourite] = tick(cog, clock, 1, frames(rng)).order
        box.close()
    assert picked == {"vision": ["vision"], "imu_filter": ["imu_filter"]}


def test_a_plugin_kept_waiting_max_wait_s_runs_ahead_of_the_selectors_favourite(tmp_path, mailbox):
    one = {s: {"max_active_plugins": 1} for s in ("WAKE", "FOCUS")}
    cog, clock = make(tmp_path, mailbox, metabolic={"policies": one}, attention={"selector_alpha": 1.0},
                      cognition={"max_wait_s": 1.0, "abundant_fraction": None})
    for _ in range(50):
        cog.trust.update_expert("WAKE", "vision", 1.0)
        cog.trust.update_expert("FOCUS", "vision", 1.0)
        cog.trust.update_expert("WAKE", "imu_filter", 0.0)
        cog.trust.update_expert("FOCUS", "imu_filter", 0.0)
    rng = np.random.default_rng(5)
    assert tick(cog, clock, 1, frames(rng)).order == ["vision"]
    assert tick(cog, clock, 2, frames(rng), waiting={"imu_filter": 0.9}).order == ["vision"]
    assert tick(cog, clock, 3, frames(rng), waiting={"imu_filter": 1.0}).order == ["imu_filter"]
    # Two overdue: the longer wait first.
    assert tick(cog, clock, 4, frames(rng), waiting={"imu_filter": 1.5, "vision": 2.5}).order == ["vision"]
    assert tick(cog, clock, 5, frames(rng), waiting={"imu_filter": 3.0, "vision": 2.5}).order == ["imu_filter"]


def test_the_slot_limit_applies_while_atp_is_scarce_not_while_it_spills(tmp_path):
    """max_active_plugins 1: with the reservoir full every plugin with input is granted (a slot
    limit would only leave ATP to spill); below abundant_fraction only one is; CRISIS always one."""
    one = {s: {"max_active_plugins": 1} for s in ("WAKE", "FOCUS")}
    rng = np.random.default_rng(6)
    orders = {}
    for start in (1.0, 0.5):
        box = Mailbox(torch.device("cpu"))
        cog, clock = make(tmp_path, box, metabolic={"policies": one}, atp={"start_fraction": start},
                          cognition={"abundant_fraction": 0.9})
        orders[start] = tick(cog, clock, 1, frames(rng)).order
        if start == 1.0:
            assert tick(cog, clock, 2, frames(rng, event="critical")).order == ["planner"]
        box.close()
    assert sorted(orders[1.0]) == ["imu_filter", "vision"] and len(orders[0.5]) == 1


def request_grants(tmp_path, share: float) -> list[float]:
    """Per tick, what `planner` (answering requests, a 1 ATP step) is granted beside `vision`
    (a 2 ATP step, the selector's favourite) on a budget of about 5 ATP a tick."""
    box = Mailbox(torch.device("cpu"))
    cog, clock = make(tmp_path, box, attention={"selector_alpha": 1.0}, cognition={"request_share": share})
    for _ in range(50):
        cog.trust.update_expert("WAKE", "vision", 1.0)
        cog.trust.update_expert("WAKE", "planner", 0.0)
    rng = np.random.default_rng(7)
    views = {"vision": PluginView(2.0, ("cam",)), "planner": PluginView(1.0, ("bus",), requests=True)}
    got = []
    for n in range(1, 40):
        clock.t += 0.01
        plan = cog.plan(n, frames(rng), views, {s: SENSORS[s] for s in ("cam", "imu")}, 8.0, 0.01, 0.0, {})
        got.append(plan.allocation.get("planner", 0.0))
        for name, granted in plan.allocation.items():
            account = PluginAccount()
            account.deposit(granted)
            account.charge(granted)
            cog.settle_account(*account.collect(keep=0.0))
        for lease in plan.leases:
            lease.release()
    box.close()
    return got


def test_a_plugin_answering_requests_is_granted_its_next_step_first_every_tick(tmp_path):
    floor = request_grants(tmp_path, 0.5)
    assert min(floor) >= 1.0  # its step, every tick, whatever the selector prefers
    assert min(request_grants(tmp_path, 0.0)) < 1.0  # without the floor the favourite crowds it out


def test_a_plugin_paused_by_trust_gets_no_atp(tmp_path, mailbox):
    cog, clock = make(tmp_path, mailbox)
    for _ in range(5):
        cog.trust.record_plugin_error("vision")
    assert cog.trust.plugin_paused("vision")
    plan = tick(cog, clock, 1, frames(np.random.default_rng(4)))
    assert "vision" not in plan.allocation and plan.order


def test_dream_hands_its_budget_to_consolidation(tmp_path, mailbox):
    cog, clock = make(tmp_path, mailbox)
    cog.override("DREAM", 60.0)
    plan = tick(cog, clock, 1, {}, pending={"vision": 0, "planner": 3})
    assert plan.state == "DREAM" and plan.order == [] and set(plan.offline) == {"planner"}
    cog.settle_offline("planner", 0.5, {"merged": 2})
    cog.release_unused()
    assert cognition_status(cog)["consolidation"]["runs"] == 1 and cog.ledger.audit()["reserved"] == 0


def test_a_sensor_whose_data_does_not_fit_its_modality_is_counted_not_fused(tmp_path, mailbox):
    cog, clock = make(tmp_path, mailbox)
    got = frames(np.random.default_rng(5))
    bad = {**SENSORS, "imu": ("image", 100.0)}  # declared image, sends a 6-vector
    clock.t += 0.01
    plan = cog.plan(1, got, {}, {s: bad[s] for s in got}, 8.0, 0.01, 0.0, {})
    assert plan.fused is not None
    fusion = cognition_status(cog)["fusion"]
    assert fusion["errors"] == {"imu": 1} and set(fusion["weights"]) == {"cam"}
    for lease in plan.leases:
        lease.release()
