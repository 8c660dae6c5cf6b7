"""Pairs whose floating tensors differ in dtype (an fp32 base with a bf16 or fp16 fine-tune),
and compositions of vectors whose dtypes differ (issue 14, item 8): τ = ft.to(work) −
base.to(work) exactly, the fine-tune's dtype recorded (``finetuned_dtype``), applied tensors
cast back to the base's dtype; names and shapes decide whether vectors compose, and the
dtypes are reported. Real safetensors files, a real registry, the real CLI."""

from __future__ import annotations

import json
import pathlib

import jsonschema
import pytest
import torch
from helpers import snapshot
from safetensors.torch import load_file, save_file

from tvreg.errors import FormatError, IncompatibleCheckpoints, InvalidInput
from tvreg.format.manifest import Manifest

#: sentiment@1's vector id in docs/format.md §16 (the fp32 toy zoo), and the bf16 zoo's, as
#: main computed them before mixed dtypes existed: a same-dtype pair keeps its id. The toy zoo
#: is trained on the CPU, so its bytes (and these ids) hold on CPUs whose float kernels sum as
#: the one that made the docs did: the zoo's base hash says which
DOCS_BASE_HASH = "16eae20532b2f43e0eccc81ca52ef2df101e5dc4f098fcd4a11b31e484fd0e4e"
FP32_SENTIMENT_ID = "6d3d21d99c0b13f272e08d4bb91a53643df160284f43651a3fc37f6a98736b53"
BF16_SENTIMENT_ID = "8bd343d39f12fb06f8cc685a6f614d3ee4062767da68119a73ae35c977b96003"

LOW = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def cast_file(src, dst: pathlib.Path, dtype: torch.dtype, *, ints: torch.dtype | None = None
              ) -> pathlib.Path:
    """A copy of the checkpoint ``src`` with its floating tensors cast to ``dtype`` (and its
    integer ones to ``ints``, if given)."""
    out = {}
    for n, t in load_file(str(src)).items():
        if t.is_floating_point():
            out[n] = t.to(dtype)
        else:
            out[n] = t.to(ints) if ints is not None else t
    save_file(out, str(dst))
    return dst


@pytest.fixture(scope="module")
def low_ft(zoo, tmp_path_factory):
    """The fp32 zoo's fine-tunes cast to bf16 and to fp16: {dtype name: {task: path}}."""
    d = tmp_path_factory.mktemp("low-ft")
    return {name: {task: cast_file(p, d / f"{name}_{task}.safetensors", dt)
                   for task, p in zoo.finetuned.items()} for name, dt in LOW.items()}


@pytest.mark.parametrize("low", ["bfloat16", "float16"])
def test_fp32_base_with_low_precision_finetune(reg, zoo, low_ft, low):
    res = reg.create("mixed", zoo.base, low_ft[low]["sentiment"])
    same = reg.create("same", zoo.base, zoo.finetuned["sentiment"])
    m = res.manifest
    base, ft = load_file(str(zoo.base)), load_file(str(low_ft[low]["sentiment"]))
    vec = reg.get("mixed")
    assert vec.names() == sorted(n for n, t in base.items() if t.is_floating_point())
    for n, d in vec.tensors().items():
        assert d.dtype == torch.float32
        want = ft[n].to(torch.float32) - base[n]
        assert torch.equal(d.view(torch.int32), want.view(torch.int32)), n  # bit for bit
    for t in m.tensors:
        assert (t.dtype, t.source_dtype, t.finetuned_dtype) == ("float32", "float32", low)
        assert t.to_json()["finetuned_dtype"] == low
    assert [(s.name, s.dtype) for s in m.skipped] == [("position_ids", "int64")]
    # the base hash is the base's own (an fp32 fine-tune of it has the same), and so is the
    # architecture: the two vectors share a base
    assert m.base_hash == same.manifest.base_hash
    assert m.arch_fingerprint == same.manifest.arch_fingerprint
    info = reg.show("mixed", tensors=True)
    assert info["dtypes"] == f"{low} fine-tune of float32"
    assert {t["finetuned_dtype"] for t in info["tensors"]} == {low}
    assert reg.show("same", tensors=True)["dtypes"] == "float32"
    assert {t["finetuned_dtype"] for t in reg.show("same", tensors=True)["tensors"]} == \
        {"float32"}


