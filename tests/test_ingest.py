"""Bulk ingest (``tvreg ingest LIST.jsonl``): real fine-tunes and a real PEFT adapter, the same
vectors as ``create`` item by item, resumable, and bad lists refused before anything is read."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from helpers import snapshot

import tvreg
from tvreg.errors import InvalidInput
from tvreg.repo.ingest import KEY_META, read_list
from tvreg.testing import toy


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A PEFT LoRA adapter of the zoo's base (``make_toy_zoo``'s: ``pretrain()`` with its
    defaults, bit for bit), trained 6 real Adam steps on "topic"."""
    peft = pytest.importorskip("peft")
    d = tmp_path_factory.mktemp("ingest-lora")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"], lora_dropout=0.0)
    lora = peft.get_peft_model(toy.pretrain(), cfg)
    with toy._controlled(1):
        toy._train(lora, "topic", 6, 1e-2, 32, toy._generator("ingest-lora"))
    lora.save_pretrained(d / "adapter")
    return d / "adapter"


def _items(zoo, adapter=None):
    rows = [{"name": "sentiment", "base": str(zoo.base),
             "finetuned": str(zoo.finetuned["sentiment"]),
             "task": "sentiment", "dataset": "toy-sentiment", "lr": 0.01, "steps": 20,
             "meta": {"seed": 0}},
            {"name": "topic", "base": str(zoo.base), "finetuned": str(zoo.finetuned["topic"]),
             "task": "topic"},
            {"name": "toxicity", "base": str(zoo.base),
             "finetuned": str(zoo.finetuned["toxicity"])}]
    if adapter is not None:
        rows.append({"name": "topic-lora", "base": str(zoo.base), "lora": str(adapter),
                     "task": "topic"})
    return rows


def test_ingest_stores_what_create_stores_item_by_item(tmp_path, zoo, adapter):
    rows = _items(zoo, adapter)
    path = _write(tmp_path / "list.jsonl", rows)
    with tvreg.open(tmp_path / "bulk") as bulk, tvreg.open(tmp_path / "one") as one:
        result = bulk.ingest(path, workers=2)
        assert result.outcomes == ["created"] * 4
        assert result.refs == ["sentiment@1", "topic@1", "toxicity@1", "topic-lora@1"]
        for row in rows:
            options = {k: row.get(k) for k in ("task", "dataset", "lr", "steps", "meta")}
            made = one.create(row["name"], row["base"], row.get("finetuned"),
                              lora=row.get("lora"), **options)
            got = bulk.show(f"{row['name']}@1")
            assert got["vector_id"] == made.record.vector_id
            for k in ("task", "dataset", "lr", "steps"):
                assert got[k] == row.get(k)
            meta = dict(got["meta"])
            assert len(meta.pop(KEY_META)) == 64
            assert meta == one.show(made.record.ref)["meta"]
        # similarities computed once at the end, the same values as insert by insert
        pairs = lambda r: sorted((x["ref"], round(x["cosine"], 12))  # noqa: E731
                                 for x in r.similar("sentiment", k=10))
        assert pairs(bulk) == pairs(one) and len(pairs(bulk)) == 3


def test_one_worker_and_two_give_the_same_vectors(tmp_path, zoo):
    path = _write(tmp_path / "list.jsonl", _items(zoo))
    ids = []
    for workers in (1, 2):
        with tvreg.open(tmp_path / f"w{workers}") as r:
            r.ingest(path, workers=workers, similarities=False)
            ids.append([r.show(n)["vector_id"] for n in ("sentiment", "topic", "toxicity")])
    assert ids[0] == ids[1]


