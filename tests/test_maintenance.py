"""gc's grace rule and leftovers, file modes, tag/record paths, timestamps, lock settings."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import time

import pytest
from click.testing import CliRunner

import tvreg
from tvreg.cli.main import cli
from tvreg.errors import FormatError
from tvreg.format.records import VersionRecord, seal


def test_gc_removes_stale_temp_files_of_interrupted_writes_only(filled):
    root = pathlib.Path(filled.root)
    old = root / "refs" / "topic" / ".tmp-crashed"
    new = root / "objects" / "ab" / ".tmp-in-flight"
    new.parent.mkdir(exist_ok=True)
    for p in (old, new):
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    rep = filled.gc(grace_seconds=3600, dry_run=True)
    assert rep.temp_files_removed == 1 and old.exists()
    rep = filled.gc(grace_seconds=3600)
    assert rep.temp_files_removed == 1 and not old.exists() and new.exists()
    assert filled.verify().ok


def test_gc_grace_runs_from_last_reuse(filled, zoo):
    """An old orphan that a new create reuses is touched, so a concurrent gc keeps it."""
    root = pathlib.Path(filled.root)
    vec = filled.get("topic@1")
    blob = vec.manifest.tensors[0].chunks[0].blob
    path = root / "objects" / blob[:2] / blob[2:]
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    filled.create("topic-again", zoo.base, zoo.finetuned["topic"])
    assert time.time() - path.stat().st_mtime < 600


def test_documents_get_ordinary_file_modes(filled):
    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask
    root = pathlib.Path(filled.root)
    filled.tag("topic@1", "prod")
    for p in [root / "config.json", root / "refs" / "topic" / "1.json",
              root / "tags" / "topic" / "prod.json",
              next(p for p in (root / "objects").rglob("*") if p.is_file())]:
        assert stat.S_IMODE(p.stat().st_mode) == expected, p


def test_a_tag_file_under_another_name_is_refused(filled):
    root = pathlib.Path(filled.root)
    filled.tag("topic@1", "prod")
    (root / "tags" / "topic" / "staging.json").write_bytes(
        (root / "tags" / "topic" / "prod.json").read_bytes())
    with pytest.raises(FormatError, match="names tags/topic/prod.json"):
        filled.get("topic@staging")
    rep = filled.verify()
    assert any("staging.json" in p for p in rep.problems)


def test_a_record_with_an_impossible_timestamp_is_refused(filled):
    root = pathlib.Path(filled.root)
    key = root / "refs" / "topic" / "1.json"
    doc = json.loads(key.read_bytes())
    doc["created_at"] = "2026-02-30T10:00:00.000000Z"
    key.write_bytes(seal(doc))
    with pytest.raises(FormatError, match="created_at"):
        VersionRecord.from_bytes(key.read_bytes())
    counts = filled.reindex()
    assert counts["versions"] == 2 and "created_at" in counts["problems"][0]


def test_reindex_cli_reports_skipped_versions_and_exits_1(filled):
    (pathlib.Path(filled.root) / "refs" / "topic" / "1.json").write_bytes(b"{not json")
    r = CliRunner().invoke(cli, ["--registry", filled.root, "reindex"])
    assert r.exit_code == 1
    assert "skipped: refs/topic/1.json" in r.stderr and "reindexed 2 versions" in r.stderr


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_bad_lock_timeout_setting_is_bad_input(filled, monkeypatch, value):
    monkeypatch.setenv("TVREG_LOCK_TIMEOUT", value)
    r = CliRunner().invoke(cli, ["--registry", filled.root, "ls"])
    assert r.exit_code == 2 and "TVREG_LOCK_TIMEOUT" in r.stderr


def test_failed_first_create_leaves_no_trace(zoo, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(zoo.finetuned["topic"])
    sd["embed.weight"][3, 3] = float("inf")
    bad = tmp_path / "inf.safetensors"
    save_file(sd, bad)
    root = tmp_path / "new-registry"
    with pytest.raises(tvreg.NonFiniteValues):
        tvreg.open(root).create("topic", zoo.base, bad)
    assert not root.exists()
    assert torch.isinf(load_file(bad)["embed.weight"]).any()


def test_commit_fails_if_gc_deleted_a_reused_object_meanwhile(filled):
    from tvreg.errors import RegistryError
    from tvreg.storage.objects import Staging, object_key

    existing = filled.get("topic@1").manifest.tensors[0].chunks[0].blob
    data = filled.objects.get(existing)
    staging = Staging(filled.objects, filled.scratch)
    assert staging.put(data) == existing           # reused, not staged
    filled.store.delete(object_key(existing))     # what a concurrent gc would do
    with pytest.raises(RegistryError, match="concurrent gc"):
        staging.commit()
    staging.close()


def test_show_is_not_affected_by_a_broken_tag_of_another_name(filled):
    root = pathlib.Path(filled.root)
    filled.tag("topic@1", "prod")
    (root / "tags" / "toxicity").mkdir(parents=True, exist_ok=True)
    (root / "tags" / "toxicity" / "prod.json").write_bytes(b"garbage")
    assert filled.show("topic@1")["tags"] == ["prod"]
    assert filled.show("sentiment")["tags"] == []


def test_first_create_works_when_the_temp_folder_is_another_file_system(zoo, tmp_path, monkeypatch):
    """Staging of a new registry happens in the system temp folder; link(2) across file systems
    fails with EXDEV, and the store then copies (fault injected: link raises EXDEV)."""
    import errno

    import torch
    from safetensors.torch import load_file

    real_link = os.link
    crossed = []

    def link(src, dst, *a, **k):
        if "stage-" in src:
            crossed.append(src)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(os, "link", link)
    reg = tvreg.open(tmp_path / "reg")
    res = reg.create("topic", zoo.base, zoo.finetuned["topic"])
    assert crossed and res.created
    base, ft = load_file(zoo.base), load_file(zoo.finetuned["topic"])
    for name, t in reg.get("topic@1").tensors().items():
        assert torch.equal(t, ft[name].float() - base[name].float())
    assert reg.verify().ok
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "reg").rglob("*"))
