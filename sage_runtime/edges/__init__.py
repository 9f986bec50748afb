"""The daemon's edges to the outside: ZeroMQ ingest, results and control, CurveZMQ security, and
the systemd notifier. Edges know nothing of plugins."""
