"""The metabolic state machine: every edge driven, none unreachable, dwell, override, plans."""

from __future__ import annotations

import itertools
import re
from collections import deque
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter

from sage_runtime.cognition.metabolic import (
    CONDITIONS, DEFAULT_EDGES, Edge, MetabolicInputs, MetabolicMachine, MetabolicParams, MetabolicState,
    StatePolicy,
)
from sage_runtime.cognition.salience import SnarcScorer, featurize

S = MetabolicState


def candidate_inputs(params: MetabolicParams) -> list[MetabolicInputs]:
    """One input per region of input space the table distinguishes.

    Every condition compares one field against a threshold (>= v or < v), so along each field the
    outcome can only change at the thresholds the table uses: a value below the smallest one and
    each threshold itself represent every region. The grid is the product of those per field."""
    thresholds: dict[str, set[float]] = {f.name: set() for f in fields(MetabolicInputs)}
    for edge in params.edges:
        for name, v in edge.when.items():
            thresholds[CONDITIONS[name][1]].add(v)
    values: dict[str, list] = {}
    for name, ts in thresholds.items():
        default = next(f.default for f in fields(MetabolicInputs) if f.name == name)
        below = min(ts) - (1 if name == "memory_pending" else 1e-6) if ts else default
        values[name] = [below, *sorted(ts)] if ts else [default]
    values["critical_event"] = [False, True]
    if thresholds["temperature_c"]:
        values["throttled"] = [False, True]
    names = list(values)
    return [MetabolicInputs(**dict(zip(names, combo))) for combo in itertools.product(*values.values())]


def explore(params: MetabolicParams) -> tuple[dict[int, MetabolicInputs], dict[S, list[int]]]:
    """Breadth-first search from the initial state over the input grid: a witness input for every
    edge taken, and the shortest edge path from the initial state to every state reached."""
    grid = candidate_inputs(params)
    witness: dict[int, MetabolicInputs] = {}
    path: dict[S, list[int]] = {params.initial: []}
    queue = deque([params.initial])
    while queue:
        state = queue.popleft()
        for x in grid:
            i = params.first_edge(state, x)
            if i is None or i in witness:
                continue
            witness[i] = x
            target = params.edges[i].target
            if target not in path:
                path[target] = path[state] + [i]
                queue.append(target)
    return witness, path


@pytest.fixture(scope="module")
def explored() -> tuple[dict[int, MetabolicInputs], dict[S, list[int]]]:
    return explore(MetabolicParams())


def test_no_edge_is_unreachable(explored):
    witness, path = explored
    params = MetabolicParams()
    missing = [f"{i}: {e.source.value}->{e.target.value} {e.when}" for i, e in enumerate(params.edges)
               if i not in witness]
    assert not missing, f"unreachable edges: {missing}"
    assert set(path) == set(MetabolicState)


def test_search_detects_a_shadowed_edge():
    """The reachability search is a real check: an edge hidden behind an earlier, broader one
    (the research code's FOCUS->REST at ATP < 15 behind FOCUS->WAKE at < 20) is reported."""
    shadowed = DEFAULT_EDGES + (Edge(S.FOCUS, S.REST, {"atp_below": 0.01, "salience_below": 0.2}),)
    params = MetabolicParams(edges=shadowed)
    witness, _ = explore(params)
    assert len(params.edges) - 1 not in witness
    assert all(i in witness for i in range(len(DEFAULT_EDGES)))


def test_drive_the_machine_through_every_edge(explored):
    """For each row of the table: walk from WAKE to its source state on real transitions, then
    take the edge itself; the reason names its conditions and the values that met them."""
    witness, path = explored
    params = MetabolicParams()
    for i, edge in enumerate(params.edges):
        m = MetabolicMachine(params, now=0.0)
        now = 0.0
        for j in path[edge.source] + [i]:
            now += 100.0
            t = m.update(witness[j], now)
            assert t is not None and t.edge == j, (i, j, t)
            assert t.from_state is params.edges[j].source and t.to_state is params.edges[j].target
            assert m.state is params.edges[j].target and m.since == now
        for name in edge.when:
            assert name in t.reason
            assert CONDITIONS[name][1] in t.reason
        assert t.to_dict() == {"from": edge.source.value, "to": edge.target.value, "reason": t.reason,
                               "at": now, "edge": i}


def test_dwell_holds_non_crisis_edges_but_not_crisis_entry():
    m = MetabolicMachine(MetabolicParams(), now=0.0)
    salient = MetabolicInputs(max_salience=0.9, atp_fraction=1.0)
    dwell = m.policy.min_dwell_s
    assert m.update(salient, dwell / 2) is None
    assert m.state is S.WAKE
    t = m.update(salient, dwell)
    assert t is not None and t.to_state is S.FOCUS
    calm = MetabolicInputs(max_salience=0.0)
    assert m.update(calm, dwell + 0.1) is None  # FOCUS just entered: dwell holds it
    t = m.update(MetabolicInputs(critical_event=True), dwell + 0.2)
    assert t is not None and t.to_state is S.CRISIS  # CRISIS ignores dwell
    assert "critical_event" in t.reason