def test_same_dtype_ids_unchanged(reg, zoo, zoo_bf16):
    """No ``finetuned_dtype`` key where the dtypes agree: the ids main computed still hold."""
    import hashlib

    from tvreg.digest import canonical_json

    fp32 = reg.create("s32", zoo.base, zoo.finetuned["sentiment"])
    bf16 = reg.create("s16", zoo_bf16.base, zoo_bf16.finetuned["sentiment"])
    if fp32.manifest.base_hash == DOCS_BASE_HASH:  # the zoo of the docs, bit for bit
        assert fp32.record.vector_id == FP32_SENTIMENT_ID
        assert bf16.record.vector_id == BF16_SENTIMENT_ID
    for r in (fp32, bf16):
        assert all("finetuned_dtype" not in t.to_json() for t in r.manifest.tensors)
        assert all(t.finetuned_dtype is None for t in r.manifest.tensors)
        # the id is the hash of the manifest as written before mixed dtypes: no new key
        doc = json.loads(reg.objects.get(r.record.vector_id))
        assert all(set(t) == {"name", "dtype", "source_dtype", "shape", "sha256", "codecs",
                              "chunks"} for t in doc["tensors"]), doc["tensors"][0].keys()
        assert hashlib.sha256(canonical_json(doc)).hexdigest() == r.record.vector_id


def test_cli_create_show_and_apply(run, reg_path, zoo, low_ft, tmp_path):
    ft = low_ft["bfloat16"]["topic"]
    run("create", "topic_bf16", "--base", str(zoo.base), "--finetuned", str(ft))
    shown = json.loads(run("show", "topic_bf16", "--tensors", "--json").stdout)
    assert shown["dtypes"] == "bfloat16 fine-tune of float32"
    assert {(t["source_dtype"], t["finetuned_dtype"], t["dtype"]) for t in shown["tensors"]} \
        == {("float32", "bfloat16", "float32")}
    table = run("show", "topic_bf16", "--tensors").stdout
    assert "FINE-TUNED" in table
    row = next(line for line in table.splitlines() if line.startswith("head.weight"))
    assert row.split()[1:4] == ["float32", "float32", "bfloat16"]
    # λ = 1 on the base gives back the fine-tune, in the base's dtype (fp32) by default
    base, want = load_file(str(zoo.base)), load_file(str(ft))
    out = tmp_path / "merged.safetensors"
    run("apply", "topic_bf16", "--base", str(zoo.base), "-o", str(out))
    got = load_file(str(out))
    assert set(got) == set(base)
    for n, t in got.items():
        if not base[n].is_floating_point():
            assert torch.equal(t, base[n])
            continue
        assert t.dtype == torch.float32, n
        # base + (ft − base) in fp32 is ft to fp32 rounding, so it rounds back to ft exactly
        w = want[n].float()
        assert bool(((t - w).abs() <= 2**-22 * (base[n].abs() + w.abs())).all()), n
        assert torch.equal(t.to(torch.bfloat16), want[n]), n
    out16 = tmp_path / "merged16.safetensors"
    run("apply", "topic_bf16", "--base", str(zoo.base), "-o", str(out16), "--dtype", "bfloat16")
    for n, t in load_file(str(out16)).items():
        if base[n].is_floating_point():
            assert t.dtype == torch.bfloat16 and torch.equal(t, want[n]), n


def test_compose_bf16_and_fp32_finetunes_of_one_base(run, reg, zoo, low_ft, tmp_path):
    reg.create("a", zoo.base, low_ft["bfloat16"]["sentiment"])
    reg.create("b", zoo.base, zoo.finetuned["topic"])
    out = tmp_path / "sum.safetensors"
    res = run("compose", "a + b", "-o", str(out), "--json")
    assert ("tvreg: note: operands differ in dtype: a@1 (bfloat16 fine-tune of float32), b@1 "
            "(float32); summed in float32") in res.stderr
    report = json.loads(res.stdout)["dtypes"]
    assert report["summed_in"] == "float32"
    assert [(r["ref"], r["finetuned_dtypes"], r["source_dtypes"]) for r in report["operands"]] \
        == [("a@1", ["bfloat16"], ["float32"]), ("b@1", ["float32"], ["float32"])]
    ta, tb = reg.get("a").state_dict(), reg.get("b").state_dict()
    got = load_file(str(out))
    assert set(got) == set(ta)
    for n, t in got.items():
        assert t.dtype == torch.float32 and torch.equal(t, ta[n] + tb[n]), n
    # same dtypes: no note, and dtypes null in --json
    res = run("compose", "b + b", "-o", str(tmp_path / "bb.safetensors"), "--json")
    assert "differ in dtype" not in res.stderr
    assert json.loads(res.stdout)["dtypes"] is None
    comp = reg.resolve("a - b")
    assert comp.dtype_report["operands"][0]["dtypes"] == "bfloat16 fine-tune of float32"


