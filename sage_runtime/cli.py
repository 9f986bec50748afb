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

#: The hash seed of a deterministic replay (cli re-executes itself under it).
HASH_SEED = "0"
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
    rep = p.add_argument_group("deterministic replay (docs/operations.md)")
    rep.add_argument("--replay", metavar="IN.mcap",
                     help="run over a `sagectl record` file instead of live ingest; exit 0 when it ends")
    rep.add_argument("--deterministic", action="store_true",
                     help="with --replay: virtual time from the recording and fixed step costs (config `replay`), "
                          "so two runs publish identical results")
    rep.add_argument("--record-results", metavar="OUT.mcap",
                     help="with --replay: also write results and state transitions to an MCAP file")
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
    if (args.deterministic or args.record_results) and not args.replay:
        raise ConfigError("--deterministic and --record-results go with --replay IN.mcap")
    if args.replay and (not args.deterministic or args.demo):
        raise ConfigError("--replay runs with --deterministic (and without --demo); to publish a recording into "
                          "a running daemon with its timing, use `sagectl replay`")
    cfg, demo_module = check(args.config, args.demo)
    if args.replay and not args.check_config:
        from sage_runtime.replay import serve_replay

        return serve_replay(cfg, args.config, args.replay, args.record_results)
    if args.check_config:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    from sage_runtime.daemon import serve

    return serve(cfg, args.config, demo=demo_module)


def main(argv: list[str] | None = None) -> int:
    log_early_signals()  # before the heavy imports: config alone takes ~0.45 s (numpy, pydantic)
    args = build_parser().parse_args(argv)
    if args.deterministic and os.environ.get("PYTHONHASHSEED") != HASH_SEED and argv is None:
        # Set and dict-of-set orders follow the hash seed: a deterministic run fixes it, by re-executing.
        os.execve(sys.executable, [sys.executable, "-c", "import sys; from sage_runtime.cli import main; "
                                   "sys.exit(main())", *sys.argv[1:]], {**os.environ, "PYTHONHASHSEED": HASH_SEED})
    try:
        return run(args)
    except (AlreadyRunning, ConfigError) as exc:
        code = next(code for kind, code in EXIT_CODES if isinstance(exc, kind))
        print(f"sage-runtime: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
