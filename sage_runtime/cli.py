"""`sage-runtime`: the command line. It parses arguments, checks the configuration, runs the
daemon and owns the exit codes: each typed failure (errors.py) maps to one code, never a match
on message text.

torch and the tick machinery are imported only once the plugins are resolved or the daemon
really starts, so `--version` and `--help` answer at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

# numpy's BLAS runs on the tick thread (salience, fusion on CPU): one thread, or OpenBLAS threads
# products of 10,000+ elements and its spin-waits cost milliseconds per call on a busy box. Set
# before numpy loads; an operator's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from sage_runtime import __version__
from sage_runtime.errors import AlreadyRunning, ConfigError, PluginLoadError
from sage_runtime.limits import log_early_signals

if TYPE_CHECKING:
    from sage_runtime.config import SageConfig

#: Exit codes: 2 a configuration (or plugin set) that cannot run, 3 another daemon already running.
EXIT_CONFIG = 2
EXIT_RUNNING = 3
#: Typed failure -> exit code, most specific first.
EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (AlreadyRunning, EXIT_RUNNING),
    (PluginLoadError, EXIT_CONFIG),
    (ConfigError, EXIT_CONFIG),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sage-runtime", description="On-device cognition daemon.")
    p.add_argument("--version", action="version", version=f"sage-runtime {__version__}")
    p.add_argument("--config", metavar="PATH", help="YAML file overlaid on the embedded default")
    p.add_argument("--demo", action="store_true",
                   help="enable the built-in plugins and synthetic camera/text/IMU sources over ZeroMQ")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration (plugin names and options included; no sockets, no "
                        "weights), print it, exit")
    return p


def check(config_path: str | None, demo: bool) -> tuple[SageConfig, Any]:
    """The configuration the daemon would run, and the demo module when asked for: every plugin
    name resolved and its options validated, endpoints checked; ConfigError / PluginLoadError."""
    from sage_runtime.config import load_config
    from sage_runtime.edges.security import check_exposure
    from sage_runtime.plugin.registry import check_plugins, load_demo

    cfg = load_config(config_path)
    demo_module = load_demo() if demo else None
    if demo_module is not None:
        cfg = demo_module.demo_overlay(cfg)
    check_exposure(cfg, config_path)
    check_plugins(cfg.plugins.enabled, cfg.plugins.options)
    if cfg.zenoh.enabled:
        check_zenoh(cfg)
    return cfg, demo_module


def check_zenoh(cfg: SageConfig) -> None:
    """The `zenoh` extra is installed and Zenoh itself accepts the section (endpoints, TLS, ACL)."""
    if importlib.util.find_spec("zenoh") is None:
        raise ConfigError("zenoh.enabled: needs the zenoh extra: pip install 'sage-runtime[zenoh]'")
    from sage_runtime.edges.zenoh_bridge import check_config

    check_config(cfg.zenoh, cfg.ingest.max_message_bytes)


def run(args: argparse.Namespace) -> int:
    cfg, demo_module = check(args.config, args.demo)
    if args.check_config:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    from sage_runtime.daemon import serve

    return serve(cfg, args.config, demo=demo_module)


def main(argv: list[str] | None = None) -> int:
    log_early_signals()  # before the heavy imports: config alone takes ~0.45 s (numpy, pydantic)
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (AlreadyRunning, ConfigError) as exc:
        code = next(code for kind, code in EXIT_CODES if isinstance(exc, kind))
        print(f"sage-runtime: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
