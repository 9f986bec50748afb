"""Per-tick cognition: the pure logic (metabolic state machine, ATP ledger, SNARC salience, trust)
and the attention modules, glued together by `plan.Cognition` on the compute thread."""
