"""TSV-M, Iso-C and Iso-CTS (compose/spectral.py) against fusion_bench 0.2.33's own functions on
the same task vectors: real fine-tunes of the toy classifier stored in a registry, and matrices
of the shapes that matter (tall, wide, square, ranks below the task count)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

# fusion_bench is a pinned test dependency (pyproject's `test` extra): its absence fails
from fusion_bench.method.isotropic_merging import iso_utils
from fusion_bench.method.task_singular_vector.utils import TSVM_utils as tsvm_utils
from safetensors.torch import load_file

from tvreg.cli.main import cli
from tvreg.compose.merge import MergeParams, merge_tensor
from tvreg.errors import InvalidInput

TASKS = ("sentiment", "topic", "toxicity")


def fusion(method: str, vectors: list[dict], common_fraction: float = 0.8) -> dict:
    """fusion_bench's merge of plain state dicts of task vectors, on the CPU."""
    if method == "tsv":
        return tsvm_utils.compute_and_sum_svd_mem_reduction(vectors, accelerator="cpu")
    if method == "iso_c":
        return iso_utils.iso_c(vectors, accelerator="cpu")
    return iso_utils.iso_cts(vectors, common_space_fraction=common_fraction, accelerator="cpu")


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    norm = float(theirs.double().norm())
    return float((ours.double() - theirs.double()).norm()) / (norm or 1.0)


def tau(zoo, task) -> dict[str, torch.Tensor]:
    base, ft = load_file(zoo.base), load_file(zoo.finetuned[task])
    return {n: ft[n].float() - base[n].float() for n in base if base[n].is_floating_point()}


@pytest.mark.parametrize("method, extra", [("tsv", {}), ("iso_c", {}),
                                           ("iso_cts", {}), ("iso_cts", {"common_fraction": 0.5})])
def test_equals_fusion_bench_on_stored_fine_tunes(filled, zoo, method, extra, capsys):
    weights = [1.0, 0.6, -0.4]
    expr = " + ".join(f"{w}*{t}" for w, t in zip(weights, TASKS, strict=True))
    ours = filled.resolve(expr, method=method, lam=0.7, **extra).state_dict()
    vectors = [{n: t * w for n, t in tau(zoo, task).items()}
               for task, w in zip(TASKS, weights, strict=True)]  # fusion_bench: alpha per model
    theirs = fusion(method, vectors, **extra)
    capsys.readouterr()  # fusion_bench prints a line per tensor
    assert set(ours) == set(theirs)
    matrices = [n for n in theirs if theirs[n].dim() == 2]
    assert matrices and len(matrices) < len(theirs)  # both kinds of tensor are compared
    compared = 0
    for n in theirs:
        if method == "iso_cts" and n in matrices and not all(
                _full_rank(v[n]) for v in vectors):
            continue  # ill-posed: see _full_rank
        assert rel_err(ours[n], 0.7 * theirs[n]) <= 1e-4, n
        compared += n in matrices
    assert compared


def _full_rank(t: torch.Tensor) -> bool:
    """Iso-CTS weighs every kept direction by the same mean singular value, also the
    directions a task matrix does not have (its singular values at rounding level: the toy's
    rank-1 position-embedding deltas): there the result is rounding noise, in fusion_bench as
    in tvreg (docs/composition.md), and only full-rank matrices are compared."""
    s = torch.linalg.svdvals(t.double())
    return bool(s[-1] > 1e-3 * s[0])


SHAPES = [(48, 32), (20, 64), (40, 40), (300, 6), (5, 2)]


@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_equals_fusion_bench_on_matrices(method, k, capsys):
    g = torch.Generator().manual_seed(k)
    for shape in SHAPES:
        shared = torch.randn(shape, generator=g)
        # a shared direction plus each task's own low-rank part and noise, as fine-tunes look
        ts = [0.5 * shared + torch.randn(shape[0], 3, generator=g) @ torch.randn(
            3, shape[1], generator=g) + 0.1 * torch.randn(shape, generator=g) for _ in range(k)]
        ours = merge_tensor(MergeParams(method), ts, [1.0] * k, name="w")
        theirs = fusion(method, [{"w": t} for t in ts])["w"]
        capsys.readouterr()
        assert rel_err(ours, theirs) <= 1e-4, (shape, k)


