"""Lossy codecs (bf16, fp16, int8, topk, ternary, svd), `create --codec` and `recode`, on real
toy deltas: each round trip is within the error its record states (and within the bounds the
codec's arithmetic gives), encoding is deterministic, the stored bytes decode by the rules of
docs/format.md §5 alone, lineage and catalog columns, and every bad input is exit 2 with the
registry unchanged."""

from __future__ import annotations

import hashlib
import json
import math
import pathlib

import numpy as np
import pytest
import torch
import zstandard
from helpers import snapshot
from safetensors.torch import load_file, save_file

import tvreg
from tvreg.catalog import db as catalog_module
from tvreg.codecs.spec import parse
from tvreg.errors import InvalidInput
from tvreg.testing import toy

SPECS = ["bf16", "fp16", "int8", "topk:density=0.1", "ternary:density=0.1", "svd:rank=2",
         "svd:energy=0.9"]


def _exact(zoo, task="sentiment") -> dict[str, torch.Tensor]:
    base, ft = load_file(zoo.base), load_file(zoo.finetuned[task])
    return {k: ft[k] - base[k] for k in base if base[k].is_floating_point()}


def _error(exact: dict, got: dict) -> tuple[float, float]:
    sse = dot = xx = yy = 0.0
    for name, x in exact.items():
        a, b = x.double().reshape(-1), got[name].double().reshape(-1)
        sse += float(((b - a) ** 2).sum())
        dot += float((a * b).sum())
        xx += float((a * a).sum())
        yy += float((b * b).sum())
    return math.sqrt(sse / xx), dot / math.sqrt(xx * yy)


@pytest.fixture(scope="module")
def coded(tmp_path_factory, zoo):
    """A registry with the exact sentiment vector (exact@1), one version per spec, and
    exact@1 recoded to int8 (exact-int8@1: the same vector as the int8 version)."""
    reg = tvreg.open(tmp_path_factory.mktemp("lossy") / "reg")
    reg.create("exact", zoo.base, zoo.finetuned["sentiment"], **zoo.meta["sentiment"])
    refs = {spec: reg.create(f"s{i}", zoo.base, zoo.finetuned["sentiment"], codec=spec,
                             similarities=False).ref
            for i, spec in enumerate(SPECS)}
    reg.recode("exact", "int8", name="exact-int8", similarities=False)
    yield reg, refs
    reg.close()


# --- spec strings ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, canonical", [
    ("bf16", "bf16"), ("fp16", "fp16"), ("int8", "int8"), (" int8 ", "int8"),
    ("topk:density=0.10", "topk:density=0.1"), ("ternary:density=1", "ternary:density=1.0"),
    ("svd:rank=016", "svd:rank=16"), ("svd:energy=.9", "svd:energy=0.9"),
])
def test_spec_canonical_form(text, canonical):
    assert str(parse(text)) == canonical
    assert str(parse(canonical)) == canonical


def test_density_is_exact_decimal():
    # 0.1 * 30 is 3.0000000000000004 in binary floating point; k must be 3
    assert parse("topk:density=0.1").keep(30) == 3
    assert parse("topk:density=0.1").keep(31) == 4
    assert parse("topk:density=1").keep(7) == 7
    assert parse("topk:density=1e-9").keep(5) == 1


@pytest.mark.parametrize("text, needle", [
    ("", "empty --codec"), ("zip", "unknown codec 'zip'"), ("BF16", "unknown codec"),
    ("bf16:density=0.1", "has no parameter 'density' (it takes no parameters)"),
    ("topk", "needs density"), ("topk:rank=3", "has no parameter 'rank'"),
    ("topk:density=0", "density must be a number in (0, 1]"),
    ("topk:density=1.5", "(0, 1]"), ("topk:density=nan", "(0, 1]"),
    ("topk:density=abc", "(0, 1]"), ("topk:density=0.1,density=0.2", "given twice"),
    ("topk:density", "expected KEY=VALUE"), ("topk:", "expected KEY=VALUE"),
    ("svd", "exactly one of rank"), ("svd:rank=2,energy=0.5", "exactly one of rank"),
    ("svd:rank=0", "rank must be an integer >= 1"), ("svd:rank=2.5", "integer"),
    ("svd:rank=-1", "integer"), ("svd:energy=0", "(0, 1]"),
])
def test_bad_specs(text, needle):
    with pytest.raises(InvalidInput) as e:
        parse(text)
    assert needle in str(e.value)


