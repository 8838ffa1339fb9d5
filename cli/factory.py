"""`floe factory --config site.toml`: keep the site's batch queue topped up with pilots.

The pilot bundle is built once into the factory's workdir (and rewritten only when floe's pilot
sources change), so that every pilot starts the same file. `--once` runs one cycle per site and
exits, for checking a new config; `--check` only validates the config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, metavar="SITE.toml",
                        help="the factory config (see docs/factory.md)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="run one cycle for each site, print what each decided, and exit")
    mode.add_argument("--check", action="store_true",
                      help="validate the config and the site tokens, and exit")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"),
                        help="how much the factory logs on stderr (default info)")


def bundle_in(workdir: Path) -> Path:
    """`workdir/pilot.pyz`, built now unless it already holds the same bytes."""
    from pilot.bundle import build

    target = workdir / "pilot.pyz"
    fresh = build(workdir / ".pilot.pyz.new")
    if target.exists() and target.read_bytes() == fresh.read_bytes():
        fresh.unlink()
    else:
        fresh.replace(target)
    return target


def run(args: argparse.Namespace) -> int:
    from config.factory import load_factory_config, site_token
    from config.schema import ConfigError
    from factory.service import Factory
    from plugins import PluginConfigError

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s floe factory: %(message)s")
    try:
        config = load_factory_config(args.config)
        for site in config.sites:
            site_token(site)
        if args.check:
            print(f"{args.config}: valid; sites: "
                  + ", ".join(f"{s['name']} ({s['plugin']}, {len(s['shapes'])} shapes)"
                              for s in config.sites))
            return 0
        config.workdir.mkdir(parents=True, exist_ok=True)
        factory = Factory(args.config, bundle_in(config.workdir))
        factory.load()
    except (ConfigError, PluginConfigError) as exc:
        print(f"floe factory: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"floe factory: {exc}", file=sys.stderr)
        return 1
    if args.once:
        for runner in list(factory.runners.values()):
            decision = runner.cycle()
            print(json.dumps(runner.status(runner.clock()), indent=1))
            if decision is None:
                return 1
        return 0
    factory.install_signals()
    return factory.run()


SUBCOMMANDS = {"factory": ("keep a site's batch queue topped up with pilots", configure, run)}
