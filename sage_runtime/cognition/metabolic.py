"""Metabolic state machine: which mode the daemon is in, and what that mode lets it spend.

Pure logic: no I/O, no clock, no torch. Every time-dependent method takes `now` (seconds on any
monotonic clock), so the tick loop and the tests both drive time. The transition table is data
(`MetabolicParams.edges`), so it lives in config; docs/metabolic.md writes the default table out.

An edge fires when every condition in its `when` map holds (AND). Edges are tried in table order
and the first that fires wins, so order is priority (put CRISIS edges first). Conditions are a
fixed vocabulary of named predicates over `MetabolicInputs` (see CONDITIONS); nothing is
evaluated from strings.

Tick-loop use (one call each per tick, all pure):

    machine = MetabolicMachine(cfg.metabolic, now=time.monotonic())
    t = machine.update(MetabolicInputs(max_salience=..., atp_fraction=ledger.fraction, ...), now)
    if t: publish("state", t.to_dict())
    rate_hz = base_rate_hz * machine.policy.tick_scale
    offline = machine.consolidation_plan(budget_atp, pending_by_plugin)  # DREAM's share
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any, Callable, Mapping

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from sage_runtime.params import PARAMS


class MetabolicState(str, Enum):
    WAKE = "WAKE"
    FOCUS = "FOCUS"
    DREAM = "DREAM"
    CRISIS = "CRISIS"
    REST = "REST"


@dataclass(frozen=True)
class MetabolicInputs:
    """What the machine sees each tick. The tick loop fills it from salience, the ATP ledger,
    client events, its own counters and telemetry.

    max_salience / mean_salience: SNARC totals over the sensors scored this tick (0 with none).
    atp_fraction: AtpLedger.fraction (level / capacity).
    critical_event: a client `event` with priority `critical` arrived since the last tick.
    deadline_miss_rate, plugin_error_rate: over a recent window, in [0, 1]. Use a window (not a
        lifetime ratio), or CRISIS entered on errors can never clear.
    throttled, temperature_c: telemetry; temperature_c None when unavailable.
    idle_s: seconds since the last salient input (a frame whose salience exceeded a small floor,
        or any frame, as the tick loop decides).
    memory_pending: items waiting for consolidation (sum of plugins' pending_consolidation()).
    """

    max_salience: float = 0.0
    mean_salience: float = 0.0
    atp_fraction: float = 1.0
    critical_event: bool = False
    deadline_miss_rate: float = 0.0
    plugin_error_rate: float = 0.0
    throttled: bool = False
    temperature_c: float | None = None
    idle_s: float = 0.0
    memory_pending: int = 0


def _above(field_name: str) -> Callable[[MetabolicInputs, float], bool]:
    def test(x: MetabolicInputs, v: float) -> bool:
        value = getattr(x, field_name)
        return value is not None and value >= v
    return test


def _below(field_name: str) -> Callable[[MetabolicInputs, float], bool]:
    def test(x: MetabolicInputs, v: float) -> bool:
        value = getattr(x, field_name)
        return value is None or value < v
    return test


def _hot(x: MetabolicInputs, v: float) -> bool:
    return x.throttled or (x.temperature_c is not None and x.temperature_c >= v)


def _cool(x: MetabolicInputs, v: float) -> bool:
    return not _hot(x, v)


def _critical(x: MetabolicInputs, v: float) -> bool:
    return x.critical_event == (v != 0)


_NUMERIC = {
    "salience": "max_salience", "mean_salience": "mean_salience", "atp": "atp_fraction",
    "error_rate": "plugin_error_rate", "miss_rate": "deadline_miss_rate", "idle": "idle_s",
    "memory": "memory_pending",
}

#: name -> (predicate(inputs, threshold), inputs field it reads). `X_above: v` holds when X >= v,
#: `X_below: v` when X < v. `thermal_above: t` holds when throttled or temperature_c >= t;
#: `thermal_below: t` is its negation. `critical_event: 1` holds on a critical event, `: 0` without.
CONDITIONS: dict[str, tuple[Callable[[MetabolicInputs, float], bool], str]] = {
    **{f"{k}_above": (_above(f), f) for k, f in _NUMERIC.items()},
    **{f"{k}_below": (_below(f), f) for k, f in _NUMERIC.items()},
    "thermal_above": (_hot, "temperature_c"),
    "thermal_below": (_cool, "temperature_c"),
    "critical_event": (_critical, "critical_event"),
}


@pydantic_dataclass(frozen=True, config=PARAMS)
class Edge:
    """One row of the transition table: source -> target when every condition in `when` holds."""

    source: MetabolicState
    target: MetabolicState
    when: dict[str, float] = Field(min_length=1)

    @model_validator(mode="after")
    def _known(self) -> "Edge":
        if self.source is self.target:
            raise ValueError(f"edge {self.source.value}->{self.target.value}: source equals target")
        for name in self.when:
            if name not in CONDITIONS:
                raise ValueError(f"edge {self.source.value}->{self.target.value}: unknown condition "
                                 f"{name!r}; known: {', '.join(sorted(CONDITIONS))}")
        return self

    def fires(self, x: MetabolicInputs) -> bool:
        return all(CONDITIONS[name][0](x, v) for name, v in self.when.items())

    def explain(self, x: MetabolicInputs) -> str:
        """The reason string: each condition, its threshold and the value that met it."""
        parts = []
        for name, v in self.when.items():
            value = getattr(x, CONDITIONS[name][1])
            if name.startswith("thermal"):
                value = f"{value}, throttled={x.throttled}"
            elif isinstance(value, float):
                value = f"{value:.3g}"
            parts.append(f"{name} {v:g} ({CONDITIONS[name][1]}={value})")
        return " and ".join(parts)


@pydantic_dataclass(frozen=True, config=PARAMS)
class StatePolicy:
    """What a state lets the daemon do.

    tick_scale: multiplies the configured tick.rate_hz.
    max_active_plugins: online plugins run per tick (0: none). How their budget is split is the
        ATP allocator's per-state pattern (attention/allocator.py, docs/attention.md).
    spend_rate: per-tick budget as a multiple of the (derated) recharge rate; > 1 bursts from
        the reservoir (FOCUS, CRISIS), < 1 pays it back (REST).
    consolidate_share: share of the tick budget handed to consolidate() of plugins with
        pending memory (DREAM's work).
    min_dwell_s: time in this state before a non-CRISIS edge may leave it (hysteresis).
    """

    tick_scale: float = Field(1.0, gt=0, le=10)
    max_active_plugins: int = Field(3, ge=0)
    spend_rate: float = Field(1.0, ge=0, le=100)
    consolidate_share: float = Field(0.0, ge=0, le=1)
    min_dwell_s: float = Field(2.0, ge=0, le=3600)


_S = MetabolicState

DEFAULT_POLICIES: dict[str, StatePolicy] = {
    "WAKE": StatePolicy(1.0, 3, 1.0, 0.0, 2.0),
    "FOCUS": StatePolicy(1.0, 3, 2.0, 0.0, 2.0),
    "CRISIS": StatePolicy(1.0, 1, 4.0, 0.0, 3.0),
    "REST": StatePolicy(0.2, 1, 0.25, 0.0, 5.0),
    "DREAM": StatePolicy(0.1, 0, 0.5, 1.0, 5.0),
}

DEFAULT_EDGES: tuple[Edge, ...] = (
    Edge(_S.WAKE, _S.CRISIS, {"critical_event": 1}),
    Edge(_S.WAKE, _S.CRISIS, {"error_rate_above": 0.5}),
    Edge(_S.WAKE, _S.REST, {"atp_below": 0.1}),
    Edge(_S.WAKE, _S.REST, {"thermal_above": 85.0}),
    Edge(_S.WAKE, _S.REST, {"miss_rate_above": 0.5}),
    Edge(_S.WAKE, _S.FOCUS, {"salience_above": 0.4, "atp_above": 0.25}),
    Edge(_S.WAKE, _S.DREAM, {"idle_above": 30.0, "memory_above": 1, "atp_above": 0.25}),
    Edge(_S.FOCUS, _S.CRISIS, {"critical_event": 1}),
    Edge(_S.FOCUS, _S.CRISIS, {"error_rate_above": 0.5}),
    Edge(_S.FOCUS, _S.REST, {"atp_below": 0.05}),
    Edge(_S.FOCUS, _S.REST, {"thermal_above": 85.0}),
    Edge(_S.FOCUS, _S.REST, {"miss_rate_above": 0.5}),
    Edge(_S.FOCUS, _S.WAKE, {"salience_below": 0.2}),
    Edge(_S.CRISIS, _S.REST, {"critical_event": 0, "error_rate_below": 0.2, "atp_below": 0.25}),
    Edge(_S.CRISIS, _S.WAKE, {"critical_event": 0, "error_rate_below": 0.2}),
    Edge(_S.REST, _S.CRISIS, {"critical_event": 1}),
    Edge(_S.REST, _S.CRISIS, {"error_rate_above": 0.5}),
    Edge(_S.REST, _S.DREAM, {"idle_above": 30.0, "memory_above": 1, "atp_above": 0.25}),
    Edge(_S.REST, _S.WAKE, {"atp_above": 0.6, "thermal_below": 80.0, "miss_rate_below": 0.2}),
    Edge(_S.DREAM, _S.CRISIS, {"critical_event": 1}),
    Edge(_S.DREAM, _S.CRISIS, {"error_rate_above": 0.5}),
    Edge(_S.DREAM, _S.REST, {"atp_below": 0.1}),
    Edge(_S.DREAM, _S.REST, {"thermal_above": 85.0}),
    Edge(_S.DREAM, _S.WAKE, {"idle_below": 2.0}),
    Edge(_S.DREAM, _S.WAKE, {"memory_below": 1}),
)


@pydantic_dataclass(frozen=True, config=PARAMS)
class MetabolicParams:
    """The machine's config: initial state, one policy per state, the transition table.

    policies may name only some states, and only some keys of a state; the rest keep
        DEFAULT_POLICIES.
    crisis_preempts_override: a CRISIS edge still fires while a manual override holds.
    salience_half_life_s: the salience conditions see a peak-hold of max_salience that decays
        with this half-life (0: the raw value), so a stream of salient frames separated by calm
        ones holds FOCUS instead of flickering.
    """

    initial: MetabolicState = MetabolicState.WAKE
    #: state -> StatePolicy, or a mapping of just the keys that differ from that state's default.
    policies: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_POLICIES))
    edges: tuple[Edge, ...] = DEFAULT_EDGES
    crisis_preempts_override: bool = True
    max_override_s: float = Field(86400.0, gt=0)
    salience_half_life_s: float = Field(1.0, ge=0, le=3600)

    def __post_init__(self) -> None:
        """Merge partial policies over the defaults and index the table (after field validation)."""
        unknown = set(self.policies) - {s.value for s in MetabolicState}
        if unknown:
            raise ValueError(f"policies: unknown state(s) {', '.join(sorted(unknown))}")
        # A partial mapping overrides only the keys it names; the rest keep that state's default.
        given = {}
        for k, v in self.policies.items():
            if isinstance(v, Mapping):
                unknown = set(v) - set(asdict(DEFAULT_POLICIES[k]))
                if unknown:
                    raise ValueError(f"policies.{k}: unknown key(s) {', '.join(sorted(unknown))}")
                v = StatePolicy(**{**asdict(DEFAULT_POLICIES[k]), **v})
            given[k] = v
        object.__setattr__(self, "policies", {**DEFAULT_POLICIES, **given})
        sources = {e.source for e in self.edges}
        for state in MetabolicState:
            if state not in sources:
                raise ValueError(f"edges: state {state.value} has no outgoing edge (it would be a trap)")
        by_source = {s: tuple((i, e) for i, e in enumerate(self.edges) if e.source is s) for s in MetabolicState}
        object.__setattr__(self, "_by_source", by_source)

    def first_edge(self, state: MetabolicState, inputs: MetabolicInputs, crisis_only: bool = False) -> int | None:
        """Index of the first edge out of `state` that fires on `inputs` (table order is priority);
        with crisis_only, only edges into CRISIS are considered."""
        for index, edge in self._by_source[state]:  # type: ignore[attr-defined]
            if crisis_only and edge.target is not MetabolicState.CRISIS:
                continue
            if edge.fires(inputs):
                return index
        return None

    def policy(self, state: MetabolicState) -> StatePolicy:
        return self.policies[MetabolicState(state).value]


@dataclass(frozen=True)
class Transition:
    """A state change, as published on the `state` topic. edge: index in params.edges (None for a
    manual override)."""

    from_state: MetabolicState
    to_state: MetabolicState
    reason: str
    at: float
    edge: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.from_state.value, "to": self.to_state.value, "reason": self.reason,
                "at": self.at, "edge": self.edge}


class MetabolicMachine:
    """The one state machine. `state`, `since` (entry time), `reason` (why it is in this state)."""

    def __init__(self, params: MetabolicParams | None = None, now: float = 0.0) -> None:
        self.params = params or MetabolicParams()
        self.state: MetabolicState = self.params.initial
        self.since = now
        self.reason = "start"
        self.override_until: float | None = None
        self._dwell_from = now
        self._held = 0.0
        self._held_at = now

    @property
    def policy(self) -> StatePolicy:
        return self.params.policy(self.state)

    def _move(self, target: MetabolicState, reason: str, now: float, edge: int | None) -> Transition:
        t = Transition(self.state, target, reason, now, edge)
        self.state, self.since, self._dwell_from, self.reason = target, now, now, reason
        return t

    def update(self, inputs: MetabolicInputs, now: float) -> Transition | None:
        """Apply this tick's inputs; return the transition taken, if any.

        A non-CRISIS edge waits until the state has lasted its policy's min_dwell_s; an edge into
        CRISIS ignores dwell. A critical event while in CRISIS restarts CRISIS's dwell, so CRISIS
        lasts at least its dwell after the last one. While a manual override holds only CRISIS
        edges fire (if crisis_preempts_override); when it expires the table applies again.
        """
        inputs = self._hold_salience(inputs, now)
        if self.override_until is not None and now >= self.override_until:
            self.override_until = None
            self.reason = f"override expired; {self.reason}"
        if self.state is MetabolicState.CRISIS and inputs.critical_event:
            self._dwell_from = now
        if self.override_until is not None and not self.params.crisis_preempts_override:
            return None
        held = self.override_until is not None or now - self._dwell_from < self.policy.min_dwell_s
        index = self.params.first_edge(self.state, inputs, crisis_only=held)
        if index is None:
            return None
        edge = self.params.edges[index]
        self.override_until = None
        return self._move(edge.target, edge.explain(inputs), now, index)

    def _hold_salience(self, inputs: MetabolicInputs, now: float) -> MetabolicInputs:
        half = self.params.salience_half_life_s
        if half <= 0:
            return inputs
        decayed = self._held * 0.5 ** (max(now - self._held_at, 0.0) / half)
        self._held, self._held_at = max(inputs.max_salience, decayed), now
        return replace(inputs, max_salience=self._held) if self._held != inputs.max_salience else inputs

    def override(self, state: MetabolicState | str, duration_s: float, now: float) -> Transition | None:
        """`sagectl state set STATE --for DURATION`: hold `state` for duration_s, then let the table
        decide again. Returns the transition when the state changes."""
        target = MetabolicState(state)
        if not 0 < duration_s <= self.params.max_override_s:
            raise ValueError(f"override duration must be in (0, {self.params.max_override_s:g}] s")
        self.override_until = now + duration_s
        reason = f"override {target.value} for {duration_s:g}s (sagectl)"
        if target is self.state:
            self.reason, self._dwell_from = reason, now
            return None
        return self._move(target, reason, now, None)

    def clear_override(self) -> None:
        """End a manual override now; the table applies from the next update()."""
        if self.override_until is not None:
            self.override_until = None
            self.reason = f"override cleared; {self.reason}"

    def consolidation_plan(self, budget: float, pending: Mapping[str, int]) -> dict[str, float]:
        """ATP for consolidate() this tick: the state's consolidate_share of the tick budget (from
        AtpLedger.budget), split over plugins with items waiting in proportion to their count.
        Empty when nothing waits. Grant each entry from the ledger before running it."""
        waiting = {k: float(v) for k, v in pending.items() if v > 0}
        total = sum(waiting.values())
        offline = budget * self.policy.consolidate_share
        if not waiting or offline <= 0:
            return {}
        return {name: offline * n / total for name, n in sorted(waiting.items())}

    def status(self, now: float) -> dict[str, Any]:
        """For `sagectl status` / `sagectl state`."""
        left = None if self.override_until is None else max(self.override_until - now, 0.0)
        return {"name": self.state.value, "since_s": round(now - self.since, 3), "reason": self.reason,
                "override_left_s": left, "policy": asdict(self.policy)}