# --- round trips within the recorded error -----------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_within_recorded_error(coded, zoo, spec):
    reg, refs = coded
    vec = reg.get(refs[spec])
    recipe = vec.record.recipe
    assert recipe["op"] == "create" and recipe["codec"] == spec
    exact = _exact(zoo)
    got = vec.state_dict()
    assert set(got) == set(exact) and all(got[n].dtype == torch.float32 for n in got)
    rel, cos = _error(exact, got)
    assert recipe["error"]["rel_l2"] == pytest.approx(rel, rel=1e-9, abs=1e-15)
    assert recipe["error"]["cosine"] == pytest.approx(cos, rel=1e-12)
    # the catalog and show agree with the record
    row = reg.sql(f"SELECT codec_spec, rel_l2, cosine_to_exact FROM versions "
                  f"WHERE name = '{vec.name}'")[0]
    assert row == {"codec_spec": spec, "rel_l2": recipe["error"]["rel_l2"],
                   "cosine_to_exact": recipe["error"]["cosine"]}
    shown = reg.show(refs[spec])
    assert (shown["codec_spec"], shown["rel_l2"]) == (spec, recipe["error"]["rel_l2"])
    # lossy vectors are smaller than the lossless one
    assert vec.manifest.stored_bytes < reg.get("exact").manifest.stored_bytes


def test_cast_error_bounds(coded, zoo):
    """Round to nearest: |τ̂ − τ| ≤ u·|τ| with u = 2^-8 (bf16: 8 significant bits) or 2^-11
    (fp16), plus 2^-25 for fp16's subnormals (spacing 2^-24); bf16 also matches torch's cast."""
    reg, refs = coded
    for spec, u, tiny in (("bf16", 2.0 ** -8, 0.0), ("fp16", 2.0 ** -11, 2.0 ** -25)):
        got = reg.get(refs[spec]).state_dict()
        for name, x in _exact(zoo).items():
            err = (got[name].double() - x.double()).abs()
            assert bool((err <= u * x.double().abs() + tiny).all()), (spec, name)
            cast = x.to(torch.bfloat16 if spec == "bf16" else torch.float16).float()
            assert torch.equal(got[name], cast), (spec, name)
        assert reg.get(refs[spec]).record.recipe["error"]["rel_l2"] <= u


def test_int8_error_bound(coded, zoo):
    """Per row, scale = absmax/127 and |τ̂ − τ| ≤ scale/2 (rint) plus float32 rounding."""
    reg, refs = coded
    got = reg.get(refs["int8"]).state_dict()
    bound_sq = total_sq = 0.0
    for name, x in _exact(zoo).items():
        rows = x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(1, -1)
        scale = rows.abs().amax(dim=1, keepdim=True).double() / 127
        err = (got[name].reshape(rows.shape).double() - rows.double()).abs()
        assert bool((err <= scale * (0.5 + 1e-6) + 1e-12).all()), name
        q = got[name].reshape(rows.shape).double() / scale.clamp_min(1e-300)
        assert bool(((q - q.round()).abs() < 1e-3).all()), name  # multiples of the scale
        bound_sq += float((scale ** 2 / 4).sum() * rows.shape[1])
        total_sq += float((x.double() ** 2).sum())
    assert reg.get(refs["int8"]).record.recipe["error"]["rel_l2"] <= math.sqrt(bound_sq / total_sq)