def test_crisis_lasts_its_dwell_after_the_last_critical_event():
    m = MetabolicMachine(MetabolicParams(), now=0.0)
    m.update(MetabolicInputs(critical_event=True), 0.0)
    dwell = m.policy.min_dwell_s
    assert m.state is S.CRISIS
    assert m.update(MetabolicInputs(critical_event=True), 1.0) is None
    assert m.update(MetabolicInputs(), 1.0 + dwell - 0.01) is None
    t = m.update(MetabolicInputs(), 1.0 + dwell)
    assert t is not None and t.to_state is S.WAKE


def test_override_holds_then_expires():
    m = MetabolicMachine(MetabolicParams(), now=0.0)
    t = m.override("REST", 10.0, now=1.0)
    assert t is not None and t.to_state is S.REST and t.edge is None and "override" in t.reason
    rested = MetabolicInputs(atp_fraction=1.0)  # REST -> WAKE would fire on this
    assert m.update(rested, 8.0) is None
    assert m.status(8.0)["override_left_s"] == pytest.approx(3.0)
    assert m.state is S.REST
    t = m.update(rested, 11.0)
    assert t is not None and t.from_state is S.REST and t.to_state is S.WAKE
    assert m.override_until is None


def test_critical_event_preempts_an_override_unless_configured_not_to():
    m = MetabolicMachine(MetabolicParams(), now=0.0)
    m.override(S.DREAM, 60.0, now=0.0)
    t = m.update(MetabolicInputs(critical_event=True), 1.0)
    assert t is not None and t.to_state is S.CRISIS and m.override_until is None
    m = MetabolicMachine(MetabolicParams(crisis_preempts_override=False), now=0.0)
    m.override(S.DREAM, 60.0, now=0.0)
    assert m.update(MetabolicInputs(critical_event=True), 1.0) is None


def test_clear_override_and_bad_durations():
    m = MetabolicMachine(MetabolicParams(), now=0.0)
    m.override(S.FOCUS, 100.0, now=0.0)
    m.clear_override()
    t = m.update(MetabolicInputs(max_salience=0.0), 50.0)
    assert t is not None and t.to_state is S.WAKE
    for bad in (0.0, -1.0, 1e9):
        with pytest.raises(ValueError, match="duration"):
            m.override(S.REST, bad, now=60.0)
    with pytest.raises(ValueError):
        m.override("SLEEP", 10.0, now=60.0)


def test_params_validate_and_name_the_field():
    with pytest.raises(ValueError, match="unknown condition 'salience_over'"):
        Edge(S.WAKE, S.FOCUS, {"salience_over": 0.5})
    with pytest.raises(ValueError, match="source equals target"):
        Edge(S.WAKE, S.WAKE, {"salience_above": 0.5})
    with pytest.raises(ValueError, match="DREAM has no outgoing edge"):
        MetabolicParams(edges=tuple(e for e in DEFAULT_EDGES if e.source is not S.DREAM))
    with pytest.raises(ValueError, match="spend_rate"):
        StatePolicy(spend_rate=-1.0)
    with pytest.raises(ValueError, match="unknown key"):
        MetabolicParams(policies={"FOCUS": {"allocation": "focus"}})


def test_params_load_from_config_shaped_data():
    """The table lives in config: pydantic validates the dataclasses from YAML-shaped data."""
    data = {"initial": "WAKE", "policies": {"FOCUS": {"spend_rate": 3.0}},
            "edges": [{"source": e.source.value, "target": e.target.value, "when": dict(e.when)}
                      for e in DEFAULT_EDGES]}
    params = TypeAdapter(MetabolicParams).validate_python(data)
    assert params.edges == DEFAULT_EDGES
    assert params.policy(S.FOCUS).spend_rate == 3.0
    assert params.policy(S.FOCUS).max_active_plugins == MetabolicParams().policy(S.FOCUS).max_active_plugins
    assert params.policy(S.REST) == MetabolicParams().policy(S.REST)
    data["edges"][0]["when"] = {"nope": 1}
    with pytest.raises(ValueError, match="nope"):
        TypeAdapter(MetabolicParams).validate_python(data)


def test_consolidation_plan_follows_the_state_and_pending_counts():
    m = MetabolicMachine(MetabolicParams(), now=0.0)
    assert m.consolidation_plan(10.0, {"memory": 4}) == {}  # WAKE consolidates nothing
    m.override(S.DREAM, 60.0, now=1.0)
    plan = m.consolidation_plan(10.0, {"memory": 3, "language": 1, "vision": 0})
    assert plan == pytest.approx({"memory": 7.5, "language": 2.5})
    assert m.consolidation_plan(10.0, {}) == {}


def test_each_state_sets_rate_plugins_and_pattern():
    params = MetabolicParams()
    for state in MetabolicState:
        m = MetabolicMachine(replace(params, initial=state), now=0.0)
        p = m.policy
        assert p is params.policy(state)
        assert m.status(1.0)["policy"]["tick_scale"] == p.tick_scale
    assert params.policy(S.FOCUS).spend_rate > 1 and params.policy(S.CRISIS).spend_rate > 1
    assert params.policy(S.REST).spend_rate < 1
    assert params.policy(S.DREAM).consolidate_share > 0