def test_a_rerun_skips_what_landed_and_finishes_what_failed(tmp_path, zoo, run, reg_path):
    rows = _items(zoo)
    rows[1]["finetuned"] = "missing.safetensors"  # relative: to the list's folder
    path = _write(tmp_path / "list.jsonl", rows)
    first = run("ingest", path, code=1)
    assert first.stdout.split() == ["sentiment@1", "toxicity@1"]
    assert f"line 2 (topic): {tmp_path / 'missing.safetensors'}" in first.stderr
    assert "2 created, 0 unchanged, 0 skipped (landed before), 1 failed" in first.stderr

    before = snapshot(reg_path)
    again = run("ingest", path, "--json", code=1)  # nothing new: the same failure, no writes
    out = json.loads(again.stdout)
    assert (out["created"], out["skipped"], out["failed"]) == (0, 2, 1)
    assert [i["outcome"] for i in out["items"]] == ["skipped", "failed", "skipped"]
    assert out["items"][0]["ref"] == "sentiment@1"
    assert snapshot(reg_path) == before

    shutil.copy(zoo.finetuned["topic"], tmp_path / "missing.safetensors")
    third = run("ingest", path)
    assert "1 created, 0 unchanged, 2 skipped (landed before), 0 failed" in third.stderr
    assert third.stdout.split() == ["sentiment@1", "topic@1", "toxicity@1"]
    fourth = run("ingest", path, "--json")
    assert json.loads(fourth.stdout)["skipped"] == 3
    with tvreg.open(reg_path) as r:
        assert [row["name"] for row in r.ls(all_versions=True)].count("topic") == 1


def test_an_item_created_before_without_ingest_gets_a_version_of_its_own(tmp_path, zoo,
                                                                          reg):
    rows = _items(zoo)[:1]
    made = reg.create("sentiment", zoo.base, zoo.finetuned["sentiment"], task="sentiment",
                      dataset="toy-sentiment", lr=0.01, steps=20, meta={"seed": 0})
    result = reg.ingest(_write(tmp_path / "l.jsonl", rows))
    # its metadata differs by ingest.key: a new version, of the same vector
    assert result.outcomes == ["created"]
    assert reg.show("sentiment@2")["vector_id"] == made.record.vector_id


BAD = [
    ("not json", ["{"], "bad.jsonl:1: not JSON"),
    ("not an object", ["[1]"], "an item is a JSON object"),
    ("unknown field", [{"name": "a", "base": "b", "finetuned": "c", "epochs": 3}],
     "unknown field 'epochs'"),
    ("no name", [{"base": "b", "finetuned": "c"}], "'name' is required"),
    ("no base", [{"name": "a", "finetuned": "c"}], "'base' is required"),
    ("both", [{"name": "a", "base": "b", "finetuned": "c", "lora": "d"}], "exactly one"),
    ("neither", [{"name": "a", "base": "b"}], "exactly one"),
    ("bad name", [{"name": "a b/", "base": "b", "finetuned": "c"}], "bad.jsonl:1:"),
    ("lr a string", [{"name": "a", "base": "b", "finetuned": "c", "lr": "1e-3"}], "'lr'"),
    ("lr nan", ['{"name": "a", "base": "b", "finetuned": "c", "lr": NaN}'], "'lr'"),
    ("steps a float", [{"name": "a", "base": "b", "finetuned": "c", "steps": 1.5}], "'steps'"),
    ("meta a list", [{"name": "a", "base": "b", "finetuned": "c", "meta": [1]}], "'meta'"),
    ("meta sets the key", [{"name": "a", "base": "b", "finetuned": "c",
                            "meta": {KEY_META: "x"}}], KEY_META),
    ("a duplicate", [{"name": "a", "base": "b", "finetuned": "c"}, "",
                     {"finetuned": "c", "base": "b", "name": "a"}],
     "bad.jsonl:3: the same item as line 1"),
    ("a URL", [{"name": "a", "base": "s3://b/base.safetensors", "finetuned": "c"}],
     "'base' is a URL"),
    ("empty", ["", "  "], "has no items"),
]


@pytest.mark.parametrize("case, rows, expected", BAD, ids=[b[0] for b in BAD])
def test_a_bad_list_is_refused_before_anything(tmp_path, run, reg_path, case, rows, expected):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InvalidInput, match=re.escape(expected)):
        read_list(path)
    result = run("ingest", path, code=2)
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not reg_path.exists()


