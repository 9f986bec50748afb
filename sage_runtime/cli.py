"""`sage-runtime`: the command line. It only parses and validates; `daemon.serve` runs.

torch and the tick machinery are imported only once the daemon really starts, so `--version`,
`--help` and `--check-config` answer at once (the install script and health checks call them).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from sage_runtime import __version__
from sage_runtime.config import ConfigError, load_config

#: Exit codes: 2 a configuration (or plugin set) that cannot run, 3 another daemon already running.
EXIT_CONFIG = 2
EXIT_RUNNING = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sage-runtime", description="On-device cognition daemon.")
    p.add_argument("--version", action="version", version=f"sage-runtime {__version__}")
    p.add_argument("--config", metavar="PATH", help="YAML file overlaid on the embedded default")
    p.add_argument("--demo", action="store_true",
                   help="enable the built-in plugins and synthetic camera/text/IMU sources over ZeroMQ")
    p.add_argument("--check-config", action="store_true", help="validate the configuration, print it, exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.demo:
            from sage_plugins.demo import demo_overlay

            cfg = demo_overlay(cfg)
        from sage_runtime.edges.security import check_exposure

        check_exposure(cfg, args.config)
        if cfg.zenoh.enabled:
            if importlib.util.find_spec("zenoh") is None:
                raise ConfigError("zenoh.enabled: needs the zenoh extra: pip install 'sage-runtime[zenoh]'")
            from sage_runtime.edges.zenoh_bridge import check_config

            check_config(cfg.zenoh, cfg.ingest.max_message_bytes)
    except ConfigError as exc:
        print(f"sage-runtime: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    from sage_runtime.daemon import serve

    return serve(cfg, args.config, demo=args.demo)


if __name__ == "__main__":
    sys.exit(main())