def test_topk_and_ternary_keep_the_largest_values(coded, zoo):
    reg, refs = coded
    topk, tern = reg.get(refs["topk:density=0.1"]), reg.get(refs["ternary:density=0.1"])
    for name, x in _exact(zoo).items():
        n, nonzero = x.numel(), int((x != 0).sum())
        k = min(math.ceil(n / 10), nonzero)
        kept = topk.tensor(name) != 0
        got = topk.tensor(name)
        assert int(kept.sum()) <= k
        assert torch.equal(got[kept], x[kept])  # kept values are exact
        if int(kept.sum()) and int((~kept).sum()):
            assert float(x[kept].abs().min()) >= float(x[~kept].abs().max())
        entry = topk.manifest.tensor(name)
        assert entry.codecs.codecs[0].spec() == {"name": "topk", "configuration": {"k": k}}
        # ternary: same support, every kept value ±(mean |kept|), sign of the exact value
        t = tern.tensor(name)
        support = t != 0
        assert int(support.sum()) == k
        scale = x[support].double().abs().mean().float()
        assert torch.equal(t[support].abs(), scale.expand(k))
        assert torch.equal(torch.sign(t[support]), torch.sign(x[support]))


def test_svd_is_the_truncated_svd(coded, zoo):
    """A 2-D tensor is a lowrank entry; its error is the discarded singular values
    (Eckart–Young); 1-D tensors are stored losslessly (bit-exact)."""
    reg, refs = coded
    vec = reg.get(refs["svd:rank=2"])
    exact = _exact(zoo)
    seen = 0
    for entry in vec.manifest.tensors:
        x, got = exact[entry.name], vec.tensor(entry.name)
        first = entry.codecs.codecs[0]
        if x.dim() != 2:
            # not 2-D: the default lossless choice
            assert entry.codecs.label.startswith("bgzstd4:") and torch.equal(got, x)
            continue
        assert first.name == "lowrank" and first.rank == 2 and first.scale == 1.0
        s = torch.linalg.svdvals(x.double())
        discarded = math.sqrt(float((s[2:] ** 2).sum()))
        assert float(torch.linalg.norm(got.double() - x.double())) == \
            pytest.approx(discarded, rel=1e-4, abs=1e-7)
        seen += 1
    assert seen == 5  # embed, pos_embed, fc1, fc2, head
    shown = {t["name"]: t["codec"] for t in reg.show(refs["svd:rank=2"], tensors=True)["tensors"]}
    assert shown["head.bias"].startswith("bgzstd4:")
    assert shown["mlp.fc1.weight"] == "lowrank2+bytegroup4+zstd3"
    # energy: the fewest singular values reaching 90% of the squared sum
    evec = reg.get(refs["svd:energy=0.9"])
    for entry in evec.manifest.tensors:
        first = entry.codecs.codecs[0]
        if first.name == "lowrank":
            s2 = torch.linalg.svdvals(exact[entry.name].double()) ** 2
            cum = torch.cumsum(s2, 0) / s2.sum()
            assert first.rank == int((cum < 0.9).sum()) + 1


def test_lossy_stored_bytes_decode_by_the_format_alone(coded):
    """docs/format.md §5: each blob read with zstandard and numpy only gives the tensor whose
    sha256 the manifest records."""
    reg, refs = coded
    root = pathlib.Path(reg.root)
    for ref in refs.values():
        record = json.loads((root / "refs" / ref.replace("@", "/")).with_suffix(".json")
                            .read_bytes())
        vid = record["vector_id"]
        manifest = json.loads((root / "objects" / vid[:2] / vid[2:]).read_bytes())
        for t in manifest["tensors"]:
            if t["codecs"][0]["name"] == "bgzstd":  # left lossless (by hand: test_lossless.py)
                continue
            (chunk,) = t["chunks"]
            blob = (root / "objects" / chunk["blob"][:2] / chunk["blob"][2:]).read_bytes()
            data = _decode_by_hand(t["codecs"], blob, chunk["nbytes"])
            assert hashlib.sha256(data).hexdigest() == t["sha256"], (ref, t["name"])


