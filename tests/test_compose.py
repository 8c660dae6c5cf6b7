"""Composition and application on real stored vectors of a real fine-tuned model."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from click.testing import CliRunner
from helpers import snapshot
from safetensors.torch import load_file, save_file

import tvreg
from tvreg.cli.main import cli
from tvreg.compose.composition import BaseMismatchWarning
from tvreg.errors import IncompatibleCheckpoints, InvalidInput, NotFound
from tvreg.testing import ToyClassifier, accuracy, make_toy_zoo


@pytest.fixture(scope="module")
def other_base_zoo(tmp_path_factory):
    """Same architecture, another pre-training seed: another base model."""
    return make_toy_zoo(tmp_path_factory.mktemp("zoo-seed1"), tasks=("topic",), seed=1)


@pytest.fixture(scope="module")
def narrow_zoo(tmp_path_factory):
    """Another architecture (width 16)."""
    return make_toy_zoo(tmp_path_factory.mktemp("zoo-w16"), tasks=("topic",), width=16)


def tau(zoo, task) -> dict[str, torch.Tensor]:
    base, ft = load_file(zoo.base), load_file(zoo.finetuned[task])
    return {n: ft[n].float() - base[n].float() for n in base if base[n].is_floating_point()}


def test_identities(filled, zoo):
    a = tau(zoo, "sentiment")
    zero = filled.resolve("sentiment - sentiment").state_dict()
    assert set(zero) == set(a) and all(torch.count_nonzero(t) == 0 for t in zero.values())
    twice = filled.resolve("sentiment + sentiment").state_dict()
    doubled = filled.resolve("2*sentiment").state_dict()
    for n in a:
        assert torch.equal(twice[n], doubled[n]) and torch.equal(doubled[n], 2 * a[n])
    b = tau(zoo, "topic")
    mix = filled.resolve("0.5*sentiment + topic/4 - (toxicity - toxicity)").state_dict()
    for n in a:
        torch.testing.assert_close(mix[n], 0.5 * a[n] + 0.25 * b[n], rtol=0, atol=1e-7)


def test_lambda_include_exclude(filled, zoo):
    a = tau(zoo, "topic")
    comp = filled.resolve("topic", lam=0.5, exclude=r"^embed\.")
    sd = comp.state_dict()
    assert "embed.weight" not in sd and set(sd) == set(a) - {"embed.weight"}
    for n in sd:
        assert torch.equal(sd[n], 0.5 * a[n])
    only_head = filled.resolve("topic", include=r"^head\.").names()
    assert only_head == ["head.bias", "head.weight"]
    with pytest.raises(InvalidInput, match="leave no tensor"):
        filled.resolve("topic", include="nothing-matches")
    with pytest.raises(InvalidInput, match="regex"):
        filled.resolve("topic", exclude="(")


def test_apply_with_lambda_one_gives_the_finetuned_weights(filled, zoo, tmp_path):
    out = tmp_path / "merged.safetensors"
    filled.apply("topic", zoo.base, out)
    merged, ft, base = load_file(out), load_file(zoo.finetuned["topic"]), load_file(zoo.base)
    assert sorted(merged) == sorted(base)  # same keys (written in name order)
    for n in base:
        assert merged[n].dtype == base[n].dtype
        if base[n].is_floating_point():
            torch.testing.assert_close(merged[n], ft[n], rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(merged[n], base[n])


def test_apply_to_a_module_behaves_like_the_finetuned_model(filled, zoo):
    model = ToyClassifier(width=32)
    model.load_state_dict(load_file(zoo.base))
    base_acc = accuracy(model, "sentiment")
    filled.resolve("sentiment").apply_to(model)
    ft = ToyClassifier(width=32)
    ft.load_state_dict(load_file(zoo.finetuned["sentiment"]))
    tokens = torch.randint(1, 64, (64, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(tokens), ft(tokens), rtol=1e-5, atol=1e-5)
    assert accuracy(model, "sentiment") == accuracy(ft, "sentiment") > base_acc
    # negation forgets: applying −τ to the fine-tuned model gives the base back
    filled.resolve("-sentiment").apply_to(model)
    assert accuracy(model, "sentiment") == pytest.approx(base_acc, abs=0.01)


def test_apply_to_a_state_dict_checks_names_first(filled, zoo):
    sd = load_file(zoo.base)
    before = {n: t.clone() for n, t in sd.items()}
    del sd["head.bias"]
    with pytest.raises(IncompatibleCheckpoints, match="head.bias"):
        filled.resolve("topic").apply_to(sd)
    assert all(torch.equal(sd[n], before[n]) for n in sd)  # nothing changed


def test_other_base_is_refused_before_any_tensor_is_read(filled, other_base_zoo, reg_path):
    filled.create("topic-other", other_base_zoo.base, other_base_zoo.finetuned["topic"])
    # damage every blob of `topic`: a tensor read would fail with CorruptObject
    for blob in filled.get("topic").manifest.blob_ids():
        p = pathlib.Path(filled.root, "objects", blob[:2], blob[2:])
        p.write_bytes(b"x" + p.read_bytes()[1:])
    with pytest.raises(IncompatibleCheckpoints, match="different base models"):
        filled.resolve('topic + "topic-other"')
    with pytest.warns(BaseMismatchWarning):
        comp = filled.resolve('sentiment + "topic-other"', allow_base_mismatch=True)
    assert len(comp.state_dict()) == 12


def test_other_architecture_is_always_refused(filled, narrow_zoo):
    filled.create("narrow", narrow_zoo.base, narrow_zoo.finetuned["topic"])
    for allow in (False, True):
        with pytest.raises(IncompatibleCheckpoints, match="different architectures.*embed.weight"):
            filled.resolve("topic + narrow", allow_base_mismatch=allow)


def test_apply_onto_another_base_is_refused(filled, other_base_zoo, narrow_zoo, tmp_path):
    out = tmp_path / "x.safetensors"
    with pytest.raises(IncompatibleCheckpoints, match="not the vectors' base model"):
        filled.apply("topic", other_base_zoo.base, out)
    with pytest.raises(IncompatibleCheckpoints, match="not the vectors' architecture"):
        filled.apply("topic", narrow_zoo.base, out)
    assert not out.exists()
    with pytest.warns(BaseMismatchWarning):
        filled.apply("topic", other_base_zoo.base, out, allow_base_mismatch=True)
    assert out.exists()


def test_saved_composition_keeps_its_recipe(filled):
    comp = filled.resolve("0.5*sentiment + topic - 0.3*toxicity", lam=0.8)
    res = filled.save_composition("multi", comp, task="multi")
    assert res.created and res.ref == "multi@1"
    again = filled.save_composition("multi", filled.resolve("0.5*sentiment + topic - 0.3*toxicity",
                                                            lam=0.8), task="multi")
    assert not again.created
    vec = filled.get("multi")
    recipe = vec.metadata["recipe"]
    assert recipe["expression"] == "0.5*sentiment + topic - 0.3*toxicity"
    assert recipe["lambda"] == 0.8 and recipe["method"]["method"] == "task_arithmetic"
    ids = {r: filled.get(r).vector_id for r in ("sentiment", "topic", "toxicity")}
    assert [(o["ref"], o["vector_id"], o["coef"]) for o in recipe["operands"]] == [
        ("sentiment@1", ids["sentiment"], 0.5), ("topic@1", ids["topic"], 1.0),
        ("toxicity@1", ids["toxicity"], -0.3)]
    assert vec.metadata["parents"] == list(ids.values())
    stored, fresh = vec.state_dict(), comp.state_dict()
    assert all(torch.equal(stored[n], fresh[n]) for n in fresh)
    rows = filled.sql("SELECT name, recipe->>'expression' AS expr, parents FROM versions "
                      "WHERE recipe IS NOT NULL")
    assert rows == [{"name": "multi", "expr": recipe["expression"], "parents": list(ids.values())}]
    assert filled.verify().ok
    filled.reindex()
    assert filled.get("multi").metadata["recipe"] == recipe


def test_excluded_tensors_are_stored_as_zero_deltas(filled):
    res = filled.save_composition("no-embed", filled.resolve("topic", exclude=r"^embed\."))
    sd = filled.get("no-embed").state_dict()
    assert torch.count_nonzero(sd["embed.weight"]) == 0
    assert res.manifest.arch_fingerprint == filled.get("topic").arch_fingerprint
    filled.resolve('"no-embed" + sentiment')  # still composes with its siblings


def test_search_coefficients_picks_lambda_on_validation_data(filled, zoo):
    def evaluate(sd):
        model = ToyClassifier(width=32)
        model.load_state_dict(sd)
        return accuracy(model, "topic", n=500, seed=7)

    res = filled.search_coefficients("topic", evaluate, [0.0, 0.5, 1.0], base=zoo.base)
    assert [r["lambda"] for r in res["rows"]] == [0.0, 0.5, 1.0]
    assert res["best_lambda"] > 0 and res["best_score"] > res["rows"][0]["score"]


# --- CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def run(filled):
    runner = CliRunner()

    def invoke(*args, code=0):
        r = runner.invoke(cli, ["--registry", filled.root, *args], catch_exceptions=False)
        assert r.exit_code == code, (args, r.exit_code, r.stdout, r.stderr)
        return r

    return invoke


def test_cli_compose_save_show_and_apply(run, filled, zoo, tmp_path):
    out = tmp_path / "comp.safetensors"
    r = run("compose", "sentiment + 0.5*topic", "-o", str(out), "--save", "mix", "--lambda", "0.9")
    assert r.stdout.strip() == "mix@1" and "wrote" in r.stderr
    comp = load_file(out)
    a, b = tau(zoo, "sentiment"), tau(zoo, "topic")
    for n in a:
        torch.testing.assert_close(comp[n], 0.9 * (a[n] + 0.5 * b[n]), rtol=0, atol=1e-6)
    show = json.loads(run("show", "mix", "--json").stdout)
    assert show["recipe"]["expression"] == "sentiment + 0.5*topic" and len(show["parents"]) == 2
    merged = tmp_path / "model.safetensors"
    r = run("apply", "topic", "--base", str(zoo.base), "-o", str(merged), "--dtype", "bfloat16")
    m = load_file(merged)
    assert m["head.weight"].dtype == torch.bfloat16 and m["position_ids"].dtype == torch.int64


@pytest.mark.parametrize("args, needle", [
    (("compose", "", "-o", "x.safetensors"), "expression"),
    (("compose", "topic + nothere", "-o", "x.safetensors"), "no vector named 'nothere'"),
    (("compose", "topic/0", "-o", "x.safetensors"), "zero"),
    (("compose", "topic", "-o", "x.safetensors", "--method", "ties", "--density", "1.5"), "density"),
    (("compose", "topic", "-o", "x.safetensors", "--method", "nope"), "nope"),
    (("compose", "topic", "-o", "/nonexistent-dir/x.safetensors"), "does not exist"),
    (("compose", "topic"), "-o FILE, --save NAME"),
    (("apply", "topic", "--base", "missing.safetensors", "-o", "x.safetensors"), "no such file"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(run, filled, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    before = snapshot(filled.root)
    r = run(*args, code=2)
    assert needle in r.stderr, r.stderr
    assert snapshot(filled.root) == before
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_apply_onto_another_base_exits_2(run, other_base_zoo, tmp_path):
    out = tmp_path / "x.safetensors"
    r = run("apply", "topic", "--base", str(other_base_zoo.base), "-o", str(out), code=2)
    assert "not the vectors' base model" in r.stderr and not out.exists()
    r = run("apply", "topic", "--base", str(other_base_zoo.base), "-o", str(out),
            "--allow-base-mismatch")
    assert "warning" in r.stderr and out.exists()


def test_unknown_ref_in_python(filled):
    with pytest.raises(NotFound):
        filled.resolve("topic + nothere")
    assert isinstance(tvreg.open(filled.root).resolve("topic"), object)


@pytest.mark.parametrize("kw", [
    dict(method="ties", density=0.3),
    dict(method="ties", density=0.3, trim="global"),
    dict(method="ties", density=0.5, majority_sign="frequency"),
    dict(method="dare_linear", density=0.5, seed=3),
    dict(method="dare_ties", density=0.5, seed=3),
    dict(method="magnitude_prune", density=0.2),
    dict(method="magnitude_prune", density=0.2, trim="global"),
])
def test_merge_methods_on_stored_vectors_equal_merge_tensor(filled, kw):
    """The streamed composition gives, tensor by tensor, what tvreg.compose.merge gives on the decoded
    vectors held in memory (tvreg.compose.merge itself is checked against peft in test_merge.py)."""
    from tvreg.compose.merge import MagnitudeQuantile, MergeParams, merge_tensor, needs_thresholds

    expr = "sentiment + 0.5*topic - 0.7*toxicity"
    comp = filled.resolve(expr, **kw)
    got = comp.state_dict()
    vecs = [filled.get(r).state_dict() for r in ("sentiment", "topic", "toxicity")]
    params = MergeParams(**kw)
    thresholds = None
    if needs_thresholds(params):
        thresholds = []
        for v in vecs:
            q = MagnitudeQuantile(params.density, sum(t.numel() for t in v.values()))
            for step in (q.pass1, q.pass2):
                for t in v.values():
                    step(t)
            thresholds.append(q.threshold())
    for name in got:
        want = merge_tensor(params, [v[name] for v in vecs], [1.0, 0.5, -0.7], name=name,
                            thresholds=thresholds)
        assert torch.equal(got[name], want), name
    again = filled.resolve(expr, **kw).state_dict()
    assert all(torch.equal(again[n], got[n]) for n in got)


@pytest.fixture(scope="module")
def many_tensors(tmp_path_factory):
    """Three vectors of a 30-tensor float32 model and two of a float64 one, from files."""
    work = tmp_path_factory.mktemp("many")
    g = torch.Generator().manual_seed(0)
    reg = tvreg.open(work / "registry")
    raw = {}
    for kind, dtype, count in (("f32", torch.float32, 3), ("f64", torch.float64, 2)):
        base = {f"layer{i:02d}.weight": torch.randn(96, 64 + i, generator=g, dtype=dtype)
                for i in range(30)}
        save_file(base, str(work / f"{kind}-base.safetensors"))
        for k in range(count):
            ft = {n: t + 1e-2 * torch.randn(t.shape, generator=g, dtype=dtype)
                  for n, t in base.items()}
            save_file(ft, str(work / f"{kind}-ft{k}.safetensors"))
            reg.create(f"{kind}-{k}", work / f"{kind}-base.safetensors",
                       work / f"{kind}-ft{k}.safetensors")
            raw[f"{kind}-{k}"] = {n: ft[n] - base[n] for n in base}
    yield reg, raw
    reg.close()


@pytest.mark.parametrize("prefetch", [True, False])
def test_task_arithmetic_over_many_tensors_is_exact_and_order_fixed(many_tensors, prefetch):
    """Recycled buffers, several names in flight: every tensor kept by the caller stays right,
    and the sum is the same bits as adding in operand order."""
    reg, raw = many_tensors
    comp = reg.resolve('0.5*"f32-0" + "f32-1" - 0.25*"f32-2"', lam=0.8)
    held = dict(comp.iter_tensors(prefetch=prefetch))
    assert list(held) == sorted(raw["f32-0"])
    for n, t in held.items():
        want = raw["f32-0"][n] * 0.5
        want += raw["f32-1"][n]
        want += raw["f32-2"][n] * -0.25
        want *= 0.8
        assert t.dtype == torch.float32 and torch.equal(t, want), n


def test_float64_vectors_compose_in_float64(many_tensors, tmp_path):
    reg, raw = many_tensors
    sd = reg.resolve('"f64-0" - 2*"f64-1"').state_dict()
    for n, t in sd.items():
        assert t.dtype == torch.float64
        torch.testing.assert_close(t, raw["f64-0"][n] - 2 * raw["f64-1"][n], rtol=0, atol=1e-15)
    out = tmp_path / "m.safetensors"
    reg.apply('"f64-0"', str(reg.root) + "/../f64-base.safetensors", out)
    assert load_file(out)["layer03.weight"].dtype == torch.float64


def test_stream_buffers_can_be_recycled(many_tensors):
    reg, raw = many_tensors
    comp = reg.resolve('"f32-0" + "f32-1"')
    seen = 0
    for name, tensor, buf in comp.stream():
        torch.testing.assert_close(tensor, raw["f32-0"][name] + raw["f32-1"][name], rtol=0, atol=0)
        comp.recycle(buf)  # the next names may reuse it
        seen += 1
    assert seen == 30


def test_written_files_carry_the_full_recipe(filled, zoo, tmp_path, run):
    """compose -o and apply write the whole recipe (method, every parameter with the seed, λ,
    filters, operands with their vector ids) into the file's metadata: the same object a saved
    version's record keeps."""
    from safetensors import safe_open

    expr = "0.7*sentiment + topic@1 - 0.2*toxicity"
    args = ["--method", "dare_ties", "--density", "0.5", "--seed", "7", "--lambda", "0.8",
            "--exclude", "^head\\."]
    run("compose", expr, *args, "-o", str(tmp_path / "v.safetensors"))
    run("apply", expr, *args, "--base", str(zoo.base), "-o", str(tmp_path / "m.safetensors"))
    run("compose", expr, *args, "--save", "mix")
    saved = filled.get("mix").record.recipe
    assert saved["method"] == {"method": "dare_ties", "density": 0.5, "seed": 7,
                               "majority_sign": "total"}
    for name in ("v.safetensors", "m.safetensors"):
        with safe_open(str(tmp_path / name), framework="pt") as f:
            meta = f.metadata()
        assert json.loads(meta["tvreg.recipe"]) == saved, name
    ids = [op["vector_id"] for op in saved["operands"]]
    assert ids == [filled.get(r).vector_id for r in ("sentiment", "topic@1", "toxicity")]
    assert (saved["lambda"], saved["exclude"]) == (0.8, "^head\\.")
