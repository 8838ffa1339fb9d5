"""`floe docs TOPIC [-o FILE]`: print generated reference documentation as Markdown."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# topic -> (what it documents, module, function returning the Markdown); imported only when asked.
TOPICS = {
    "config": ("the dataset config: every parameter and the expression functions",
               "floe.config.docs", "dataset_reference"),
    "server": ("the matchmaker's settings (server.toml)", "floe.config.settings", "reference"),
    "factory": ("the factory's config (site.toml)", "floe.config.factory", "reference"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", choices=sorted(TOPICS), metavar="TOPIC",
                        help="; ".join(f"{name}: {TOPICS[name][0]}" for name in sorted(TOPICS)))
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the Markdown to FILE instead of standard output")


def run(args: argparse.Namespace) -> int:
    _, module_name, function = TOPICS[args.topic]
    text = getattr(importlib.import_module(module_name), function)()
    if not args.output:
        sys.stdout.write(text)
        return 0
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    return 0


SUBCOMMANDS = {"docs": ("print generated reference documentation", configure, run)}