def _decode_by_hand(codecs: list[dict], blob: bytes, nbytes: int) -> bytes:
    first = codecs[0]
    conf = first["configuration"]
    n = nbytes // 4
    sizes = {"cast": nbytes // 2, "int8": None, "topk": None, "ternary": None,
             "lowrank": None, "bytegroup": nbytes}
    if first["name"] == "int8":
        rows = nbytes // (4 * conf["cols"])
        sizes["int8"] = 4 * rows + rows * conf["cols"]
    elif first["name"] == "topk":
        sizes["topk"] = 4 * math.ceil(n / 32) + 4 * conf["k"]
    elif first["name"] == "ternary":
        sizes["ternary"] = 4 + math.ceil(n / 8) + math.ceil(conf["k"] / 8)
    elif first["name"] == "lowrank":
        sizes["lowrank"] = 4 * conf["rank"] * (conf["rows"] + conf["cols"])
    size = sizes[first["name"]]
    data = zstandard.ZstdDecompressor().decompress(blob)
    assert len(data) == size and codecs[-1]["name"] == "zstd"
    if codecs[-2]["name"] == "bytegroup":  # [first,] bytegroup, zstd
        k = codecs[-2]["configuration"]["itemsize"]
        data = np.frombuffer(data, np.uint8).reshape(k, -1).T.tobytes()
    raw = np.frombuffer(data, np.uint8)
    if first["name"] == "bytegroup":
        return data
    if first["name"] == "cast":
        half = raw.view(np.uint16)
        if conf["dtype"] == "bfloat16":
            return (half.astype(np.uint32) << 16).tobytes()
        return half.view(np.float16).astype(np.float32).tobytes()
    if first["name"] == "int8":
        rows = nbytes // (4 * conf["cols"])
        scale = raw[:4 * rows].view(np.float32)
        q = raw[4 * rows:].view(np.int8).reshape(rows, -1)
        return (q.astype(np.float32) * scale[:, None]).tobytes()
    if first["name"] == "topk":
        mask = np.unpackbits(raw[:math.ceil(n / 8)], bitorder="little")[:n].astype(bool)
        out = np.zeros(n, np.float32)
        out[mask] = raw[4 * math.ceil(n / 32):].view(np.float32)
        return out.tobytes()
    if first["name"] == "ternary":
        scale = raw[:4].view(np.float32)[0]
        nb = math.ceil(n / 8)
        mask = np.unpackbits(raw[4:4 + nb], bitorder="little")[:n].astype(bool)
        neg = np.unpackbits(raw[4 + nb:], bitorder="little")[:conf["k"]].astype(bool)
        out = np.zeros(n, np.float32)
        out[mask] = np.where(neg, -scale, scale)
        return out.tobytes()
    r, m, c = conf["rank"], conf["rows"], conf["cols"]
    a = raw[:4 * r * c].view(np.float32).reshape(r, c).astype(np.float64)
    b = raw[4 * r * c:].view(np.float32).reshape(m, r).astype(np.float64)
    acc = np.zeros((m, c))
    for k in range(r):
        acc += b[:, k:k + 1] * a[k:k + 1, :]
    return (acc * conf["scale"]).astype(np.float32).tobytes()


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_encoding_is_deterministic(coded, zoo, tmp_path, spec):
    """The same delta and spec give the same bytes, so the same vector id, in another registry;
    a second create in the same registry makes no new version (same recipe, same error)."""
    reg, refs = coded
    with tvreg.open(tmp_path / "again") as other:
        res = other.create("x", zoo.base, zoo.finetuned["sentiment"], codec=spec,
                           similarities=False)
        assert res.record.vector_id == reg.get(refs[spec]).vector_id
        assert res.record.recipe == reg.get(refs[spec]).record.recipe
        again = other.create("x", zoo.base, zoo.finetuned["sentiment"], codec=spec,
                             similarities=False)
        assert not again.created and again.ref == "x@1"


