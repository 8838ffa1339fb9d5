"""`floe factory --config site.toml`: keep the site's batch queue topped up with pilots.

The pilot bundle is built once into the factory's workdir (and rewritten only when floe's pilot
sources change), so that every pilot starts the same file. `--once` runs one cycle per site and
exits, for checking a new config; `--check` validates the config and tries, for each site, the
matchmaker with the site's token and the batch system (over ssh where the site says so) without
submitting anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from floe.factory.service import Factory


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, metavar="SITE.toml",
                        help="the factory config (see docs/factory.md)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="run one cycle for each site, print what each decided, and exit")
    mode.add_argument("--check", action="store_true",
                      help="validate the config, check each site's token with the matchmaker "
                           "and its batch system (and ssh connection), and exit (submits "
                           "nothing)")
    parser.add_argument("--matchmaker", metavar="URL",
                        help="the matchmaker's address, over FLOE_URL and the config's "
                             "`matchmaker` (the log's first line says which it uses)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"),
                        help="how much the factory logs on stderr (default info)")


def bundle_in(workdir: Path) -> Path:
    """`workdir/pilot.pyz`, built now unless it already holds the same bytes."""
    from floe.pilot.bundle import build

    target = workdir / "pilot.pyz"
    fresh = build(workdir / ".pilot.pyz.new")
    if target.exists() and target.read_bytes() == fresh.read_bytes():
        fresh.unlink()
    else:
        fresh.replace(target)
    return target


def check(config: Any) -> int:
    """`--check`: the config is valid and each plugin takes its site's settings; now ask the
    matchmaker with each site's token, and the batch system (through its login node)."""
    from floe.config.factory import site_token
    from floe.factory.matchmaker import MatchmakerError, SiteClient
    from floe.factory.site import build_plugin
    from floe.plugins import BatchError, PluginConfigError

    failed = False
    for site in config.sites:
        try:
            shapes, plugin = build_plugin(config, site)
        except PluginConfigError as exc:
            print(f"site {site.name}: {exc}", file=sys.stderr)
            failed = True
            continue
        try:
            for line in plugin.check(shapes):
                print(f"site {site.name}: {line}")
        except BatchError as exc:
            print(f"site {site.name}: {exc}", file=sys.stderr)
            failed = True
        client = SiteClient(config.matchmaker, site.name, site_token(site),
                            cacert=config.cacert, factory=config.factory_id)
        try:
            answer = client.demand([])
        except MatchmakerError as exc:
            print(f"site {site.name}: {exc}", file=sys.stderr)
            failed = True
            continue
        print(f"site {site.name}: {site.plugin}, {len(shapes)} shape{'s' * (len(shapes) != 1)}; "
              f"the matchmaker at {config.matchmaker} (from {config.matchmaker_source}) knows it "
              f"({answer['pilots']['running']} pilots running there)")
    if not failed:
        print(f"{config.path}: valid")
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    from floe.config.factory import load_factory_config, site_token
    from floe.config.schema import ConfigError
    from floe.factory.service import Factory
    from floe.factory.site import private_dir
    from floe.plugins import PluginConfigError

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s floe factory: %(message)s")
    try:
        config = load_factory_config(args.config, args.matchmaker)
        for site in config.sites:
            site_token(site)
        if args.check:
            return check(config)
        factory = Factory(args.config, bundle_in(private_dir(config.workdir)),
                          matchmaker=args.matchmaker)
        factory.load()
    except (ConfigError, PluginConfigError) as exc:
        print(f"floe factory: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"floe factory: {exc}", file=sys.stderr)
        return 1
    if args.once:
        return once(factory)
    factory.install_signals()
    return factory.run()


def once(factory: Factory) -> int:
    """One cycle of each site, each site's status printed: 0 when every site's cycle went
    without a failure, 1 (and the failure on stderr) when one did not."""
    status = 0
    for runner in list(factory.runners.values()):
        before = (runner.health.failures, runner.health.last_error)
        try:
            decision = runner.cycle()
        finally:
            runner.end_cycles()  # its claim and its connection to a login node end with it
        print(json.dumps(runner.status(runner.clock()), indent=1))
        failed = (runner.health.failures, runner.health.last_error) != before
        if decision is None or (failed and runner.health.last_error):
            why = runner.health.last_error or runner.last.get("matchmaker_error", "")
            print(f"floe factory: site {runner.name} failed in this cycle: "
                  f"{why or 'see the log above'}", file=sys.stderr)
            status = 1
    return status


SUBCOMMANDS = {"factory": ("keep a site's batch queue topped up with pilots", configure, run)}
