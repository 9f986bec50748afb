"""Suite-wide settings."""

from tests.harness import DaemonProcess

# Daemons in the suite run plugins in threads unless a test says otherwise: a worker process
# starts with a second or more of imports, and the suite starts ~150 daemons. The production
# default (`auto`: worker processes on CPU) is run by tests/test_isolation.py, tests/test_demo.py
# and tests/test_default_run.py.
DaemonProcess.plugin_isolation = "thread"
