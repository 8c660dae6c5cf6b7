"""docs/cli.md documents every command of the CLI: walks click's command tree and fails on a
command without its section, an option the section does not explain, a ``--json`` without its
shape, or a section that does not give the exit codes."""

from __future__ import annotations

import pathlib
import re

import click
import pytest

from tvreg.cli.main import cli

CLI_MD = pathlib.Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def sections(text: str) -> dict[str, str]:
    """Heading text → its section (up to the next heading of the same or a higher level)."""
    heads = [(m.start(), len(m.group(1)), m.group(2).strip())
             for m in re.finditer(r"^(#{2,4}) (.+)$", text, re.M)]
    out = {}
    for i, (start, level, title) in enumerate(heads):
        end = next((s for s, lv, _ in heads[i + 1:] if lv <= level), len(text))
        out[title] = text[start:end]
    return out


def commands(group: click.Group, path: tuple[str, ...] = ()):
    """``(path, command)`` for every command that is not a group, depth first."""
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        if isinstance(command, click.Group):
            yield from commands(command, path + (name,))
        else:
            yield path + (name,), command


def option_names(command: click.Command) -> list[str]:
    return [name for p in command.params if isinstance(p, click.Option) and not p.hidden
            for name in p.opts + p.secondary_opts]


def without_usage(section: str) -> str:
    """The section without its first code block (the usage synopsis)."""
    return re.sub(r"```\n.*?```\n", "", section, count=1, flags=re.S)


ALL = list(commands(cli))
TEXT = CLI_MD.read_text()
SECTIONS = sections(TEXT)


def _id(item) -> str:
    return " ".join(item[0])


def test_the_tree_is_walked():
    paths = {" ".join(p) for p, _ in ALL}
    assert {"create", "ls", "base add", "remote rm", "verify"} <= paths
    assert len(paths) >= 25


@pytest.mark.parametrize("item", ALL, ids=_id)
def test_command_has_a_section(item):
    path, _ = item
    title = " ".join(path)
    level = "##" if len(path) == 1 else "###"
    assert re.search(rf"^{level} {re.escape(title)}$", TEXT, re.M), \
        f"docs/cli.md has no '{level} {title}' section"
    synopsis = SECTIONS[title].split("```")[1]
    assert f"tvreg {title}" in synopsis, f"'{title}': the section does not start with its synopsis"


@pytest.mark.parametrize("item", ALL, ids=_id)
def test_every_option_is_explained(item):
    path, command = item
    title = " ".join(path)
    body = without_usage(SECTIONS.get(title, ""))
    missing = [name for name in option_names(command)
               if not re.search(rf"`{re.escape(name)}[` =,\[]", body)]
    assert not missing, f"'{title}': options not explained in its section: {missing}"


@pytest.mark.parametrize("item", ALL, ids=_id)
def test_json_shape_is_documented(item):
    path, command = item
    if "--json" not in option_names(command):
        return
    body = SECTIONS.get(" ".join(path), "")
    assert "```json" in body or re.search(r"`--json`[^.]*\b(prints|gives)\b", body), \
        f"'{' '.join(path)}': --json output shape not documented"


@pytest.mark.parametrize("item", ALL, ids=_id)
def test_exit_codes_are_documented(item):
    path, _ = item
    body = SECTIONS.get(" ".join(path), "")
    assert re.search(r"[Ee]xit codes?\b", body), f"'{' '.join(path)}': no exit codes"


def test_global_options_and_summary_table():
    conventions = SECTIONS["Conventions"]
    for name in option_names(cli):
        assert f"`{name}" in conventions, f"global option {name} not in Conventions"
    summary = TEXT[:TEXT.index("## Conventions")]
    for name in cli.commands:
        assert f"[`{name}`](#{name})" in summary, f"{name} missing from the command table"