def test_iso_cts_with_too_few_directions():
    ts = [torch.randn(9, 2) for _ in range(3)]  # 2 directions, 3 tasks, nothing common
    with pytest.raises(InvalidInput, match="too few for 3 tasks"):
        merge_tensor(MergeParams("iso_cts", common_fraction=0.0), ts, [1.0] * 3, name="w")


def test_vectors_are_averaged_and_dtypes(capsys):
    ts = [torch.randn(7), torch.randn(7), torch.randn(7)]
    for method in ("tsv", "iso_c", "iso_cts"):
        ours = merge_tensor(MergeParams(method), ts, [1.0, 2.0, 0.5])
        theirs = fusion(method, [{"b": t * w} for t, w in zip(ts, [1.0, 2.0, 0.5],
                                                               strict=True)])["b"]
        capsys.readouterr()
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-6)
    bf16 = [t.reshape(1, 7).repeat(4, 1).bfloat16() for t in ts]
    out = merge_tensor(MergeParams("iso_c"), bf16, [1.0, 1.0, 1.0])
    assert out.dtype == torch.float32 and out.shape == (4, 7)
    assert merge_tensor(MergeParams("tsv"), [torch.zeros(0, 3)] * 2, [1.0, 1.0]).shape == (0, 3)


def test_params():
    assert MergeParams("iso_cts").common_fraction == 0.8
    assert MergeParams("iso_cts").to_json() == {"method": "iso_cts", "common_fraction": 0.8}
    assert MergeParams("tsv").to_json() == {"method": "tsv"}
    assert MergeParams.from_json({"method": "iso_cts", "common_fraction": 0.6}) \
        == MergeParams("iso_cts", common_fraction=0.6)
    for kwargs, message in [
            (dict(method="iso_c", common_fraction=0.5), "only for iso_cts"),
            (dict(method="iso_cts", common_fraction=1.5), "common_fraction must be"),
            (dict(method="iso_cts", common_fraction="x"), "common_fraction must be"),
            (dict(method="tsv", density=0.5), "density has no meaning for tsv"),
            (dict(method="tsv", rule="mergekit"), "no rule to choose")]:
        with pytest.raises(InvalidInput, match=message):
            MergeParams(**kwargs)


