"""ATP ledger: the compute-time reservoir. 1 ATP = 1 ms of measured plugin compute.

Pure logic: no I/O, no clock. The reservoir refills at the sustainable duty cycle (ATP per wall
second = duty_cycle * 1000), derated by thermal telemetry; every debit is a measured cost.
Amounts are kept as integers of micro-ATP (1 unit = 1 microsecond of compute) so the books
balance exactly, not to within float rounding:

    level == start + recharged - spilled - debited + debt      (all integers, see audit())

A plugin may overrun its grant (a step cannot be cut short). The overrun is taken from the
level; what the level cannot cover becomes debt, paid first from later recharges, so the level
stays in [0, capacity] and nothing can be granted until the debt is cleared.

Tick-loop use:

    ledger.recharge(dt_s, telemetry.derate(sample, telemetry_params))
    budget = ledger.budget(machine.policy.spend_rate, period_s, derate_factor, wall_ms)
    for name, ask in allocation.items():    # the ATP allocator's split (cognition.py)
        granted = ledger.grant(ask)          # never more than available
        ... run the plugin with `granted` ATP ...
        ledger.settle(granted, result.atp_spent)   # measured ms
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field
from pydantic.dataclasses import dataclass

from sage_runtime.params import PARAMS

UNITS_PER_ATP = 1000


@dataclass(frozen=True, config=PARAMS)
class AtpParams:
    """capacity_atp: reservoir size (ms of compute). duty_cycle: sustainable share of wall time
    spent in plugins; recharge = duty_cycle * 1000 ATP per second. start_fraction: level at start.
    Thermal and power derating is telemetry.derate's (configured in the telemetry section)."""

    capacity_atp: float = Field(5000.0, gt=0, le=1e9)
    duty_cycle: float = Field(0.5, gt=0, le=1)
    start_fraction: float = Field(1.0, ge=0, le=1)
    #: Share of the capacity only CRISIS may spend, so a critical event still gets compute after
    #: FOCUS has drained the reservoir (keep it below the table's lowest atp_below threshold).
    crisis_reserve: float = Field(0.02, ge=0, lt=1)

    @property
    def recharge_per_s(self) -> float:
        return self.duty_cycle * 1000.0


def _units(atp: float, what: str) -> int:
    if not math.isfinite(atp) or atp < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {atp!r}")
    return round(atp * UNITS_PER_ATP)


class AtpLedger:
    """The reservoir. Public amounts are ATP floats; audit() gives the exact integer books."""

    def __init__(self, params: AtpParams | None = None) -> None:
        self.params = params or AtpParams()
        self._capacity = _units(self.params.capacity_atp, "capacity_atp")
        self._level = round(self._capacity * self.params.start_fraction)
        self._start = self._level
        self._reserved = 0
        self._debt = 0
        self._recharged = 0
        self._spilled = 0
        self._debited = 0
        self._granted = 0
        self._overrun = 0

    @property
    def capacity(self) -> float:
        return self._capacity / UNITS_PER_ATP

    @property
    def level(self) -> float:
        """ATP in the reservoir, reservations included; in [0, capacity]."""
        return self._level / UNITS_PER_ATP

    @property
    def available(self) -> float:
        """What grant() can hand out now: level minus outstanding reservations."""
        return max(self._level - self._reserved, 0) / UNITS_PER_ATP

    @property
    def fraction(self) -> float:
        """level / capacity, the machine's atp_fraction input (0 while in debt)."""
        return self._level / self._capacity

    @property
    def debt(self) -> float:
        return self._debt / UNITS_PER_ATP

    def recharge(self, dt_s: float, derate_factor: float = 1.0) -> float:
        """Credit dt_s of wall time at the derated duty cycle; pays debt first, spills above
        capacity. Returns the ATP credited (before debt and spill)."""
        if not 0 <= derate_factor <= 1:
            raise ValueError(f"derate must be in [0, 1], got {derate_factor!r}")
        amount = _units(self.params.recharge_per_s * derate_factor * dt_s, "recharge (dt_s)")
        pay = min(self._debt, amount)
        self._debt -= pay
        self._level += amount - pay
        spill = max(self._level - self._capacity, 0)
        self._level -= spill
        self._recharged += amount
        self._spilled += spill
        return amount / UNITS_PER_ATP

    def budget(self, spend_rate: float, period_s: float, derate_factor: float = 1.0,
               wall_ms: float = math.inf, crisis: bool = False) -> float:
        """What one tick may plan to spend: spend_rate times the derated recharge over the tick
        period, capped by what is available (less the crisis reserve, unless in CRISIS) and by
        the wall time the tick gives plugins."""
        pace = spend_rate * self.params.recharge_per_s * derate_factor * period_s
        usable = self.available if crisis else self.available - self.params.crisis_reserve * self.capacity
        return max(min(pace, usable, wall_ms), 0.0)

    def grant(self, requested: float) -> float:
        """Reserve up to `requested` ATP; returns the grant, never more than available."""
        _units(requested, "requested ATP")
        want = math.floor(requested * UNITS_PER_ATP)
        if want / UNITS_PER_ATP > requested:  # float rounding of requested * 1000 went up
            want -= 1
        granted = min(want, max(self._level - self._reserved, 0))
        self._reserved += granted
        self._granted += granted
        return granted / UNITS_PER_ATP

    def settle(self, granted: float, measured_ms: float) -> None:
        """Release a grant and debit the measured compute time (0 if the plugin did not run).
        An overrun beyond the level becomes debt."""
        g = _units(granted, "granted ATP")
        if g > self._reserved:
            raise ValueError(f"settle of {granted} ATP exceeds the {self._reserved / UNITS_PER_ATP} reserved")
        cost = _units(measured_ms, "measured_ms")
        self._reserved -= g
        self._debited += cost
        self._overrun += max(cost - g, 0)
        if cost <= self._level:
            self._level -= cost
        else:
            self._debt += cost - self._level
            self._level = 0

    def audit(self) -> dict[str, int]:
        """The exact books, in micro-ATP: level == start + recharged - spilled - debited + debt."""
        return {"start": self._start, "level": self._level, "capacity": self._capacity,
                "reserved": self._reserved, "debt": self._debt, "recharged": self._recharged,
                "spilled": self._spilled, "debited": self._debited, "granted": self._granted,
                "overrun": self._overrun}

    def status(self) -> dict[str, Any]:
        """For `sagectl status`."""
        u = UNITS_PER_ATP
        return {"level": self._level / u, "capacity": self._capacity / u, "fraction": round(self.fraction, 4),
                "available": self.available, "debt": self._debt / u, "reserved": self._reserved / u,
                "recharge_per_s": self.params.recharge_per_s, "recharged_total": self._recharged / u,
                "debited_total": self._debited / u, "spilled_total": self._spilled / u,
                "overrun_total": self._overrun / u}
