"""`floe pilots`, `sites`, `users` and `shares`: who computes and for whom, as the pilots, sites
and fair-share pages show them."""

from __future__ import annotations

import argparse
from typing import Any

from floe.config.resources import format_duration, format_size

from .command import Command, add_paging, age, moment, next_page, subcommands, table
from .http import Client


def _pilots_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", help="only this site's pilots")
    parser.add_argument("--state", choices=("running", "exited", "lost"),
                        help="only pilots in this state")
    add_paging(parser, "pilots")


def _pilots_fetch(client: Client, args: argparse.Namespace) -> Any:
    answer = client.get("/api/v1/pilots", site=args.site, state=args.state, after=args.after,
                        limit=args.limit)
    pilots = answer["pilots"]
    answer["next"] = pilots[-1]["pilot_id"] if len(pilots) == args.limit else None
    return answer


def _gpus(resources: dict[str, Any]) -> str | None:
    gpus = resources.get("gpus") or []
    if not gpus:
        return None
    names = sorted({g.get("name") or "GPU" for g in gpus})
    return f"{len(gpus)}x {'/'.join(names)}"


def _pilots_show(data: Any, args: argparse.Namespace) -> None:
    if not data["pilots"]:
        print("no pilots match" if args.site or args.state else "no pilots have registered yet")
        return
    rows = []
    for p in data["pilots"]:
        measured = p["resources"]
        memory = measured.get("memory")
        rows.append([p["pilot_id"], p["site"], p["host"], p["state"], measured.get("cpus"),
                     format_size(memory) if memory else None, _gpus(measured),
                     ",".join(map(str, p["attempts"])) or None, age(p["registered"]),
                     age(p["last_seen"]), p["exit_reason"]])
    print(table(["ID", "SITE", "HOST", "STATE", "CPUS", "MEMORY", "GPUS", "RUNNING", "AGE",
                 "SEEN", "EXIT"], rows))
    next_page(args, data["next"])


def _nothing(parser: argparse.ArgumentParser) -> None:
    """No arguments of its own."""


def _get(path: str) -> Any:
    def fetch(client: Client, args: argparse.Namespace) -> Any:
        return client.get(path)
    return fetch


def _sites_show(data: Any, args: argparse.Namespace) -> None:
    if not data["sites"]:
        print("no sites yet; an admin adds one with `floe site add NAME`")
        return
    print(table(["SITE", "PILOTS", "RUNNING"],
                [[s["name"], s["pilots"], s["attempts"]] for s in data["sites"]]))
    kept_out = [(s["name"], hole) for s in data["sites"] for hole in s.get("black_holes", [])]
    if kept_out:
        print("\nhosts that get no work (black holes):")
        print(table(["SITE", "HOST", "UNTIL", "WHY"],
                    [[site, hole["host"], moment(hole["until"]), hole["why"]]
                     for site, hole in kept_out]))


def _core_hours(core_seconds: float) -> float:
    """The API's (weighted) core-seconds as the core-hours the tables show."""
    return round(core_seconds / 3600, 2)


def _users_show(data: Any, args: argparse.Namespace) -> None:
    print(table(["USER", "ROLE", "SHARE (WEIGHT)", "RECENT USAGE (CORE-H)", "DATASETS"],
                [[u["name"], u["role"], u["share"], _core_hours(u["usage"]), u["datasets"]]
                 for u in data["users"]]))


def _shares_show(data: Any, args: argparse.Namespace) -> None:
    print(table(["USER", "SHARE (WEIGHT)", "% OF SHARES", "RECENT USAGE (CORE-H)",
                 "% OF USAGE", "DELIVERED (CORE-H)"],
                [[s["user"], s["share"], round(100 * s["share_fraction"], 1),
                  _core_hours(s["usage"]), round(100 * s["usage_fraction"], 1),
                  _core_hours(s["delivered_core_seconds"])] for s in data["shares"]]))
    print(f"(share: a weight, against the other users' shares; recent usage: core-hours, a GPU "
          f"counted as the server's gpu_weight cores, decaying with a half-life of "
          f"{format_duration(data['half_life'])}; delivered: core-hours run since the "
          "matchmaker started)")


SUBCOMMANDS = subcommands({
    "pilots": Command("list pilots with what they measured and run", _pilots_arguments,
                      _pilots_fetch, _pilots_show),
    "sites": Command("list sites with their running pilots and the attempts those run now",
                     _nothing, _get("/api/v1/sites"), _sites_show),
    "users": Command("list users with their roles and shares", _nothing,
                     _get("/api/v1/users"), _users_show),
    "shares": Command("show each user's fair share against recent usage", _nothing,
                      _get("/api/v1/shares"), _shares_show),
})