def test_salience_peak_hold_keeps_focus_through_calm_frames_between_salient_ones():
    m = MetabolicMachine(MetabolicParams(salience_half_life_s=1.0), now=0.0)
    states = []
    for tick in range(1000):  # 10 s at 100 Hz: a salient frame every 0.5 s for 6 s, then calm
        now = tick * 0.01
        salient = now < 6.0 and tick % 50 == 0
        m.update(MetabolicInputs(max_salience=0.8 if salient else 0.05), now)
        states.append(m.state)
    assert S.FOCUS in states[:300]
    first = states.index(S.FOCUS)
    assert all(s is S.FOCUS for s in states[first:600])
    assert states[-1] is S.WAKE
    raw = MetabolicMachine(MetabolicParams(salience_half_life_s=0.0), now=0.0)
    raw.update(MetabolicInputs(max_salience=0.8), 2.0)
    assert raw.state is S.FOCUS
    raw.update(MetabolicInputs(max_salience=0.05), 4.01)
    assert raw.state is S.WAKE


def test_docs_table_matches_the_code():
    text = (Path(__file__).resolve().parents[1] / "docs" / "metabolic.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| (\w+) \| (\w+) \| ([^|]+) \|$", text, flags=re.M)
    documented = [(int(i), src, dst, when.strip()) for i, src, dst, when in rows]
    expected = [(i, e.source.value, e.target.value, ", ".join(f"{k} {v:g}" for k, v in e.when.items()))
                for i, e in enumerate(DEFAULT_EDGES)]
    assert documented == expected
    for name, p in MetabolicParams().policies.items():
        row = f"| {name} | {p.tick_scale:g} | {p.max_active_plugins} | {p.spend_rate:g} | " \
              f"{p.consolidate_share:g} | {p.min_dwell_s:g} |"
        assert row in text


def test_salient_stream_holds_focus_and_a_calm_one_returns_to_wake():
    """SNARC and the machine together: a camera that steps to a new scene every 0.5 s from 3 s to
    10 s, steady (with sensor noise) before and after."""
    rng = np.random.default_rng(0)
    scorer, m = SnarcScorer(), MetabolicMachine(MetabolicParams(), now=0.0)
    scene = rng.normal(size=(16, 16))
    states = []
    for tick in range(1500):
        now = tick * 0.01
        if 3.0 <= now < 10.0 and tick % 50 == 0:
            scene = rng.normal(size=(16, 16)) * rng.uniform(0.5, 3.0) + rng.normal() * 2.0
        frame = scene + rng.normal(0, 0.01, scene.shape)
        total = scorer.score({"cam": featurize("tensor", frame)}, now)["cam"].total
        m.update(MetabolicInputs(max_salience=total), now)
        states.append(m.state)
    assert all(s is S.WAKE for s in states[:300])
    assert all(s is S.FOCUS for s in states[350:1000])
    assert states[-1] is S.WAKE


def test_all_params_work_as_pydantic_config_fields():
    """The daemon's config model uses these dataclasses as field types: typos are refused,
    range errors name the field, and a dump round-trips."""
    from pydantic import BaseModel, ConfigDict, ValidationError

    from sage_runtime.cognition.atp import AtpParams
    from sage_runtime.cognition.salience import SalienceParams
    from sage_runtime.cognition.trust import TrustParams

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        metabolic: MetabolicParams = MetabolicParams()
        atp: AtpParams = AtpParams()
        salience: SalienceParams = SalienceParams()
        trust: TrustParams = TrustParams()

    cfg = Config()
    assert Config.model_validate(cfg.model_dump(mode="json")) == cfg
    for bad, where in (({"atp": {"capacity_atpp": 3}}, "capacity_atpp"),
                       ({"metabolic": {"policies": {"FOCUS": {"spend_rat": 2}}}}, "spend_rat"),
                       ({"salience": {"weights": {"surprise": -1}}}, "weights.surprise"),
                       ({"trust": {"prior": 2}}, "prior")):
        with pytest.raises(ValidationError, match=where):
            Config.model_validate(bad)


def test_params_accept_plain_mappings_when_built_directly():
    params = MetabolicParams(policies={"FOCUS": {"spend_rate": 3.0}},
                             edges=[{"source": e.source.value, "target": e.target.value, "when": e.when}
                                    for e in DEFAULT_EDGES])
    assert params.policy(S.FOCUS).spend_rate == 3.0 and params.edges == DEFAULT_EDGES


def test_shipped_config_carries_the_transition_table():
    """The table lives in config: the embedded default.yaml writes it out, equal to the code's."""
    import yaml

    from sage_runtime.config import default_config_text, load_config
    from sage_runtime.cognition.metabolic import DEFAULT_POLICIES

    written = yaml.safe_load(default_config_text())["metabolic"]
    assert len(written["edges"]) == len(DEFAULT_EDGES)
    assert load_config(environ={}).metabolic.edges == DEFAULT_EDGES
    assert load_config(environ={}).metabolic.policies == DEFAULT_POLICIES
