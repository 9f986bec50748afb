"""Trust ledger scenarios: stale or disagreeing sensors fall below healthy ones and recover,
erroring plugins lose trust and are paused, trust survives a restart through a real file."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sage_runtime import statefile
from sage_runtime.cognition.trust import SCHEMA, TrustLedger, TrustParams

CONVERGING = [10.0, 6.0, 4.0, 3.5, 3.4, 3.4, 3.4]


def run_sensors(ledger: TrustLedger, t0: float, seconds: float, behave) -> float:
    """Record three 30 Hz sensors every 0.1 s; behave(name, t) -> (age_s, agreement)."""
    t = t0
    while t < t0 + seconds:
        for name in ("a", "b", "c"):
            age, agreement = behave(name, t)
            ledger.record_sensor(name, now=t, age_s=age, expected_period_s=1 / 30, agreement=agreement,
                                 received=1 if age < 0.1 else 0)
        t += 0.1
    return t


def healthy(name, t):
    return 0.01, 1.0


def test_a_stale_sensor_falls_below_the_healthy_ones_and_recovers():
    ledger = TrustLedger()
    t = run_sensors(ledger, 0.0, 10.0, healthy)
    assert min(ledger.sensor(n) for n in "abc") > 0.9
    stopped = t
    t = run_sensors(ledger, t, 3.0, lambda n, now: (now - stopped, 1.0) if n == "c" else (0.01, 1.0))
    assert ledger.sensor("c") < 0.3 < 0.9 < min(ledger.sensor("a"), ledger.sensor("b"))
    run_sensors(ledger, t, 10.0, healthy)
    assert ledger.sensor("c") > 0.9
    assert abs(ledger.sensor("c") - ledger.sensor("a")) < 0.05


def test_a_disagreeing_sensor_falls_below_the_others_and_recovers():
    ledger = TrustLedger()
    t = run_sensors(ledger, 0.0, 10.0, healthy)
    t = run_sensors(ledger, t, 5.0, lambda n, now: (0.01, 0.0 if n == "b" else 1.0))
    assert ledger.sensor("b") < 0.5 < 0.9 < min(ledger.sensor("a"), ledger.sensor("c"))
    run_sensors(ledger, t, 10.0, healthy)
    assert ledger.sensor("b") > 0.9


def test_sensor_trust_does_not_depend_on_the_update_rate():
    fast, slow = TrustLedger(), TrustLedger()
    for i in range(1001):
        fast.record_sensor("s", now=i * 0.01, age_s=0.0, expected_period_s=0.1)
    for i in range(11):
        slow.record_sensor("s", now=i * 1.0, age_s=0.0, expected_period_s=0.1)
    assert fast.sensor("s") == pytest.approx(slow.sensor("s"), abs=1e-9)


def test_dropped_frames_lower_sensor_trust():
    ledger = TrustLedger()
    for i in range(100):
        ledger.record_sensor("ok", now=i * 0.1, age_s=0.0, expected_period_s=0.1, received=3, dropped=0)
        ledger.record_sensor("lossy", now=i * 0.1, age_s=0.0, expected_period_s=0.1, received=1, dropped=2)
    assert ledger.sensor("lossy") < 0.5 < ledger.sensor("ok")


def test_an_erroring_plugin_loses_trust_and_is_paused_then_gets_a_retry():
    ledger = TrustLedger(TrustParams(pause_below=0.2, relax_half_life_s=60.0))
    for _ in range(30):
        ledger.record_plugin_run("good", CONVERGING, "converged", atp_spent=2.0)
        ledger.record_plugin_run("flaky", CONVERGING, "converged", atp_spent=2.0)
    assert ledger.plugin("good") > 0.7 and ledger.plugin("flaky") > 0.7
    for _ in range(5):
        ledger.record_plugin_error("flaky", "error")
    assert ledger.plugin("flaky") < 0.2 < ledger.plugin("good")
    assert ledger.plugin_paused("flaky") and not ledger.plugin_paused("good")
    assert ledger.paused_plugins() == ["flaky"]
    assert ledger.status()["plugins"]["flaky"]["paused"] is True
    ledger.relax(120.0)  # while paused it drifts back toward the prior: half-open retry
    assert not ledger.plugin_paused("flaky")
    for _ in range(30):
        ledger.record_plugin_run("flaky", CONVERGING, "converged", atp_spent=2.0)
    assert ledger.plugin("flaky") > 0.7


def test_halt_record_of_error_counts_as_error():
    ledger = TrustLedger()
    ledger.record_plugin_run("p", [1.0], "error", atp_spent=1.0)
    assert ledger.plugin("p") < 0.5
    assert ledger.snapshot()["plugins"]["p"]["errors"] == 1


@pytest.mark.parametrize("kind", ["timeout", "insensitive"])
def test_timeouts_and_input_insensitivity_cost_trust(kind):
    ledger = TrustLedger()
    ledger.record_plugin_run("p", CONVERGING, "converged", atp_spent=2.0)
    before = ledger.plugin("p")
    ledger.record_plugin_error("p", kind)
    assert ledger.plugin("p") < before
    with pytest.raises(ValueError):
        ledger.record_plugin_error("p", "meh")


def test_run_quality_rewards_monotone_converging_efficient_runs():
    ledger = TrustLedger()
    ledger.record_plugin_run("p", CONVERGING, "converged", atp_spent=2.0)
    good = ledger.run_quality("p", CONVERGING, "converged", atp_spent=2.0)
    oscillating = ledger.run_quality("p", [10.0, 12.0, 8.0, 11.0, 7.0, 9.0], "max_steps", atp_spent=2.0)
    wasteful = ledger.run_quality("p", CONVERGING, "converged", atp_spent=20.0)
    cut = ledger.run_quality("p", CONVERGING[:3], "deadline", atp_spent=2.0)
    assert good > wasteful and good > cut > oscillating
    assert all(0.0 <= q <= 1.0 for q in (good, oscillating, wasteful, cut))


def test_experts_are_trusted_per_context():
    ledger = TrustLedger(TrustParams(max_contexts=2, max_experts_per_context=2))
    assert ledger.expert("vision", "e1") == 0.5
    for _ in range(20):
        ledger.update_expert("vision", "e1", 1.0)
        ledger.update_expert("language", "e1", 0.0)
    assert ledger.expert("vision", "e1") > 0.8 and ledger.expert("language", "e1") < 0.2
    ledger.update_expert("vision", "e2", 0.9)
    ledger.update_expert("vision", "e3", 0.9)  # bounded: the least recently updated expert goes
    assert set(ledger.experts("vision")) == {"e2", "e3"}
    ledger.update_expert("audio", "e1", 0.9)
    assert ledger.experts("language") == {}  # bounded contexts
    with pytest.raises(ValueError):
        ledger.update_expert("vision", "e1", 1.5)


op = st.one_of(
    st.tuples(st.just("run"), st.lists(st.floats(-1e6, 1e6), max_size=8),
              st.sampled_from(["converged", "quota", "deadline", "max_steps", "error", "odd"]),
              st.floats(0, 1e4)),
    st.tuples(st.just("error"), st.sampled_from(["error", "timeout", "insensitive"])),
    st.tuples(st.just("sensor"), st.floats(0, 1e3), st.floats(0, 1e3), st.floats(1e-3, 10), st.floats(0, 1),
              st.integers(0, 5), st.integers(0, 5)),
    st.tuples(st.just("expert"), st.sampled_from(["c1", "c2"]), st.sampled_from(["x", "y"]), st.floats(0, 1)),
    st.tuples(st.just("relax"), st.floats(0, 1e5)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=40))
def test_every_value_stays_in_unit_range(ops):
    ledger = TrustLedger()
    for o in ops:
        if o[0] == "run":
            ledger.record_plugin_run("p", o[1], o[2], o[3])
        elif o[0] == "error":
            ledger.record_plugin_error("p", o[1])
        elif o[0] == "sensor":
            ledger.record_sensor("s", now=o[1], age_s=o[2], expected_period_s=o[3], agreement=o[4],
                                 received=o[5], dropped=o[6])
        elif o[0] == "expert":
            ledger.update_expert(o[1], o[2], o[3])
        else:
            ledger.relax(o[1])
    snap = ledger.snapshot()
    values = [e["trust"] for e in snap["plugins"].values()] + [e["trust"] for e in snap["sensors"].values()] \
        + [v for t in snap["experts"].values() for v in t.values()]
    assert all(0.0 <= v <= 1.0 for v in values)


def test_trust_survives_a_restart_through_a_real_file(tmp_path):
    ledger = TrustLedger()
    for i in range(50):
        ledger.record_plugin_run("vision", CONVERGING, "converged", atp_spent=2.0)
        ledger.record_sensor("cam", now=i * 0.1, age_s=0.0, expected_period_s=0.1)
        ledger.update_expert("scene", "e7", 0.9)
    for _ in range(3):
        ledger.record_plugin_error("broken", "error")
    path = tmp_path / "state" / "trust.json"
    statefile.write_atomic(path, ledger.snapshot(), kind="trust")

    restarted = TrustLedger()
    restarted.restore(statefile.read(path, kind="trust"))
    assert restarted.snapshot() == ledger.snapshot()
    assert restarted.plugin("vision") == ledger.plugin("vision") > 0.7
    assert restarted.sensor("cam") == ledger.sensor("cam")
    assert restarted.expert("scene", "e7") == ledger.expert("scene", "e7")
    assert restarted.plugin_paused("broken")
    restarted.record_sensor("cam", now=0.0, age_s=0.0, expected_period_s=0.1)  # fresh clock after restart
    assert restarted.sensor("cam") == ledger.sensor("cam")


def test_restore_refuses_a_foreign_or_malformed_snapshot_and_keeps_state():
    ledger = TrustLedger()
    ledger.record_plugin_error("p", "error")
    before = ledger.snapshot()
    for bad in ({"schema": "other", "version": 1}, {"schema": SCHEMA, "version": 2},
                {"schema": SCHEMA, "version": 1, "plugins": {"p": {"runs": 1}}},
                {"schema": SCHEMA, "version": 1, "sensors": {"s": {"trust": float("nan")}}}):
        with pytest.raises(ValueError):
            ledger.restore(bad)
    assert ledger.snapshot() == before
    ledger.restore({"schema": SCHEMA, "version": 1, "experts": {"c": {"x": 7.0}}})
    assert ledger.expert("c", "x") == 1.0  # clamped


def test_params_validate_and_name_the_field():
    for kwargs, name in (({"prior": 1.5}, "prior"), ({"w_monotonic": 0.9}, "sum to 1"),
                         ({"halt_scores": {"converged": 2.0}}, "halt_scores.converged"),
                         ({"penalties": {"error": 0.3}}, "penalties.timeout"), ({"sensor_tau_s": 0}, "sensor_tau_s")):
        with pytest.raises(ValueError, match=name):
            TrustParams(**kwargs)
