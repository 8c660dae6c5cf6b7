"""Registry upkeep: init, verify, gc, reindex."""

from __future__ import annotations

import click

from tvreg.util import progress
from tvreg.util.sizes import human_bytes

from .options import json_option
from .output import emit_json, message


@click.command()
@click.pass_obj
def init(reg):
    """Create the registry (optional: the first write creates it too)."""
    created = reg.init()
    message(f"{'initialized' if created else 'already a registry:'} {reg.root}")


@click.command()
@click.option("--deep", is_flag=True,
              help="Also decode every stored tensor and check it against its sha256.")
@click.option("--repair", metavar="REMOTE", default=None,
              help="Put back damaged or missing objects (each checked against its sha256), and "
                   "records, tags and base documents the catalog vouches for, from REMOTE; then "
                   "verify again.")
@json_option
@click.pass_obj
def verify(reg, deep, repair, as_json):
    """Re-hash every object and check every reference. Exit 1 if anything is wrong (after
    --repair: if anything is still wrong)."""
    with progress.bar(None, "verify", unit="obj") as bar:
        rep = reg.verify(deep=deep, on_progress=bar.update, repair=repair)
    if as_json:
        emit_json(rep.to_json())
    if repair is not None:
        for key in rep.repaired:
            message(f"repaired: {key} (from {rep.remote})")
        for line in rep.unrepaired:
            message(f"not repaired: {line}")
        if rep.reindexed:
            message("reindexed the catalog (versions left out while damaged are listed again)")
        message(f"repair from {rep.remote}: {len(rep.repaired)} repaired, "
                f"{len(rep.unrepaired)} not repaired; verified again:")
    for p in rep.problems:
        message(f"problem: {p}")
    decoded = f", decoded {rep.tensors} tensors" if deep else ""
    if rep.without_base:
        decoded += (f" ({rep.without_base} exact-mode tensor(s) not decoded: their base is not "
                    "stored)")
    bases = f", {rep.bases} bases" if rep.bases or rep.base_names else ""
    message(f"checked {rep.objects} objects ({human_bytes(rep.bytes)}), {rep.versions} versions, "
            f"{rep.tags} tags{bases}{decoded}: "
            + ("ok" if rep.ok else f"{len(rep.problems)} problem(s)"))
    if not rep.ok:
        raise SystemExit(1)


@click.command()
@click.option("--grace", type=float, default=3600.0, show_default=True, metavar="SECONDS",
              help="Keep unreferenced objects younger than this (a create may be in flight).")
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option("--remote", "remote", metavar="NAME", default=None,
              help="Collect the remote NAME instead: delete its objects that none of its "
                   "versions or bases references (refused while a push to it is in progress).")
@json_option
@click.pass_obj
def gc(reg, grace, dry_run, remote, as_json):
    """Delete objects that no version or stored base references (here, or on a remote)."""
    if grace < 0:
        raise click.BadParameter("must be >= 0", param_hint="--grace")
    rep = reg.gc(grace_seconds=grace, dry_run=dry_run, remote=remote)
    if as_json:
        emit_json(rep.to_json())
    delete, remove = ("would delete", "would remove") if dry_run else ("deleted", "removed")
    if remote is not None:
        message(f"remote {rep.remote} ({rep.url}): {delete} {rep.deleted_objects} object(s) "
                f"({human_bytes(rep.deleted_bytes)}); kept {rep.kept_recent} recent "
                f"unreferenced object(s); {remove} {rep.stale_locks_removed} stale lock(s) and "
                f"{rep.temp_files_removed} temp file(s) of interrupted writes")
        return
    message(f"{delete} {rep.deleted_objects} object(s) ({human_bytes(rep.deleted_bytes)}); kept "
            f"{rep.kept_recent} recent unreferenced object(s); {remove} {rep.scratch_removed} "
            f"scratch folder(s) and {rep.temp_files_removed} temp file(s) of interrupted writes")


@click.command()
@click.pass_obj
def reindex(reg):
    """Rebuild the catalog from the object store."""
    counts = reg.reindex()
    for p in counts["problems"]:
        message(f"skipped: {p}")
    bases = (f", {counts['bases']} bases, {counts['base_names']} base names"
             if counts.get("bases") or counts.get("base_names") else "")
    message(f"reindexed {counts['versions']} versions, {counts['vectors']} vectors, "
            f"{counts['tags']} tags{bases}"
            + (f"; {len(counts['problems'])} skipped, run `tvreg verify`"
               if counts["problems"] else ""))
    if counts["problems"]:
        raise SystemExit(1)


COMMANDS = [init, verify, gc, reindex]