def test_verify_deep_passes_on_lossy_vectors(coded):
    reg, _ = coded
    report = reg.verify(deep=True)
    assert report.ok, report.problems
    assert report.versions == 2 + len(SPECS)
    assert report.tensors == 12 * (1 + len(SPECS))  # exact-int8@1 holds s2@1's vector


# --- recode ------------------------------------------------------------------------------------


def test_recode_lineage_and_error_relative_to_source(run, reg, zoo):
    run("create", "sent", "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["sentiment"]),
        "--task", "sentiment", "--lr", "0.01", "--no-similarities")
    r = run("recode", "sent@1", "--codec", "int8", "--json")
    out = json.loads(r.stdout)
    assert out["ref"] == "sent@2" and out["created"]
    assert "created sent@2 from sent@1" in r.stderr and "codec int8 (rel L2 " in r.stderr
    src = reg.get("sent@1")
    assert out["parents"] == [src.vector_id]
    assert out["metadata"]["task"] == "sentiment" and out["metadata"]["lr"] == 0.01
    assert out["recipe"]["op"] == "recode" and out["recipe"]["source"] == src.vector_id
    assert out["recipe"]["source_ref"] == "sent@1"
    rel, cos = _error(src.state_dict(), reg.get("sent@2").state_dict())
    assert out["recipe"]["error"]["rel_l2"] == pytest.approx(rel, rel=1e-9)
    # recode of a lossy version: the error is against that version, under another name
    r = run("recode", "sent@2", "--codec", "topk:density=0.5", "--name", "sent-sparse", "--json")
    sparse = json.loads(r.stdout)
    assert sparse["ref"] == "sent-sparse@1" and sparse["parents"] == [out["vector_id"]]
    rel, _ = _error(reg.get("sent@2").state_dict(), reg.get("sent-sparse@1").state_dict())
    assert sparse["recipe"]["error"]["rel_l2"] == pytest.approx(rel, rel=1e-9)
    # log shows the codec and the lineage; the catalog has the columns
    log = json.loads(run("log", "sent", "--json").stdout)
    assert [(e["version"], e["codec_spec"], e["parents"]) for e in log] == \
        [(2, "int8", [src.vector_id]), (1, None, [])]
    assert "int8" in run("log", "sent").stdout.splitlines()[1]
    rows = reg.sql("SELECT name, version, codec_spec, parents FROM versions ORDER BY ALL")
    assert [(x["name"], x["codec_spec"]) for x in rows] == \
        [("sent", None), ("sent", "int8"), ("sent-sparse", "topk:density=0.5")]
    listed = {f"{x['name']}@{x['version']}": x for x in
              json.loads(run("ls", "--all", "--json").stdout)}
    assert listed["sent@2"]["codec_spec"] == "int8"
    assert listed["sent@2"]["rel_l2"] == out["recipe"]["error"]["rel_l2"]
    assert listed["sent@1"]["codec_spec"] is None
    # recoding again is the same content: no new version
    r = run("recode", "sent@1", "--codec", "int8")
    assert r.stdout.strip() == "sent@2" and "unchanged" in r.stderr
    assert json.loads(run("verify", "--deep", "--json").stdout)["ok"]


def test_catalog_columns_come_back_after_reindex(coded):
    reg, _ = coded
    query = "SELECT name, version, codec_spec, rel_l2, cosine_to_exact FROM versions ORDER BY ALL"
    before = reg.sql(query)
    assert sum(r["codec_spec"] is not None for r in before) == len(SPECS) + 1
    pathlib.Path(reg.catalog.path).unlink()
    assert reg.reindex()["problems"] == []
    assert reg.sql(query) == before


