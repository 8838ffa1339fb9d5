"""`floe completion bash|zsh`: a shell completion script, generated from the parser of `floe`.

The script is written from the same argparse tree that parses the command line, so it knows
every subcommand, option and choice of this floe and needs no floe at completion time (a TAB
costs no Python start). Both shells share four small lookup functions, each a `case` on the
subcommand path typed so far ("", "user", "user add"): the subcommands below it, the words that
may follow it, an option's choices, and whether an option takes a value (then: file names).
"""

from __future__ import annotations

import argparse
import shlex

SHELLS = ("bash", "zsh")
ENABLE = {
    "bash": 'eval "$(floe completion bash)"   # in ~/.bashrc',
    "zsh": 'eval "$(floe completion zsh)"    # in ~/.zshrc, after compinit',
}

_BASH_DRIVER = r"""
_floe() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmdpath="" word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [[ " $(_floe_subcommands "$cmdpath") " == *" $word "* ]]; then
            cmdpath="${cmdpath:+$cmdpath }$word"
        fi
    done
    local choices
    if choices=$(_floe_choices "$cmdpath" "$prev"); then
        COMPREPLY=($(compgen -W "$choices" -- "$cur"))
    elif _floe_takes_value "$cmdpath" "$prev"; then
        COMPREPLY=()  # file names, through -o default
    else
        local candidates="" w
        for w in $(_floe_words "$cmdpath"); do  # options only once a dash is typed
            [[ $w == -* && $cur != -* ]] || candidates+=" $w"
        done
        COMPREPLY=($(compgen -W "$candidates" -- "$cur"))
    fi
}
complete -o default -F _floe floe
"""

_ZSH_DRIVER = r"""
_floe() {
    local cmdpath="" word i choices
    for ((i = 2; i < CURRENT; i++)); do
        word=${words[i]}
        if [[ " $(_floe_subcommands "$cmdpath") " == *" $word "* ]]; then
            cmdpath="${cmdpath:+$cmdpath }$word"
        fi
    done
    if choices=$(_floe_choices "$cmdpath" "${words[CURRENT-1]}"); then
        compadd -- ${=choices}
    elif _floe_takes_value "$cmdpath" "${words[CURRENT-1]}"; then
        _files
    else
        local -a candidates=(${=$(_floe_words "$cmdpath")})
        if [[ $PREFIX == -* ]]; then
            compadd -- ${(M)candidates:#-*}
        else
            compadd -- ${candidates:#-*} || _files
        fi
    fi
}
compdef _floe floe
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=SHELLS, metavar="SHELL",
                        help="bash or zsh; enable it with " + " or ".join(ENABLE.values()))


def run(args: argparse.Namespace) -> int:
    from floe.cli.main import build_parser

    print(script(build_parser(), args.shell), end="")
    return 0


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `parser` (the `floe` command) for `shell`."""
    subcommands: dict[str, list[str]] = {}
    words: dict[str, list[str]] = {}
    choices: dict[tuple[str, str], list[str]] = {}
    valued: list[tuple[str, str]] = []
    pending: list[tuple[str, argparse.ArgumentParser]] = [("", parser)]
    while pending:
        path, current = pending.pop(0)
        names: list[str] = []
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    names.append(name)
                    pending.append((f"{path} {name}".strip(), child))
            elif not action.option_strings:
                words.setdefault(path, []).extend(str(c) for c in action.choices or ())
            else:
                words.setdefault(path, []).extend(action.option_strings)
                if action.choices:
                    for option in action.option_strings:
                        choices[(path, option)] = [str(c) for c in action.choices]
                elif action.nargs != 0:
                    valued.extend((path, option) for option in action.option_strings)
        subcommands[path] = names
        words[path] = names + words.get(path, [])
    parts = [f"# floe completion for {shell}, made by `floe completion {shell}`.",
             f"# Enable it: {ENABLE[shell]}",
             _lookup("_floe_subcommands", {(p,): n for p, n in subcommands.items() if n}),
             _lookup("_floe_words", {(p,): w for p, w in words.items()}),
             _lookup("_floe_choices", {(p, o): c for (p, o), c in choices.items()}),
             _predicate("_floe_takes_value", valued),
             _BASH_DRIVER if shell == "bash" else _ZSH_DRIVER]
    return "\n".join(parts)


def _key(parts: tuple[str, ...]) -> str:
    return shlex.quote(" ".join(parts)) if any(parts) else '""'


def _lookup(function: str, table: dict[tuple[str, ...], list[str]]) -> str:
    """A shell function that echoes the words of its arguments' entry, or fails."""
    arguments = '"$1"' if all(len(key) == 1 for key in table) else '"$1 $2"'
    lines = [f"{function}() {{", f"    case {arguments} in"]
    for key, values in table.items():
        lines.append(f"        {_key(key)}) echo {shlex.quote(' '.join(values))} ;;")
    lines += ["        *) return 1 ;;", "    esac", "}"]
    return "\n".join(lines)


def _predicate(function: str, keys: list[tuple[str, str]]) -> str:
    """A shell function that succeeds for the (path, option) pairs given."""
    patterns = "|".join(_key(key) for key in keys)
    return "\n".join([f"{function}() {{", '    case "$1 $2" in',
                      f"        {patterns}) return 0 ;;", "    esac", "    return 1", "}"])


SUBCOMMANDS = {"completion": ("print a shell completion script (bash or zsh)", configure, run)}
