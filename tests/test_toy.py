"""Tests of tvreg.testing.toy, the tiny deterministic fine-tuning workload."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tvreg.testing import (
    SEQ_LEN,
    TASKS,
    ToyClassifier,
    accuracy,
    finetune,
    make_dataset,
    make_toy_zoo,
    param_count,
    pretrain,
    save_safetensors,
    toy,
)

DEFAULT_TASKS = ("sentiment", "topic", "toxicity")
EXPECTED_NAMES = [
    "embed.weight",
    "head.bias",
    "head.weight",
    "mlp.fc1.bias",
    "mlp.fc1.weight",
    "mlp.fc2.bias",
    "mlp.fc2.weight",
    "mlp.norm.bias",
    "mlp.norm.weight",
    "norm.bias",
    "norm.weight",
    "pos_embed.weight",
    "position_ids",
]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_toy_zoo(tmp_path_factory.mktemp("zoo"))


def _load_model(path, width=32) -> ToyClassifier:
    model = ToyClassifier(width)
    model.load_state_dict(load_file(path))
    return model.eval()


def _task_vector(zoo, task) -> torch.Tensor:
    base, ft = load_file(zoo.base), load_file(zoo.finetuned[task])
    return torch.cat([(ft[k] - base[k]).flatten() for k in sorted(base) if base[k].is_floating_point()])


def test_zoo_layout(zoo):
    assert zoo.base == zoo.dir / "base.safetensors" and zoo.base.is_file()
    assert tuple(zoo.finetuned) == DEFAULT_TASKS == zoo.tasks
    for task, path in zoo.finetuned.items():
        assert path == zoo.dir / f"ft_{task}.safetensors" and path.is_file()
        assert zoo.meta[task] == {"task": task, "dataset": f"toy-{task}", "lr": 1e-2, "steps": 20}
    assert not list(zoo.dir.glob("*.tmp"))
    reference = zoo.dir / "reference"
    reference.write_bytes(b"")
    try:  # written with the umask's usual mode, not 0600
        assert zoo.base.stat().st_mode == reference.stat().st_mode
    finally:
        reference.unlink()


def test_deterministic_bit_identical(tmp_path):
    rng_before = torch.get_rng_state()
    threads_before = torch.get_num_threads()
    a = make_toy_zoo(tmp_path / "a")
    b = make_toy_zoo(tmp_path / "b")
    assert torch.equal(torch.get_rng_state(), rng_before), "caller's global RNG state was changed"
    assert torch.get_num_threads() == threads_before
    assert a.base.read_bytes() == b.base.read_bytes()
    for task in DEFAULT_TASKS:
        assert a.finetuned[task].read_bytes() == b.finetuned[task].read_bytes()
    assert a.meta == b.meta
    # another seed gives another base
    c = make_toy_zoo(tmp_path / "c", tasks=("sentiment",), seed=1)
    assert c.base.read_bytes() != a.base.read_bytes()


def test_same_names_shapes_dtypes_and_int64_buffer(zoo):
    base = load_file(zoo.base)
    assert sorted(base) == EXPECTED_NAMES
    assert base["position_ids"].dtype == torch.int64
    assert torch.equal(base["position_ids"], torch.arange(SEQ_LEN))
    for task in DEFAULT_TASKS:
        ft = load_file(zoo.finetuned[task])
        assert set(ft) == set(base)
        for name, tensor in base.items():
            assert ft[name].shape == tensor.shape and ft[name].dtype == tensor.dtype, name
        assert any(t.dtype == torch.int64 for t in ft.values())
        assert torch.equal(ft["position_ids"], base["position_ids"])
        floating = [name for name, t in base.items() if t.is_floating_point()]
        assert all(base[name].dtype == torch.float32 for name in floating)
        changed = [name for name in floating if not torch.equal(ft[name], base[name])]
        assert changed == floating, "full fine-tuning should change every parameter"


def test_finetuning_improves_task_accuracy(zoo):
    base = _load_model(zoo.base)
    for task in DEFAULT_TASKS:
        ft = _load_model(zoo.finetuned[task])
        base_acc, ft_acc = accuracy(base, task), accuracy(ft, task)
        assert ft_acc > 0.6 and ft_acc > base_acc + 0.15, (task, base_acc, ft_acc)


def test_task_vectors_differ_between_tasks(zoo):
    vectors = {task: _task_vector(zoo, task) for task in DEFAULT_TASKS}
    for i, a in enumerate(DEFAULT_TASKS):
        assert vectors[a].norm() > 0
        for b in DEFAULT_TASKS[i + 1 :]:
            cos = torch.nn.functional.cosine_similarity(vectors[a], vectors[b], dim=0).item()
            assert cos < 0.9, (a, b, cos)


def test_bfloat16(tmp_path):
    zoo = make_toy_zoo(tmp_path, tasks=("topic",), dtype=torch.bfloat16)
    for path in (zoo.base, zoo.finetuned["topic"]):
        tensors = load_file(path)
        assert tensors["position_ids"].dtype == torch.int64
        floating = {name: t.dtype for name, t in tensors.items() if name != "position_ids"}
        assert floating and set(floating.values()) == {torch.bfloat16}
    with pytest.raises(ValueError):
        save_safetensors(ToyClassifier(), tmp_path / "x.safetensors", dtype=torch.int32)


def test_width_scales_parameter_count():
    assert param_count(8) < param_count(32) < param_count(64)
    assert 3_000 <= param_count() <= 100_000
    for width, ratio in [(1, 1), (16, 4), (24, 2)]:
        model = ToyClassifier(width, mlp_ratio=ratio)
        assert param_count(width, ratio) == sum(p.numel() for p in model.parameters())
        assert sorted(model.state_dict()) == EXPECTED_NAMES
    assert param_count(1600) >= 20_000_000


def test_all_tasks_learnable_and_datasets_deterministic():
    base = pretrain()
    for task in TASKS:
        tokens, labels = make_dataset(task, 500, seed=3)
        assert tokens.shape == (500, SEQ_LEN) and labels.shape == (500,)
        assert tokens.dtype == labels.dtype == torch.int64
        again = make_dataset(task, 500, seed=3)
        assert torch.equal(tokens, again[0]) and torch.equal(labels, again[1])
        assert not torch.equal(tokens, make_dataset(task, 500, seed=4)[0])
        assert torch.equal(labels, toy._label(task, tokens)), "labels are a function of the tokens"
        counts = torch.bincount(labels)
        assert (counts > 0).sum() >= 2 and counts.max() < 0.7 * len(labels), (task, counts)
        steps = 150 if task == "parity" else 60  # parity of a count is the hardest for an MLP
        assert accuracy(finetune(base, task, steps=steps), task) > 0.9, task
    with pytest.raises(ValueError):
        make_dataset("nope", 3)
    with pytest.raises(ValueError):
        finetune(base, "nope")


def test_finetune_leaves_base_untouched():
    base = pretrain()
    before = copy.deepcopy(base.state_dict())
    ft = finetune(base, "sentiment", steps=3)
    assert ft is not base
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, before[name])
    assert not all(torch.equal(a, b) for a, b in zip(ft.parameters(), base.parameters()))


def test_adam_matches_torch_optim():
    base = pretrain(steps=5)
    ours = finetune(base, "topic", steps=5, lr=1e-2, seed=7)
    ref = copy.deepcopy(base).requires_grad_(True).train()
    tokens, labels = toy._dataset("topic", 5 * 128, toy._generator("finetune", "topic", 7))
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for step in range(5):
        batch = slice(step * 128, (step + 1) * 128)
        loss = torch.nn.functional.cross_entropy(ref(tokens[batch]), labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_metadata_written_in_sorted_order(tmp_path):
    metadata = {"zeta": "1", "alpha": "2", "mid": "é", "b": "x"}
    path = save_safetensors({"w": torch.ones(3), "i": torch.arange(2)}, tmp_path / "m.safetensors", metadata=metadata)
    raw = path.read_bytes()
    assert raw.index(b'"alpha"') < raw.index(b'"b"') < raw.index(b'"mid"') < raw.index(b'"zeta"')
    with safe_open(path, "pt") as f:
        assert f.metadata() == metadata
        assert torch.equal(f.get_tensor("i"), torch.arange(2))


def test_default_zoo_is_fast(tmp_path):
    start = time.perf_counter()
    make_toy_zoo(tmp_path)
    assert time.perf_counter() - start < 2.0