def test_vectors_of_bases_of_other_dtypes(run, reg, zoo, zoo_bf16, tmp_path):
    """A vector of the bf16 copy of the base and one of the fp32 base: the same architecture
    (names and shapes), but different base models (hashes): refused, with the dtypes named,
    unless --allow-base-mismatch; then summed in fp32 with the dtypes reported."""
    reg.create("s32", zoo.base, zoo.finetuned["sentiment"])
    reg.create("s16", zoo_bf16.base, zoo_bf16.finetuned["sentiment"])
    before = snapshot(reg.root)
    res = run("compose", "s32 + s16", "-o", str(tmp_path / "x.safetensors"), code=2)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "come from different base models" in err and "float32 vs bfloat16" in err
    assert "--allow-base-mismatch" in err and "architecture" not in err
    assert not (tmp_path / "x.safetensors").exists() and snapshot(reg.root) == before
    out = tmp_path / "y.safetensors"
    res = run("compose", "s32 + s16", "-o", str(out), "--allow-base-mismatch")
    assert "tvreg: warning:" in res.stderr
    assert "operands differ in dtype: s32@1 (float32), s16@1 (bfloat16); summed in float32" \
        in res.stderr
    a, b = reg.get("s32").state_dict(), reg.get("s16").state_dict()
    for n, t in load_file(str(out)).items():
        assert torch.equal(t, a[n] + b[n]), n


def test_architecture_error_mentions_dtypes_too(reg, zoo, tmp_path):
    """Names or shapes that differ still refuse, naming them, and the dtypes that differ too."""
    bigger = {}
    for path, dst in ((zoo.base, "base"), (zoo.finetuned["topic"], "ft")):
        t = {n: (v.to(torch.bfloat16) if v.is_floating_point() else v)
             for n, v in load_file(str(path)).items()}
        t["zz.extra"] = torch.ones(3, dtype=torch.bfloat16) * (2 if dst == "ft" else 1)
        bigger[dst] = tmp_path / f"{dst}.safetensors"
        save_file(t, str(bigger[dst]))
    reg.create("a", zoo.base, zoo.finetuned["sentiment"])
    reg.create("b", bigger["base"], bigger["ft"])
    with pytest.raises(IncompatibleCheckpoints) as e:
        reg.resolve("a + b")
    msg = str(e.value)
    assert "a@1 and b@1 have different architectures: 1 tensor(s) differ: zz.extra " \
           "(only in one)" in msg
    assert "more differ in dtype only (allowed): " in msg and "(float32 vs bfloat16)" in msg


