"""Plugins: the contract a plugin implements, the runner that holds it to its budget, the host
thread that isolates it, the registry that finds it."""
