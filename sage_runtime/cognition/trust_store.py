"""Where the trust ledger lives between runs: one state file, restored at start, saved atomically.

The ledger itself (cognition/trust.py) is pure logic; this is its I/O, with what status reports
about it (restored or not, saves, the last save error)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sage_runtime import statefile
from sage_runtime.cognition.trust import TrustLedger

log = logging.getLogger("sage.cognition")

TRUST_FILE = "trust.json"


class TrustStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / TRUST_FILE
        self.restore_result = "none saved"
        self.restored: statefile.Restored | None = None
        self.saves = 0
        self.save_error: str | None = None

    def restore(self, trust: TrustLedger) -> str:
        """Load the saved ledger into `trust`; a corrupt file is set aside (statefile), a missing
        or unreadable one starts fresh; says which."""
        self.restored = statefile.restore_or_set_aside(self.path, kind="trust", apply=trust.restore)
        self.restore_result = self.restored.describe()
        return self.restore_result

    def save(self, snapshot: dict[str, Any]) -> None:
        """Atomic write (temp file, fsync, rename); a failure is reported in status, not raised."""
        try:
            statefile.write_atomic(self.path, snapshot, kind="trust")
        except OSError as exc:
            self.save_error = f"{exc.strerror or exc} ({self.path})"
            log.error("saving the trust ledger failed: %s", self.save_error)
            return
        self.saves += 1
        self.save_error = None

    def status(self) -> dict[str, Any]:
        return {"restore": self.restore_result, "saves": self.saves, "save_error": self.save_error,
                "file": str(self.path)}

    def health_reasons(self) -> list[str]:
        reasons = []
        if self.restored is not None and self.restored.status in ("corrupt", "failed"):
            reasons.append(f"trust ledger not restored: {self.restore_result}")
        if self.save_error:
            reasons.append(f"trust ledger not saved: {self.save_error}")
        return reasons