def test_integer_tensors_of_other_dtype_refused(run, reg_path, zoo, tmp_path):
    ft = cast_file(zoo.finetuned["topic"], tmp_path / "ft.safetensors", torch.bfloat16,
                   ints=torch.int32)
    run("create", "seed", "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["sentiment"]))
    before = snapshot(reg_path)
    res = run("create", "bad", "--base", str(zoo.base), "--finetuned", str(ft), code=2)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "position_ids (int64[16] vs int32[16])" in err
    assert "only floating tensors may differ in dtype" in err
    assert snapshot(reg_path) == before


def test_shape_difference_still_refused(reg, zoo, tmp_path):
    t = {n: v.to(torch.bfloat16) if v.is_floating_point() else v
         for n, v in load_file(str(zoo.finetuned["topic"])).items()}
    t["head.bias"] = torch.zeros(5, dtype=torch.bfloat16)
    save_file(t, str(tmp_path / "ft.safetensors"))
    with pytest.raises(IncompatibleCheckpoints, match=r"1 tensor\(s\) differ in shape: "
                       r"head\.bias \(float32\[4\] vs bfloat16\[5\]\)$"):
        reg.create("bad", zoo.base, tmp_path / "ft.safetensors")


def test_exact_mode_needs_one_dtype(reg, zoo, low_ft):
    reg.create("seed", zoo.base, zoo.finetuned["sentiment"])
    before = snapshot(reg.root)
    with pytest.raises(InvalidInput, match="exact mode needs the same dtype in both checkpoints"):
        reg.create("x", zoo.base, low_ft["bfloat16"]["topic"], exact=True)
    assert snapshot(reg.root) == before


def test_float64_side_widens_to_float64(reg, zoo, tmp_path):
    ft = cast_file(zoo.finetuned["topic"], tmp_path / "ft64.safetensors", torch.float64)
    m = reg.create("wide", zoo.base, ft).manifest
    assert {(t.dtype, t.source_dtype, t.finetuned_dtype) for t in m.tensors} == \
        {("float64", "float32", "float64")}
    base, f = load_file(str(zoo.base)), load_file(str(ft))
    for n, d in reg.get("wide").tensors().items():
        assert d.dtype == torch.float64 and torch.equal(d, f[n] - base[n].double()), n


def test_fp16_base_with_bf16_finetune(reg, zoo, tmp_path):
    base = cast_file(zoo.base, tmp_path / "base16.safetensors", torch.float16)
    ft = cast_file(zoo.finetuned["topic"], tmp_path / "ftbf.safetensors", torch.bfloat16)
    m = reg.create("x", base, ft).manifest
    assert {(t.dtype, t.source_dtype, t.finetuned_dtype) for t in m.tensors} == \
        {("float32", "float16", "bfloat16")}
    b, f = load_file(str(base)), load_file(str(ft))
    for n, d in reg.get("x").tensors().items():
        assert torch.equal(d, f[n].float() - b[n].float()), n


def test_recode_keeps_finetuned_dtype(reg, zoo, low_ft):
    reg.create("m", zoo.base, low_ft["float16"]["sentiment"])
    res = reg.recode("m", "bf16")
    assert {t.finetuned_dtype for t in res.manifest.tensors} == {"float16"}


def test_manifest_field_is_checked_and_in_the_schema(reg, zoo, low_ft):
    import importlib.resources

    schema = json.loads((importlib.resources.files("tvreg.schema") / "json" /
                         "manifest.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    doc = reg.create("m", zoo.base, low_ft["bfloat16"]["sentiment"]).manifest.to_json()
    validator.validate(doc)
    assert Manifest.from_json(doc).to_json() == doc  # read back as written
    for bad, message in (("float32", "finetuned_dtype equals source_dtype"),
                         ("int8", "finetuned_dtype int8 is not floating"),
                         ("float7", "unknown dtype")):
        broken = json.loads(json.dumps(doc))
        broken["tensors"][0]["finetuned_dtype"] = bad
        with pytest.raises(FormatError, match=message):
            Manifest.from_json(broken)
    old = reg.create("o", zoo.base, zoo.finetuned["sentiment"]).manifest.to_json()
    validator.validate(old)
    assert "finetuned_dtype" not in old["tensors"][0]


def test_apply_onto_a_base_of_another_dtype(run, reg, zoo, zoo_bf16, tmp_path):
    """The bf16 copy of the base has the vectors' names and shapes: not another architecture,
    but another base (its hash): refused as such, applied with --allow-base-mismatch (in the
    given base's dtype)."""
    reg.create("s", zoo.base, zoo.finetuned["sentiment"])
    out = tmp_path / "m.safetensors"
    err = run("apply", "s", "--base", str(zoo_bf16.base), "-o", str(out), code=2).stderr
    assert "is not the vectors' base model" in err and "architecture" not in err
    assert not out.exists()
    run("apply", "s", "--base", str(zoo_bf16.base), "-o", str(out), "--allow-base-mismatch")
    base, tau = load_file(str(zoo_bf16.base)), reg.get("s").state_dict()
    for n, t in load_file(str(out)).items():
        if n in tau:
            assert t.dtype == torch.bfloat16 and torch.equal(t, (base[n].float() + tau[n])
                                                             .to(torch.bfloat16)), n
        else:
            assert torch.equal(t, base[n]), n