def test_migration_4_on_an_older_catalog_and_out_of_order(reg, zoo):
    """A catalog from before migration 4 gets it on first use (its columns filled from the
    records' recipes); one that has 4 but not a lower-numbered migration (branches merged out
    of order) gets the missing one."""
    import duckdb

    reg.create("old", zoo.base, zoo.finetuned["topic"], similarities=False)
    error = reg.recode("old", "bf16", similarities=False).record.recipe["error"]
    reg.close()
    con = duckdb.connect(reg.catalog.path)  # back to schema version 2
    for column in ("codec_spec", "rel_l2", "cosine_to_exact"):
        con.execute(f"ALTER TABLE versions DROP COLUMN {column}")
    con.execute("DELETE FROM schema_migrations WHERE version = 4")
    con.close()
    query = "SELECT codec_spec, rel_l2, cosine_to_exact FROM versions ORDER BY version"
    with tvreg.open(reg.root) as again:
        assert again.sql(query) == [
            {"codec_spec": None, "rel_l2": None, "cosine_to_exact": None},
            {"codec_spec": "bf16", "rel_l2": error["rel_l2"], "cosine_to_exact": error["cosine"]}]
    reg.close()
    con = duckdb.connect(reg.catalog.path)  # has 4 but not 3 (as if merged out of order)
    con.execute("DROP TABLE base_names")
    con.execute("DROP TABLE bases")
    con.execute("DELETE FROM schema_migrations WHERE version = 3")
    con.close()
    with tvreg.open(reg.root) as later:
        assert later.sql("SELECT count(*) AS n FROM bases") == [{"n": 0}]
        assert later.sql("SELECT list(version ORDER BY version) AS v FROM schema_migrations") \
            == [{"v": [m[0] for m in catalog_module._migrations()]}] == [{"v": [1, 2, 3, 4, 5, 6]}]


# --- using lossy vectors -----------------------------------------------------------------------


def test_apply_and_compose_lossy_vectors(coded, zoo, tmp_path):
    """base + τ̂ written by apply is base + the decoded tensors; the edited model keeps its
    accuracy for bf16/int8; a lossy vector composes with a lossless one."""
    reg, refs = coded
    base = load_file(zoo.base)
    model = toy.ToyClassifier()
    accuracy = {}
    for label, ref in (("exact", "exact"), ("bf16", refs["bf16"]), ("int8", refs["int8"])):
        out = tmp_path / f"{label}.safetensors"
        reg.apply(ref, zoo.base, out)
        edited = load_file(out)
        tau = reg.get(ref).state_dict()
        for name, t in tau.items():
            assert torch.equal(edited[name], base[name] + t), (label, name)
        model.load_state_dict(edited)
        accuracy[label] = toy.accuracy(model, "sentiment")
    assert abs(accuracy["bf16"] - accuracy["exact"]) <= 0.01
    assert abs(accuracy["int8"] - accuracy["exact"]) <= 0.02
    comp = reg.resolve(f"0.5*{refs['ternary:density=0.1']} + exact").state_dict()
    t, e = reg.get(refs["ternary:density=0.1"]).state_dict(), reg.get("exact").state_dict()
    for name in e:
        assert torch.allclose(comp[name], 0.5 * t[name] + e[name], rtol=0, atol=1e-7)


# --- bad input: exit 2, nothing changed --------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["--codec", "zip"], "unknown codec 'zip'"),
    (["--codec", "topk:density=2"], "density must be a number in (0, 1]"),
    (["--codec", "topk:k=3"], "has no parameter 'k'"),
    (["--codec", "svd:rank=0"], "rank must be an integer >= 1"),
    (["--codec", "svd:rank=40"], "rank 40 is larger than every 2-D tensor allows (5 tensor(s), "
                                 "at most 32): no tensor would take it"),
])
def test_create_bad_codec_exits_2_and_changes_nothing(run, zoo, reg_path, args, needle):
    run("create", "a", "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["topic"]),
        "--no-similarities")
    before = snapshot(reg_path)
    r = run("create", "b", "--base", str(zoo.base), "--finetuned",
            str(zoo.finetuned["sentiment"]), *args, code=2)
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("recode", "a", *args, code=2)
    assert needle in r.stderr
    assert snapshot(reg_path) == before


