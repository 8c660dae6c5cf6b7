"""`tvreg remote add|ls|rm` (named remotes, fsspec URLs kept in config.json), `push` and `pull`."""

from __future__ import annotations

import json

import click

from tvreg.util.sizes import human_bytes

from .options import json_option
from .output import emit_json, message, table


@click.group()
def remote():
    """Manage remotes: where vectors are shared (a folder, s3://, memory://, http(s)://…)."""


@remote.command(name="add")
@click.argument("name")
@click.argument("url")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="fsspec storage option, repeatable (e.g. endpoint_url=http://…). Never "
                   "credentials: they come from the backend's usual sources.")
@click.pass_obj
def add(reg, name, url, options):
    """Add remote NAME at URL."""
    from tvreg.remote.config import parse_options

    r = reg.add_remote(name, url, parse_options(options))
    message(f"added remote {r.name}: {r.url}" + ("" if r.writable else " (read-only: pull only)"))


@remote.command(name="ls")
@json_option
@click.pass_obj
def ls(reg, as_json):
    """List remotes."""
    remotes = reg.remotes()
    if as_json:
        emit_json([{"name": r.name, **r.to_json(), "writable": r.writable}
                   for r in remotes.values()])
        return
    table(["name", "url", "options", "access"],
          [(r.name, r.url, " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                                    for k, v in sorted(r.options.items())),
            "read-write" if r.writable else "read-only") for r in remotes.values()])


@remote.command(name="rm")
@click.argument("name")
@click.pass_obj
def rm(reg, name):
    """Remove remote NAME (its data is left where it is)."""
    r = reg.remove_remote(name)
    message(f"removed remote {r.name} ({r.url}); nothing was deleted there")



def _split(reg, args: tuple[str, ...]) -> tuple[str, list[str] | None]:
    """``[REMOTE] [REF...]``: the first word is a remote if one has that name."""
    args_ = list(args)
    name = args_.pop(0) if args_ and args_[0] in reg.remotes() else "origin"
    return name, args_ or None


def _renumbered(pairs: dict[str, str], where: str) -> None:
    for before, after in pairs.items():
        message(f"{before} is {after} {where} (another version held {before} there)")


def _bases(report, sent: str, named: str, where: str) -> str:
    n, names = getattr(report, sent), getattr(report, named)
    return f"; {n} base(s), {names} base name(s) {where}" if n or names else ""


with_base_option = click.option(
    "--with-base", is_flag=True,
    help="Also copy the stored bases of these versions (`tvreg base add`) and their names.")


@click.command()
@click.argument("args", nargs=-1, metavar="[REMOTE] [REF...]")
@with_base_option
@json_option
@click.pass_obj
def push(reg, args, with_base, as_json):
    """Copy versions (default: all) to REMOTE (default: origin): blobs, manifests, records, tags.

    A bare NAME pushes all its versions; NAME@N or NAME@TAG one. Only objects the remote lacks
    are sent; a version number another pusher took goes to the next free one (reported).
    """
    from tvreg.util.progress import Transfer

    name, refs = _split(reg, args)
    with Transfer(f"push {name}") as progress:
        rep = reg.push(name, refs, progress=progress, with_base=with_base)
    if as_json:
        emit_json(rep.to_json())
    _renumbered(rep.renumbered, f"on {name}")
    message(f"pushed to {name}: {rep.objects_sent} object(s), {human_bytes(rep.bytes_sent)} sent, "
            f"{rep.objects_skipped} already there; {rep.versions_sent} version(s), "
            f"{rep.versions_skipped} already there; {rep.tags_sent} tag(s)"
            + _bases(rep, "bases_sent", "base_names_sent", "sent"))
    if rep.orphans_removed:
        message(f"removed {rep.orphans_removed} orphaned object(s) "
                f"({human_bytes(rep.orphan_bytes_removed)}) that an earlier failed push left on "
                f"{name}")
    if rep.orphans_note:
        message(f"warning: orphans an earlier failed push left on {name} were not removed "
                f"({rep.orphans_note}); the next push tries again, or run "
                f"`tvreg gc --remote {name}`")


@click.command()
@click.argument("args", nargs=-1, metavar="[REMOTE] [REF...]")
@click.option("--no-similarities", "no_similarities", is_flag=True,
              help="Do not compute the similarities of the pulled vectors now.")
@with_base_option
@json_option
@click.pass_obj
def pull(reg, args, no_similarities, with_base, as_json):
    """Copy versions (default: all) from REMOTE (default: origin) into this registry.

    A bare NAME pulls all its versions; NAME@N or NAME@TAG one. Only missing objects are
    fetched, each checked against its hash before it is stored; a corrupted one stops the pull
    and no version is added. A local number held by other content goes to the next free one.
    """
    from tvreg.util.progress import Transfer

    name, refs = _split(reg, args)
    with Transfer(f"pull {name}") as progress:
        rep = reg.pull(name, refs, progress=progress, similarities=not no_similarities,
                       with_base=with_base)
    if as_json:
        emit_json(rep.to_json())
    _renumbered(rep.renumbered, "here")
    for problem in rep.problems:
        message(f"warning: {problem}")
    message(f"pulled from {name}: {rep.objects_fetched} object(s), "
            f"{human_bytes(rep.bytes_fetched)} fetched, {rep.objects_skipped} already here; "
            f"{rep.versions_fetched} version(s), {rep.versions_skipped} already here; "
            f"{rep.tags_set} tag(s)" + _bases(rep, "bases_fetched", "base_names_set", "set"))


COMMANDS = [remote, push, pull]
