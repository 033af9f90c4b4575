"""Pure: the man page and the shell completions, generated from the parsers themselves.

Written by hand they would drift from the options; generated, a test can hold the
files in `share/` (which pip installs under the environment's prefix) to what the
parsers say. The parsers are read through argparse's own records of their actions.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import date

__all__ = [
    "Command",
    "Option",
    "bash_completion",
    "commands_of",
    "fish_completion",
    "man_page",
    "zsh_completion",
]


@dataclass(frozen=True, slots=True)
class Option:
    flags: tuple[str, ...]
    metavar: str | None  # None: a flag without a value
    choices: tuple[str, ...]
    help: str


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    summary: str
    usage: str
    description: str
    options: tuple[Option, ...]
    epilog: str
    choices: tuple[str, ...] = ()  # the values a positional argument takes, if listed


def _options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    found = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        takes_value = action.nargs != 0
        metavar = action.metavar if isinstance(action.metavar, str) else None
        if takes_value and metavar is None:
            metavar = action.dest.upper()
        choices = tuple(str(c) for c in action.choices) if action.choices else ()
        help_text = (action.help or "") % {"default": action.default}
        found.append(
            Option(
                tuple(action.option_strings), metavar if takes_value else None, choices, help_text
            )
        )
    return tuple(found)


def commands_of(parser: argparse.ArgumentParser) -> tuple[tuple[Option, ...], tuple[Command, ...]]:
    """The top-level options, and every command with its options, in --help order."""
    commands = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                usage = sub.format_usage().removeprefix("usage: ").strip()
                commands.append(
                    Command(
                        name,
                        summaries.get(name, ""),
                        " ".join(usage.split()),
                        sub.description or "",
                        _options(sub),
                        sub.epilog or "",
                        tuple(
                            str(choice)
                            for a in sub._actions
                            if not a.option_strings and a.choices
                            for choice in a.choices
                        ),
                    )
                )
    return _options(parser), tuple(commands)


# -- man page (roff, man(7) macros) -------------------------------------------------------
def _roff(text: str) -> str:
    """Text safe in roff: backslashes doubled, a leading dot or quote escaped."""
    text = text.replace("\\", "\\e")
    lines = []
    for line in text.split("\n"):
        guarded = "\\&" + line if line.startswith((".", "'")) else line
        lines.append(guarded.replace("-", "\\-"))
    return "\n".join(lines)


def _option_tag(option: Option) -> str:
    flags = ", ".join(f"\\fB{_roff(f)}\\fR" for f in option.flags)
    if option.metavar is None:
        return flags
    return f"{flags} \\fI{_roff(option.metavar)}\\fR"


def man_page(parser: argparse.ArgumentParser, version: str, today: date | None = None) -> str:
    """udskit(1) in man(7) macros: every command, its options and its examples."""
    top, commands = commands_of(parser)
    when = (today or date(2026, 1, 1)).isoformat()
    out = [
        f'.TH UDSKIT 1 "{when}" "udskit {_roff(version)}" "User Commands"',
        ".SH NAME",
        "udskit \\- a toolkit for UNIX domain sockets",
        ".SH SYNOPSIS",
        "\\fBudskit\\fR \\fICOMMAND\\fR [\\fIOPTIONS\\fR] ...",
        ".SH DESCRIPTION",
        _roff(parser.description or ""),
        ".SH COMMANDS",
    ]
    for command in commands:
        out += [
            f".SS {_roff(command.name)}",
            _roff(command.summary) + ".",
            ".PP",
            f"\\fBudskit {_roff(command.usage.removeprefix('udskit '))}\\fR",
        ]
        if command.description:
            out += [".PP", _roff(command.description)]
        for option in command.options:
            out += [".TP", _option_tag(option), _roff(option.help)]
        if command.epilog:
            out += [".PP", ".nf", _roff(command.epilog.rstrip()), ".fi"]
    out += [".SH OPTIONS"]
    for option in top:
        out += [".TP", _option_tag(option), _roff(option.help)]
    out += [
        ".SH NOTES",
        ".nf",
        _roff((parser.epilog or "").rstrip()),
        ".fi",
        ".SH SEE ALSO",
        "\\fBunix\\fR(7), \\fBss\\fR(8), \\fBsocat\\fR(1), \\fBtshark\\fR(1)",
    ]
    return "\n".join(out) + "\n"


# -- completions ---------------------------------------------------------------------------
_FILE_METAVARS = re.compile(r"FILE|DIR|PATH|\.png|\.pcapng", re.IGNORECASE)


def _wants_file(option: Option) -> bool:
    return option.metavar is not None and bool(_FILE_METAVARS.search(option.metavar))


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion function: commands, each command's options, option choices,
    and file names where a path is expected (addresses are socket files or @names)."""
    top, commands = commands_of(parser)
    names = " ".join(c.name for c in commands)
    lines = [
        "# bash completion for udskit (generated from its parsers: udskit completion bash)",
        "_udskit() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        "    local command=",
        "    local i",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "${COMP_WORDS[i]}" in -*) ;; *) command="${COMP_WORDS[i]}"; break ;; esac',
        "    done",
        '    if [[ -z "$command" ]]; then',
        f'        COMPREPLY=($(compgen -W "{names} {" ".join(f for o in top for f in o.flags)}"'
        ' -- "$cur"))',
        "        return",
        "    fi",
        '    case "$command" in',
    ]
    for command in commands:
        flags = " ".join(f for o in command.options for f in o.flags)
        lines.append(f"    {command.name})")
        lines.append('        case "$prev" in')
        for option in command.options:
            pattern = "|".join(option.flags)
            if option.choices:
                lines.append(
                    f'            {pattern}) COMPREPLY=($(compgen -W "{" ".join(option.choices)}"'
                    ' -- "$cur")); return ;;'
                )
            elif _wants_file(option):
                lines.append(
                    f'            {pattern}) COMPREPLY=($(compgen -f -- "$cur")); return ;;'
                )
            elif option.metavar is not None:
                lines.append(f"            {pattern}) return ;;")
        lines.append("        esac")
        lines.append(
            f'        if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "{flags}" -- "$cur"));'
        )
        if command.choices:
            words = " ".join(command.choices)
            lines.append(f'        else COMPREPLY=($(compgen -W "{words}" -- "$cur")); fi ;;')
        else:
            lines.append('        else COMPREPLY=($(compgen -f -- "$cur")); fi ;;')
    lines += ["    esac", "}", "complete -o filenames -F _udskit udskit", ""]
    return "\n".join(lines)


