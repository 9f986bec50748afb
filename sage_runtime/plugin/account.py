"""A plugin's ATP account: the grants the tick credits to it and the measured steps its host
thread charges. Two threads touch it (the tick and the plugin's), hence the lock; the ledger it
settles with (`cognition.atp`) stays pure logic."""

from __future__ import annotations

import threading

from sage_runtime.cognition.atp import UNITS_PER_ATP, _units


class PluginAccount:
    """One plugin's credit: ATP the tick granted it (reserved in the ledger) that its host thread
    has not spent yet. Jobs outlive a tick, so grants accumulate here across ticks.

    Thread-safe (the tick deposits and collects, the host thread checks and charges):

    - `deposit(granted)`: a grant from the ledger joins the credit;
    - `can_afford(cost)`: the host thread starts a step only when credit - charged >= cost;
    - `charge(measured)`: a finished step's (or init's, or outputs') measured ms;
    - `collect(keep)`: the tick settles with the ledger: returns (used, debit, returned), where
      `used` = min(debit, credit) of the grant is consumed by the measured `debit` (any excess is
      the ledger's overrun) and `returned` is credit above `keep` handed back unspent.

    The tick calls `ledger.settle(used + returned, debit)` with what collect returns, so every
    debit is a measured cost and no credit outlives its `keep` cap (docs/metabolic.md, "Credit").
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._credit = 0   # micro-ATP reserved in the ledger for this plugin
        self._charged = 0  # micro-ATP measured since the last collect
        self.deposited_total = 0.0
        self.charged_total = 0.0

    @property
    def credit(self) -> float:
        """Spendable ATP now (granted, not yet charged)."""
        with self._lock:
            return max(self._credit - self._charged, 0) / UNITS_PER_ATP

    def deposit(self, granted: float) -> None:
        units = _units(granted, "granted ATP")
        with self._lock:
            self._credit += units
            self.deposited_total += units / UNITS_PER_ATP

    def can_afford(self, cost_ms: float) -> bool:
        with self._lock:
            return self._credit - self._charged >= _units(max(cost_ms, 0.0), "cost")

    def charge(self, measured_ms: float) -> None:
        units = _units(max(measured_ms, 0.0), "measured_ms")
        with self._lock:
            self._charged += units
            self.charged_total += units / UNITS_PER_ATP

    def collect(self, keep: float) -> tuple[float, float, float]:
        """(used, debit, returned) in ATP since the last collect; see the class docstring."""
        cap = _units(max(keep, 0.0), "keep")
        with self._lock:
            debit = self._charged
            used = min(debit, self._credit)
            self._credit -= used
            self._charged = 0
            returned = max(self._credit - cap, 0)
            self._credit -= returned
        u = UNITS_PER_ATP
        return used / u, debit / u, returned / u
