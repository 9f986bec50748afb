"""ATP ledger: exact conservation over long random runs, no grant above what is available,
bursts in FOCUS/CRISIS drain the reservoir and REST pays it back, derating from telemetry."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sage_runtime.cognition.atp import UNITS_PER_ATP, AtpLedger, AtpParams
from sage_runtime.cognition.metabolic import MetabolicParams, MetabolicState

POLICIES = MetabolicParams().policies


def check_books(ledger: AtpLedger) -> None:
    a = ledger.audit()
    assert a["level"] == a["start"] + a["recharged"] - a["spilled"] - a["debited"] + a["debt"]
    assert 0 <= a["level"] <= a["capacity"]
    assert a["debt"] >= 0 and a["reserved"] >= 0
    assert a["debt"] == 0 or a["level"] == 0  # debt exists only with an empty reservoir


def run_ticks(ledger: AtpLedger, rng: random.Random, ticks: int) -> int:
    """Random tick loop as the daemon drives it: recharge over the tick, a budget from a random
    state's policy, grants for a few plugins, then measured costs (often overrunning). Returns
    the number of grants checked."""
    grants = 0
    states = list(POLICIES.values())
    for _ in range(ticks):
        dt = rng.choice((0.0, 0.001, 0.01, 0.01, 0.01, 0.1, 2.0)) * rng.random()
        factor = rng.choice((1.0, 1.0, 0.7, 0.2, 0.0))  # telemetry derating
        ledger.recharge(dt, factor)
        check_books(ledger)
        policy = rng.choice(states)
        budget = ledger.budget(policy.spend_rate, max(dt, 0.01), factor, wall_ms=rng.choice((8.0, math.inf)))
        assert budget <= ledger.available + 1e-9
        outstanding = []
        tick_available = ledger.available
        tick_granted = 0.0
        for _ in range(rng.randrange(0, 5)):
            ask = rng.choice((budget, budget / 3, rng.random() * 2 * budget, rng.random() * 50))
            before = ledger.available
            granted = ledger.grant(ask)
            grants += 1
            assert 0 <= granted <= before and granted <= ask
            tick_granted += granted
            outstanding.append(granted)
            check_books(ledger)
        assert tick_granted <= tick_available + 1e-9
        rng.shuffle(outstanding)
        for granted in outstanding:
            roll = rng.random()
            measured = 0.0 if roll < 0.1 else granted * rng.uniform(0.2, 1.0) if roll < 0.8 \
                else granted * rng.uniform(1.0, 3.0) + rng.random() * 20
            ledger.settle(granted, measured)
            check_books(ledger)
    assert ledger.audit()["reserved"] == 0
    return grants


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=(Phase.explicit, Phase.reuse, Phase.generate))  # too long to shrink: see the ops test
@given(capacity=st.floats(1.0, 20000.0), duty=st.floats(0.01, 1.0), start=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**32 - 1))
def test_conservation_over_100k_random_ticks(capacity, duty, start, seed):
    """Each example is one run of 100,000 ticks with hypothesis-chosen parameters and seed."""
    ledger = AtpLedger(AtpParams(capacity_atp=capacity, duty_cycle=duty, start_fraction=start))
    grants = run_ticks(ledger, random.Random(seed), 100_000)
    a = ledger.audit()
    assert grants > 100_000
    assert a["debited"] > 0 and a["recharged"] > 0


op = st.one_of(
    st.tuples(st.just("recharge"), st.floats(0, 10), st.floats(0, 1)),
    st.tuples(st.just("grant"), st.floats(0, 1e4), st.just(0.0)),
    st.tuples(st.just("settle"), st.floats(0, 4), st.floats(0, 100)),
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.floats(0.5, 1e4), start=st.floats(0, 1), ops=st.lists(op, max_size=60))
def test_conservation_for_any_sequence_of_operations(capacity, start, ops):
    """Shrinkable counterpart of the long run: arbitrary interleavings of recharge, grant and
    settle (a settle pays a random share of the oldest outstanding grant plus an overrun)."""
    ledger = AtpLedger(AtpParams(capacity_atp=capacity, duty_cycle=0.5, start_fraction=start))
    outstanding: list[float] = []
    for kind, a, b in ops:
        if kind == "recharge":
            ledger.recharge(a, b)
        elif kind == "grant":
            before = ledger.available
            g = ledger.grant(a)
            assert g <= before and g <= a
            outstanding.append(g)
        elif outstanding:
            g = outstanding.pop(0)
            ledger.settle(g, g * a / 2 + (b if a > 3 else 0.0))
        check_books(ledger)


def test_focus_and_crisis_burst_and_rest_pays_back():
    params = AtpParams(capacity_atp=1000.0, duty_cycle=0.5, start_fraction=0.5)
    period = 0.01

    def run(state: MetabolicState, ticks: int, ledger: AtpLedger) -> float:
        start = ledger.level
        for _ in range(ticks):
            ledger.recharge(period)
            g = ledger.grant(ledger.budget(POLICIES[state.value].spend_rate, period))
            ledger.settle(g, g)  # spends everything it is granted
        return ledger.level - start

    net = {state: run(state, 20, AtpLedger(params)) for state in MetabolicState}
    assert net[MetabolicState.WAKE] == pytest.approx(0.0, abs=1e-6)  # spends what it earns
    assert net[MetabolicState.CRISIS] < net[MetabolicState.FOCUS] < 0  # bursts from the reservoir
    assert net[MetabolicState.REST] > 0 and net[MetabolicState.DREAM] > 0  # pay it back
    ledger = AtpLedger(params)
    run(MetabolicState.FOCUS, 100, ledger)
    reserve = params.crisis_reserve * params.capacity_atp
    assert ledger.level == pytest.approx(reserve)  # FOCUS stops at the crisis reserve
    run(MetabolicState.REST, 200, ledger)
    assert ledger.level == pytest.approx(reserve + 0.75 * 200 * 5.0)


def test_overrun_becomes_debt_paid_by_the_next_recharge():
    ledger = AtpLedger(AtpParams(capacity_atp=10.0, duty_cycle=0.1, start_fraction=1.0))
    g = ledger.grant(50.0)
    assert g == 10.0 and ledger.available == 0.0
    assert ledger.grant(1.0) == 0.0
    ledger.settle(g, 25.0)  # a step that could not be cut short
    assert ledger.level == 0.0 and ledger.debt == 15.0
    ledger.recharge(0.1)  # 10 ATP: all of it to the debt
    assert ledger.debt == 5.0 and ledger.available == 0.0
    ledger.recharge(0.1)
    assert ledger.debt == 0.0 and ledger.level == 5.0
    assert ledger.audit()["overrun"] == 15 * UNITS_PER_ATP
    check_books(ledger)


def test_spill_at_capacity_and_bad_amounts():
    ledger = AtpLedger(AtpParams(capacity_atp=100.0, duty_cycle=1.0, start_fraction=0.5))
    ledger.recharge(1.0)
    assert ledger.level == 100.0 and ledger.audit()["spilled"] == 950 * UNITS_PER_ATP
    with pytest.raises(ValueError, match="exceeds"):
        ledger.settle(1.0, 1.0)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            ledger.grant(bad)
        with pytest.raises(ValueError):
            ledger.recharge(bad)
    with pytest.raises(ValueError, match="derate"):
        ledger.recharge(1.0, 1.5)
    check_books(ledger)


def test_params_validate_and_name_the_field():
    for kwargs, name in (({"capacity_atp": 0}, "capacity_atp"), ({"duty_cycle": 1.5}, "duty_cycle"),
                         ({"start_fraction": -0.1}, "start_fraction")):
        with pytest.raises(ValueError, match=name):
            AtpParams(**kwargs)


def test_crisis_reserve_is_spent_only_in_crisis():
    ledger = AtpLedger(AtpParams(capacity_atp=100.0, duty_cycle=0.5, crisis_reserve=0.1))
    ledger.settle(ledger.grant(95.0), 95.0)  # 5 ATP left, under the 10 ATP reserve
    assert ledger.budget(4.0, 1.0) == 0.0
    assert ledger.budget(4.0, 1.0, crisis=True) == pytest.approx(5.0)