def _zsh_text(text: str) -> str:
    return text.replace("'", "'\\''").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")


def zsh_completion(parser: argparse.ArgumentParser) -> str:
    """A zsh completion function (compsys) with each option's help as its description."""
    _top, commands = commands_of(parser)
    lines = [
        "#compdef udskit",
        "# zsh completion for udskit (generated from its parsers: udskit completion zsh)",
        "_udskit() {",
        "    local -a commands",
        "    commands=(",
    ]
    lines += [f"        '{c.name}:{_zsh_text(c.summary)}'" for c in commands]
    lines += [
        "    )",
        "    if (( CURRENT == 2 )); then",
        "        _describe 'udskit command' commands",
        "        return",
        "    fi",
        "    case $words[2] in",
    ]
    for command in commands:
        specs = []
        for option in command.options:
            described = _zsh_text(option.help.split(". ")[0])
            action = ""
            if option.metavar is not None:
                value = _zsh_text(option.metavar)
                if option.choices:
                    action = f":{value}:({' '.join(option.choices)})"
                elif _wants_file(option):
                    action = f":{value}:_files"
                else:
                    action = f":{value}: "
            for flag in option.flags:
                specs.append(f"'{flag}[{described}]{action}'")
        rest = (
            f"'1:{command.name}:({' '.join(command.choices)})'"
            if command.choices
            else "'*:address:_files'"
        )
        lines.append(f"    {command.name})")
        lines.append("        _arguments -s " + " ".join(specs) + f" {rest} ;;")
    lines += ["    esac", "}", '_udskit "$@"', ""]
    return "\n".join(lines)


def fish_completion(parser: argparse.ArgumentParser) -> str:
    """fish completions: one `complete` line per command and per option."""
    _top, commands = commands_of(parser)
    names = " ".join(c.name for c in commands)
    lines = ["# fish completion for udskit (generated from its parsers: udskit completion fish)"]
    for command in commands:
        summary = command.summary.replace("'", "\\'")
        lines.append(
            f"complete -c udskit -n 'not __fish_seen_subcommand_from {names}' -f "
            f"-a {command.name} -d '{summary}'"
        )
    for command in commands:
        if command.choices:
            lines.append(
                f"complete -c udskit -n '__fish_seen_subcommand_from {command.name}' -f "
                f"-a '{' '.join(command.choices)}'"
            )
        for option in command.options:
            parts = [f"complete -c udskit -n '__fish_seen_subcommand_from {command.name}'"]
            for flag in option.flags:
                if flag.startswith("--"):
                    parts.append(f"-l {flag[2:]}")
                elif len(flag) == 2:
                    parts.append(f"-s {flag[1]}")
                else:
                    parts.append(f"-o {flag[1:]}")
            if option.metavar is not None:
                parts.append("-r")
                if option.choices:
                    parts.append(f"-f -a '{' '.join(option.choices)}'")
                elif not _wants_file(option):
                    parts.append("-f")
            described = option.help.split(". ")[0].replace("'", "\\'")
            parts.append(f"-d '{described}'")
            lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"