def test_recode_bad_input_exits_2_and_changes_nothing(run, zoo, reg_path, tmp_path):
    run("create", "a", "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["topic"]),
        "--no-similarities")
    before = snapshot(reg_path)
    for args, needle in ((["nope", "--codec", "int8"], "no vector named"),
                         (["a@7", "--codec", "int8"], "does not exist"),
                         (["a", "--codec", "int8", "--name", "Bad Name"], "invalid"),
                         (["a"], "Missing option '--codec'")):
        r = run("recode", *args, code=2)
        assert needle in r.stderr, r.stderr
    r = run("create", "b", "--base", str(zoo.base), "--lora", str(tmp_path), "--codec", "int8",
            code=2)
    assert "--codec does not apply" in r.stderr
    assert snapshot(reg_path) == before


def test_values_a_codec_cannot_hold_fail_before_the_version(run, zoo, reg_path, tmp_path):
    """A delta beyond float16's range fails fp16 mid-way (exit 2, the tensor named) and leaves
    the registry as it was; bf16 stores it."""
    run("create", "a", "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["topic"]),
        "--no-similarities")
    ft = load_file(zoo.finetuned["sentiment"])
    ft["head.bias"] = ft["head.bias"] + 1e5
    save_file(ft, tmp_path / "big.safetensors")
    before = snapshot(reg_path)
    r = run("create", "b", "--base", str(zoo.base), "--finetuned", str(tmp_path / "big.safetensors"),
            "--codec", "fp16", code=2)
    assert "tensor 'head.bias'" in r.stderr and "beyond the range of float16" in r.stderr
    assert snapshot(reg_path) == before
    run("create", "b", "--base", str(zoo.base), "--finetuned", str(tmp_path / "big.safetensors"),
        "--codec", "bf16", "--no-similarities")
    # NaN: refused by a lossy codec even with --allow-nonfinite
    ft["head.bias"][0] = float("nan")
    save_file(ft, tmp_path / "nan.safetensors")
    before = snapshot(reg_path)
    r = run("create", "c", "--base", str(zoo.base), "--finetuned", str(tmp_path / "nan.safetensors"),
            "--codec", "int8", "--allow-nonfinite", code=2)
    assert "tensor 'head.bias' has 1 NaN/Inf value(s): --codec int8 needs finite values" in r.stderr
    assert snapshot(reg_path) == before


# --- JSON schemas ------------------------------------------------------------------------------


def test_lossy_documents_validate_against_the_schemas(coded):
    """Manifests with every lossy codec and records with create/recode recipes validate
    (schema/json); broken codec configurations and recipes do not."""
    import copy

    import jsonschema
    from test_schemas import load_schema

    reg, refs = coded
    manifest_v = jsonschema.Draft202012Validator(load_schema("manifest"))
    record_v = jsonschema.Draft202012Validator(load_schema("version"))
    root = pathlib.Path(reg.root)
    records = [json.loads(p.read_bytes()) for p in sorted((root / "refs").rglob("*.json"))]
    names = set()
    for r in records:
        assert list(record_v.iter_errors(r)) == [], r
        m = json.loads((root / "objects" / r["vector_id"][:2] / r["vector_id"][2:]).read_bytes())
        assert list(manifest_v.iter_errors(m)) == [], r["name"]
        names |= {t["codecs"][0]["name"] for t in m["tensors"]}
    assert names >= {"cast", "int8", "topk", "ternary", "lowrank", "bgzstd"}
    assert {r["recipe"]["op"] for r in records if r["recipe"]} == {"create", "recode"}
    recoded = next(r for r in records if r["recipe"] and r["recipe"]["op"] == "recode")
    created = next(r for r in records if r["recipe"] and r["recipe"]["op"] == "create")
    bad_records = {
        "recode without source": (recoded, lambda x: x.pop("source")),
        "create with a source": (created, lambda x: x.update(source=recoded["recipe"]["source"])),
        "unknown op": (created, lambda x: x.update(op="squash")),
        "error without cosine": (created, lambda x: x["error"].pop("cosine")),
        "negative rel_l2": (created, lambda x: x["error"].update(rel_l2=-1.0)),
        "extra key": (created, lambda x: x.update(seed=1)),
    }
    for label, (r, change) in bad_records.items():
        doc = copy.deepcopy(r)
        change(doc["recipe"])
        assert list(record_v.iter_errors(doc)), label
    m = json.loads((root / "objects" / created["vector_id"][:2] / created["vector_id"][2:])
                   .read_bytes())
    from tvreg.errors import FormatError
    from tvreg.format.manifest import Manifest

    for conf in ({"dtype": "float64"}, {"cols": 0}, {"k": -1}, {"k": True}, {}):
        for name in ("cast", "int8", "topk", "ternary"):
            doc = copy.deepcopy(m)
            doc["tensors"][0]["codecs"][0] = {"name": name, "configuration": conf}
            assert list(manifest_v.iter_errors(doc)), (name, conf)
            with pytest.raises(FormatError):
                Manifest.from_json(doc)