def test_bad_engine_and_workers(tmp_path, zoo, reg, run):
    path = _write(tmp_path / "list.jsonl", _items(zoo)[:1])
    with pytest.raises(InvalidInput, match="unknown engine 'spark'"):
        reg.ingest(path, engine="spark")
    with pytest.raises(InvalidInput, match="bad worker count 0"):
        reg.ingest(path, workers=0)
    run("ingest", path, "--workers", "0", code=2)
    run("ingest", path, "--engine", "spark", code=2)
    run("ingest", str(tmp_path / "nope.jsonl"), code=2)


# --- the dask engine: a real LocalCluster of worker processes -----------------------------------

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=50) as c:
        yield c


def _similar(r, ref):
    return [(x["ref"], x["cosine"], x["sign_conflict_rate"]) for x in r.similar(ref, k=10)]


def test_dask_engine_stores_what_the_local_engine_stores(tmp_path, zoo, adapter, cluster):
    """Staged in worker processes of a Dask cluster, landed by the client: the same vectors,
    the same metadata and the same similarities, bit for bit, as the local engine."""
    path = _write(tmp_path / "list.jsonl", _items(zoo, adapter))
    with tvreg.open(tmp_path / "local") as local, tvreg.open(tmp_path / "dask") as on_dask:
        a = local.ingest(path)
        b = on_dask.ingest(path, engine="dask", scheduler=cluster.scheduler_address)
        assert a.outcomes == b.outcomes == ["created"] * 4
        assert a.refs == b.refs
        for ref in a.refs:
            x, y = local.show(ref), on_dask.show(ref)
            for k in ("vector_id", "meta", "task", "lr", "steps", "stored_bytes", "codec"):
                assert x[k] == y[k]
            assert _similar(local, ref) == _similar(on_dask, ref)
        assert on_dask.verify(deep=True).problems == []


def test_dask_engine_on_its_own_local_cluster_and_a_rerun(tmp_path, zoo, run, reg_path):
    rows = _items(zoo)
    rows[2]["finetuned"] = str(tmp_path / "late.safetensors")
    path = _write(tmp_path / "list.jsonl", rows)
    first = run("ingest", path, "--engine", "dask", "--workers", "2", code=1)
    assert first.stdout.split() == ["sentiment@1", "topic@1"]
    assert "line 3 (toxicity)" in first.stderr and "late.safetensors" in first.stderr
    shutil.copy(zoo.finetuned["toxicity"], tmp_path / "late.safetensors")
    again = run("ingest", path, "--engine", "dask", "--workers", "2", "--json")
    assert [i["outcome"] for i in json.loads(again.stdout)["items"]] == [
        "skipped", "skipped", "created"]


def test_dask_engine_bad_options(tmp_path, zoo, run, reg_path, monkeypatch):
    from tvreg.repo import ingest_dask

    path = _write(tmp_path / "list.jsonl", _items(zoo)[:1])
    monkeypatch.setattr(ingest_dask, "CONNECT_TIMEOUT", "1s")
    unreachable = run("ingest", path, "--engine", "dask", "--scheduler", "tcp://127.0.0.1:9",
                      code=2)
    assert "cannot reach the Dask scheduler tcp://127.0.0.1:9" in unreachable.stderr
    run("ingest", path, "--scheduler", "tcp://127.0.0.1:9", code=2)  # not --engine dask
    both = run("ingest", path, "--engine", "dask", "--scheduler", "tcp://127.0.0.1:9",
               "--workers", "2", code=2)
    assert "--workers sizes a local cluster" in both.stderr
    assert not reg_path.exists()


def test_other_commands_never_import_dask(tmp_path, zoo):
    """dask is an optional extra: ingest with the local engine (and every other command) runs
    without importing it."""
    import subprocess
    import sys

    path = _write(tmp_path / "list.jsonl", _items(zoo)[:1])
    code = ("import sys; from click.testing import CliRunner; from tvreg.cli.main import cli; "
            f"r = CliRunner().invoke(cli, ['--registry', {str(tmp_path / 'r')!r}, 'ingest', "
            f"{path!r}]); assert r.exit_code == 0, r.output; "
            "assert not {'dask', 'distributed'} & set(sys.modules), 'dask imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