def test_cli(filled, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m.safetensors"
    r = runner.invoke(cli, ["--registry", filled.root, "compose", "sentiment + topic",
                            "--method", "iso_cts", "--common-fraction", "0.6", "-o", str(out)])
    assert r.exit_code == 0, r.output
    ours = load_file(str(out))
    want = filled.resolve("sentiment + topic", method="iso_cts", common_fraction=0.6)
    assert all(torch.equal(ours[n], t) for n, t in want.state_dict().items())
    r = runner.invoke(cli, ["--registry", filled.root, "compose", "sentiment + topic",
                            "--method", "tsv", "--common-fraction", "0.6", "-o", str(out)])
    assert r.exit_code == 2 and "only for iso_cts" in r.output
    r = runner.invoke(cli, ["--registry", filled.root, "compose", "sentiment + topic",
                            "--method", "tsv", "--density", "0.5", "-o", str(out)])
    assert r.exit_code == 2 and "density has no meaning for tsv" in r.output


def test_needs_a_matrix(filled):
    with pytest.raises(InvalidInput, match="tsv merges matrices"):
        filled.resolve("sentiment + topic", method="tsv", include=r"\.bias$")
    r = CliRunner().invoke(cli, ["--registry", filled.root, "compose", "sentiment + topic",
                                 "--method", "iso_c", "--include", "bias", "-o", "x.safetensors"])
    assert r.exit_code == 2 and "iso_c merges matrices" in r.output


def test_saved_recipe_and_reproduce(filled):
    comp = filled.resolve("0.5*sentiment + topic", method="iso_cts", common_fraction=0.7, lam=0.9)
    filled.save_composition("iso", comp, similarities=False)
    info = filled.show("iso")
    assert info["recipe"]["method"] == {"method": "iso_cts", "common_fraction": 0.7}
    r = CliRunner().invoke(cli, ["--registry", filled.root, "reproduce", "iso"])
    assert r.exit_code == 0, r.output  # recomputed from the recipe: the same vector id
    r = CliRunner().invoke(cli, ["--registry", filled.root, "show", "iso", "--recipe"])
    assert "merge_method: iso_cts" in r.output and "common_fraction: 0.7" in r.output


def test_recipe_file(filled, zoo, tmp_path):
    """A spectral method in a recipe file (tvreg's own method names, tvreg's rules)."""
    import yaml

    filled.add_base(zoo.base)
    base = load_file(zoo.base)

    cfg = tmp_path / "r.yml"
    cfg.write_text(yaml.safe_dump({
        "merge_method": "iso_cts", "tvreg": {"common_fraction": 0.6},
        "models": [{"model": "sentiment", "parameters": {"weight": 0.5}},
                   {"model": "topic", "parameters": {"weight": 1.0}}],
        "parameters": {"lambda": 0.8}}))
    out = tmp_path / "o.safetensors"
    r = CliRunner().invoke(cli, ["--registry", filled.root, "merge", str(cfg), "-o", str(out)])
    assert r.exit_code == 0, r.output
    want = filled.resolve("0.5*sentiment + topic", method="iso_cts", common_fraction=0.6,
                          lam=0.8).state_dict()
    got = load_file(str(out))  # θ_base + λ·merged
    assert all(torch.equal(got[n], base[n] + t) for n, t in want.items())
    cfg.write_text(yaml.safe_dump({
        "merge_method": "tsv", "tvreg": {"common_fraction": 0.6},
        "models": [{"model": "sentiment", "parameters": {"weight": 1.0}}]}))
    r = CliRunner().invoke(cli, ["--registry", filled.root, "merge", str(cfg), "-o", str(out)])
    assert r.exit_code == 2 and "only for iso_cts" in r.output


def test_device_option(filled, tmp_path):
    """--device: cpu gives the default's bits; cuda without a GPU, or a device for a method
    that has no SVD, is one line and exit 2 with nothing written."""
    cpu = filled.resolve("sentiment + topic", method="tsv", device="cpu").state_dict()
    default = filled.resolve("sentiment + topic", method="tsv").state_dict()
    assert all(torch.equal(cpu[n], t) for n, t in default.items())
    out = tmp_path / "m.safetensors"
    runner = CliRunner()
    cases = [(["--method", "tsv", "--device", "nope"], "unknown device 'nope'"),
             (["--device", "cpu"], "only for the spectral methods")]
    if not torch.cuda.is_available():
        cases.append((["--method", "iso_c", "--device", "cuda"], "no CUDA GPU here"))
    for args, message in cases:
        r = runner.invoke(cli, ["--registry", filled.root, "compose", "sentiment + topic",
                                *args, "-o", str(out)])
        assert r.exit_code == 2 and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("method", ["tsv", "iso_c"])
def test_rank_deficient_matrices_as_fusion_bench(method, capsys):
    """Rank-1 task matrices, tall and wide: the directions at rounding level are arbitrary, and
    only the same computation as fusion_bench's (the SVD of each matrix as given, not of its
    transpose or its Gram matrix) gives the same ones; TSV weighs them by their own tiny
    singular values and Iso-C by the mean, and both agree."""
    g = torch.Generator().manual_seed(1)
    ts = [torch.randn(200, 1, generator=g) @ torch.randn(1, 8, generator=g) for _ in range(3)]
    for shape in ((200, 8), (8, 200)):
        mats = [t if shape == (200, 8) else t.T.contiguous() for t in ts]
        ours = merge_tensor(MergeParams(method), mats, [1.0, 0.5, 2.0], name="w")
        theirs = fusion(method, [{"w": t * w} for t, w in zip(mats, [1.0, 0.5, 2.0],
                                                              strict=True)])["w"]
        capsys.readouterr()
        assert rel_err(ours, theirs) <= 1e-4, shape