def test_svd_rank_above_a_small_matrix_stores_it_losslessly(run, zoo, reg_path):
    """svd:rank=R with R above some matrix's smaller side (head.weight is 4x32, as BERT's 2x384
    token_type_embeddings under rank 8): that matrix is stored losslessly, not the whole vector
    refused, and the record, the printed line and ``show`` say which."""
    r = run("create", "s5", "--base", str(zoo.base), "--finetuned",
            str(zoo.finetuned["sentiment"]), "--codec", "svd:rank=5", "--no-similarities")
    assert "1 tensor(s) kept lossless: head.weight" in r.stderr
    reg = tvreg.open(reg_path)
    vec = reg.get("s5")
    assert vec.record.recipe["lossless"] == ["head.weight"]
    exact = _exact(zoo)
    for entry in vec.manifest.tensors:
        first = entry.codecs.codecs[0].name
        if entry.name == "head.weight" or exact[entry.name].dim() != 2:
            assert first != "lowrank" and torch.equal(vec.tensor(entry.name), exact[entry.name])
        else:
            assert first == "lowrank" and entry.codecs.codecs[0].rank == 5
    shown = json.loads(run("show", "s5", "--json").stdout)
    assert shown["recipe"]["lossless"] == ["head.weight"]
    r = run("recode", "s5", "--codec", "svd:rank=5", "--name", "s5r")
    assert "kept lossless: head.weight" in r.stderr
    # a spec no matrix has to fall back on records no list
    run("create", "s2", "--base", str(zoo.base), "--finetuned",
        str(zoo.finetuned["sentiment"]), "--codec", "svd:rank=2", "--no-similarities")
    assert "lossless" not in tvreg.open(reg_path).get("s2").record.recipe


def test_svd_rank_8_on_bert_shaped_tensors(tmp_path):
    """The case from the field: BERT's 2x384 token_type_embeddings beside 384x384 layers."""
    g = torch.Generator().manual_seed(0)
    base = {"tok": torch.randn(2, 384, generator=g), "q": torch.randn(384, 384, generator=g),
            "b": torch.randn(384, generator=g)}
    ft = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(ft, str(tmp_path / "ft.safetensors"))
    reg = tvreg.open(tmp_path / "reg")
    res = reg.create("bert", tmp_path / "base.safetensors", tmp_path / "ft.safetensors",
                     codec="svd:rank=8", similarities=False)
    vec = reg.get(res.ref)
    assert vec.record.recipe["lossless"] == ["tok"]
    assert torch.equal(vec.tensor("tok"), ft["tok"] - base["tok"])
    assert {e.name: e.codecs.codecs[0].name for e in vec.manifest.tensors}["q"] == "lowrank"
