"""A tiny, deterministic, *real* fine-tuning workload.

It produces the raw material of a task-vector registry — a pre-trained base checkpoint and
checkpoints fine-tuned from it on different tasks, as ``.safetensors`` files — in about a
second on a laptop CPU, so the test suite, the README demo and the benchmarks can work on
genuine task vectors ``τ = θ_ft − θ_base`` instead of random tensors.

The model, :class:`ToyClassifier`, embeds a sequence of tokens (plus learned position
embeddings indexed by an ``int64`` ``position_ids`` buffer, like BERT's), mean-pools them and
classifies the pooled vector with a pre-norm residual 2-layer MLP and a linear head. Its
``width`` knob scales it from ~11k parameters (``width=32``, the default) to more than 20M
(``width=1600``).

Tasks are synthetic classification problems over token sequences, each label a deterministic
function of the tokens (see :data:`TASKS` and :func:`make_dataset`). The vocabulary is laid
out in fixed groups so that the tasks share it:

=========  ===========  ===================================================================
tokens     group        used by
=========  ===========  ===================================================================
0          PAD          ``length``: label = more than half of the positions are not PAD
1–8        positive     ``sentiment``: label = more positive than negative tokens
9–16       negative     ``sentiment``
17–32      4 topics     ``topic``: label = which group of 4 tokens occurs most (first on ties)
33–36      toxic        ``toxicity``: label = a toxic token occurs
37–38      marker       ``parity``: label = the number of marker tokens is odd (0–3 of them)
39–63      filler
=========  ===========  ===================================================================

:func:`pretrain` trains on a generic pretext task (which residue class of token ids mod 4
dominates) over a mixture of all tasks' inputs, so the base has learned token statistics but
solves none of the tasks; :func:`finetune` then runs real Adam steps on one task.

Everything is deterministic: data come from seeded :class:`torch.Generator` objects, weight
initialisation runs under a forked, seeded global RNG (the caller's RNG state is left as it
was), and computations run on one CPU thread by default (the previous setting is restored),
so the same arguments give bit-identical checkpoints.

Example::

    from tvreg.testing import make_toy_zoo
    zoo = make_toy_zoo("/tmp/zoo")           # base + 3 fine-tuned checkpoints
    zoo.base, zoo.finetuned["sentiment"], zoo.meta["sentiment"]
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import pathlib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "NUM_CLASSES",
    "SEQ_LEN",
    "TASKS",
    "VOCAB_SIZE",
    "ToyClassifier",
    "ToyZoo",
    "accuracy",
    "finetune",
    "make_dataset",
    "make_toy_zoo",
    "param_count",
    "pretrain",
    "save_safetensors",
]

VOCAB_SIZE = 64
"""Number of distinct tokens (token ``0`` is padding)."""
SEQ_LEN = 16
"""Length of every token sequence (``length`` pads the tail with ``0``)."""
NUM_CLASSES = 4
"""Logits of the shared head; binary tasks use classes 0 and 1 only."""

TASKS: tuple[str, ...] = ("sentiment", "topic", "toxicity", "length", "parity")
"""Names of the synthetic tasks understood by :func:`make_dataset` and :func:`finetune`."""

PAD = 0
_POSITIVE = torch.arange(1, 9)
_NEGATIVE = torch.arange(9, 17)
_TOPICS = torch.arange(17, 33).view(4, 4)
_TOXIC = torch.arange(33, 37)
_MARKER = torch.arange(37, 39)

_BATCH = 128
_PRETRAIN_STEPS = 30
_PRETRAIN_LR = 1e-2


# --------------------------------------------------------------------------------------------
# model


class ToyClassifier(nn.Module):
    """Embedding → mean-pooling → pre-norm residual 2-layer MLP → LayerNorm → linear head.

    State-dict names (sorted): ``embed.weight``, ``head.bias``, ``head.weight``,
    ``mlp.fc1.bias``, ``mlp.fc1.weight``, ``mlp.fc2.bias``, ``mlp.fc2.weight``,
    ``mlp.norm.bias``, ``mlp.norm.weight``, ``norm.bias``, ``norm.weight``,
    ``pos_embed.weight`` and the ``int64`` buffer ``position_ids``.

    The parameter count is about ``2 * mlp_ratio * width**2 + (VOCAB_SIZE + SEQ_LEN) * width``:
    ~11k for ``width=32``, ~20.6M for ``width=1600``.
    """

    position_ids: torch.Tensor  # a buffer (register_buffer), not a class attribute

    def __init__(self, width: int = 32, mlp_ratio: int = 4) -> None:
        super().__init__()
        if width < 1 or mlp_ratio < 1:
            raise ValueError(f"width and mlp_ratio must be positive, got {width}, {mlp_ratio}")
        self.width = int(width)
        self.mlp_ratio = int(mlp_ratio)
        self.embed = nn.Embedding(VOCAB_SIZE, width)
        self.pos_embed = nn.Embedding(SEQ_LEN, width)
        self.mlp = nn.Module()
        self.mlp.norm = nn.LayerNorm(width)
        self.mlp.fc1 = nn.Linear(width, mlp_ratio * width)
        self.mlp.fc2 = nn.Linear(mlp_ratio * width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, NUM_CLASSES)
        self.register_buffer("position_ids", torch.arange(SEQ_LEN, dtype=torch.int64))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens``: ``(batch, seq)`` int64 with ``seq <= SEQ_LEN``; returns
        ``(batch, NUM_CLASSES)`` logits."""
        seq = tokens.shape[-1]
        x = self.embed(tokens) + self.pos_embed(self.position_ids[:seq])
        x = x.mean(dim=-2)
        # submodules set on a plain Module, which torch types as Tensor | Module
        fc1, fc2 = cast(nn.Module, self.mlp.fc1), cast(nn.Module, self.mlp.fc2)
        norm = cast(nn.Module, self.mlp.norm)
        x = x + fc2(F.gelu(fc1(norm(x))))
        return self.head(self.norm(x))


def param_count(width: int = 32, mlp_ratio: int = 4) -> int:
    """Number of parameters of ``ToyClassifier(width, mlp_ratio)``, computed without building it."""
    hidden = mlp_ratio * width
    embeddings = (VOCAB_SIZE + SEQ_LEN) * width
    norms = 2 * 2 * width
    mlp = (width * hidden + hidden) + (hidden * width + width)
    head = width * NUM_CLASSES + NUM_CLASSES
    return embeddings + norms + mlp + head


# --------------------------------------------------------------------------------------------
# determinism helpers


def _derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from ``parts`` (unlike ``hash()``, independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(_derive_seed(*parts))


@contextlib.contextmanager
def _controlled(num_threads: int | None, seed: int | None = None) -> Iterator[None]:
    """Run with ``num_threads`` intra-op threads and, if ``seed`` is given, a forked global RNG.

    Both the thread count and the caller's global RNG state are restored on exit.
    """
    previous = torch.get_num_threads()
    if num_threads is not None and num_threads != previous:
        torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------
# data


def _uniform(n: int, low: int, high: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(low, high, (n, SEQ_LEN), generator=g)


def _inject(tokens: torch.Tensor, counts: torch.Tensor, pool: torch.Tensor,
            g: torch.Generator) -> None:
    """Overwrite ``counts[i]`` distinct random positions of row ``i`` with tokens drawn from
    ``pool``."""
    n = tokens.shape[0]
    order = torch.rand(n, SEQ_LEN, generator=g).argsort(dim=1)  # a random permutation per row
    rank = order.argsort(dim=1)
    mask = rank < counts.view(-1, 1)
    picks = pool[torch.randint(0, len(pool), (n, SEQ_LEN), generator=g)]
    tokens[mask] = picks[mask]


def _scrub(tokens: torch.Tensor, banned: torch.Tensor, g: torch.Generator) -> None:
    """Replace every token in ``banned`` with a filler token (39–63)."""
    hit = torch.isin(tokens, banned)
    tokens[hit] = torch.randint(39, VOCAB_SIZE, (int(hit.sum()),), generator=g)


def _count(tokens: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    return torch.isin(tokens, group).sum(dim=1)


def _label(task: str, tokens: torch.Tensor) -> torch.Tensor:
    """The label of each row of ``tokens`` for ``task``: a pure function of the tokens."""
    if task == "sentiment":
        return (_count(tokens, _POSITIVE) > _count(tokens, _NEGATIVE)).long()
    if task == "topic":
        counts = torch.stack([_count(tokens, group) for group in _TOPICS], dim=1)
        return counts.argmax(dim=1)  # first maximum on ties
    if task == "toxicity":
        return (_count(tokens, _TOXIC) > 0).long()
    if task == "length":
        return ((tokens != PAD).sum(dim=1) > SEQ_LEN // 2).long()
    if task == "parity":
        return _count(tokens, _MARKER) % 2
    if task == "pretext":
        counts = torch.stack([((tokens % NUM_CLASSES) == r).sum(dim=1)
                              for r in range(NUM_CLASSES)], dim=1)
        return counts.argmax(dim=1)
    raise ValueError(f"unknown toy task {task!r}; expected one of {TASKS}")


def _sample_inputs(task: str, n: int, g: torch.Generator) -> torch.Tensor:
    """Token sequences for ``task``: uniform background (no PAD) with task signal injected."""
    tokens = _uniform(n, 1, VOCAB_SIZE, g)
    if task == "sentiment":
        positive = torch.rand(n, generator=g) < 0.5
        counts = torch.randint(1, 6, (n,), generator=g)
        pos, neg = tokens.clone(), tokens.clone()
        _inject(pos, counts, _POSITIVE, g)
        _inject(neg, counts, _NEGATIVE, g)
        tokens = torch.where(positive.view(-1, 1), pos, neg)
    elif task == "topic":
        topic = torch.randint(0, len(_TOPICS), (n,), generator=g)
        counts = torch.randint(2, 7, (n,), generator=g)
        for t, group in enumerate(_TOPICS):
            rows = topic == t
            sub = tokens[rows]
            _inject(sub, counts[rows], group, g)
            tokens[rows] = sub
    elif task == "toxicity":
        _scrub(tokens, _TOXIC, g)
        toxic = torch.rand(n, generator=g) < 0.5
        counts = torch.randint(1, 3, (n,), generator=g) * toxic
        _inject(tokens, counts, _TOXIC, g)
    elif task == "length":
        lengths = torch.randint(1, SEQ_LEN + 1, (n, 1), generator=g)
        tokens[torch.arange(SEQ_LEN).view(1, -1) >= lengths] = PAD
    elif task == "parity":
        _scrub(tokens, _MARKER, g)
        _inject(tokens, torch.randint(0, 4, (n,), generator=g), _MARKER, g)
    elif task == "pretext":
        mix = torch.randint(0, len(TASKS), (n,), generator=g)
        for i, name in enumerate(TASKS):
            rows = mix == i
            tokens[rows] = _sample_inputs(name, int(rows.sum()), g)
    else:
        raise ValueError(f"unknown toy task {task!r}; expected one of {TASKS}")
    return tokens


def make_dataset(task: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` examples of ``task``: ``(tokens, labels)``, int64 tensors of shapes
    ``(n, SEQ_LEN)`` and ``(n,)``.

    Deterministic in ``(task, n, seed)``; the labels are a function of the tokens alone.
    """
    if task not in TASKS:
        raise ValueError(f"unknown toy task {task!r}; expected one of {TASKS}")
    return _dataset(task, n, _generator("data", task, seed))


def _dataset(task: str, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = _sample_inputs(task, n, g)
    return tokens, _label(task, tokens)


# --------------------------------------------------------------------------------------------
# training


_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


@torch.no_grad()
def _adam_step(
    params: list[torch.Tensor],
    grads: Sequence[torch.Tensor],
    state: list[tuple[torch.Tensor, torch.Tensor]],
    step: int,
    lr: float,
) -> None:
    """One Adam update (Kingma & Ba; the rule of ``torch.optim.Adam`` with its defaults).

    Written out because constructing a ``torch.optim`` optimizer imports ``torch._dynamo``,
    which costs about a second per process — more than the whole toy zoo.
    """
    bias1 = 1 - _BETA1**step
    bias2 = 1 - _BETA2**step
    for p, grad, (m, v) in zip(params, grads, state, strict=True):
        m.lerp_(grad, 1 - _BETA1)
        v.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
        denom = (v.sqrt() / bias2**0.5).add_(_EPS)
        p.addcdiv_(m, denom, value=-lr / bias1)


def _train(
    model: ToyClassifier, task: str, steps: int, lr: float, batch_size: int, g: torch.Generator
) -> ToyClassifier:
    tokens, labels = _dataset(task, steps * batch_size, g)
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    model.train()
    for step in range(1, steps + 1):
        batch = slice((step - 1) * batch_size, step * batch_size)
        loss = F.cross_entropy(model(tokens[batch]), labels[batch])
        grads = torch.autograd.grad(loss, params)
        _adam_step(params, grads, state, step, lr)
    model.eval()
    model.requires_grad_(False)
    return model


def pretrain(
    seed: int = 0,
    steps: int = _PRETRAIN_STEPS,
    width: int = 32,
    *,
    lr: float = _PRETRAIN_LR,
    batch_size: int = _BATCH,
    mlp_ratio: int = 4,
    num_threads: int | None = 1,
) -> ToyClassifier:
    """A base model: seeded initialisation, then ``steps`` Adam steps on the generic pretext task.

    The pretext task (which residue class of token ids mod 4 dominates a sequence) is trained on
    a mixture of all tasks' inputs, so the base knows the token statistics but none of the tasks.
    ``steps=0`` gives the randomly initialised model. The result is in eval mode with
    ``requires_grad=False``. ``num_threads`` (default 1, ``None`` = leave as is) is set for
    the call only; one thread keeps results bit-identical across machines' thread settings.
    """
    with _controlled(num_threads, seed=_derive_seed("init", seed, width, mlp_ratio)):
        model = ToyClassifier(width, mlp_ratio)
        return _train(model, "pretext", steps, lr, batch_size, _generator("pretrain", seed))


def finetune(
    base_model: ToyClassifier,
    task: str,
    steps: int = 20,
    lr: float = 1e-2,
    seed: int = 0,
    *,
    batch_size: int = _BATCH,
    num_threads: int | None = 1,
) -> ToyClassifier:
    """A copy of ``base_model`` fine-tuned on ``task`` with ``steps`` Adam steps (``base_model``
    is untouched).

    Every parameter is trained (full fine-tuning); buffers are copied unchanged. Each step sees
    a fresh batch of ``batch_size`` examples drawn deterministically from ``(task, seed)``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown toy task {task!r}; expected one of {TASKS}")
    model = copy.deepcopy(base_model)
    model.requires_grad_(True)
    with _controlled(num_threads):
        return _train(model, task, steps, lr, batch_size, _generator("finetune", task, seed))


@torch.no_grad()
def accuracy(
    model: nn.Module, task: str, n: int = 2000, seed: int = 1234, *, num_threads: int | None = 1
) -> float:
    """Fraction of ``n`` held-out examples of ``task`` (from ``seed``) that ``model`` classifies
    correctly."""
    tokens, labels = make_dataset(task, n, seed=_derive_seed("eval", seed))
    was_training = model.training
    model.eval()
    try:
        with _controlled(num_threads):
            predictions = model(tokens).argmax(dim=-1)
    finally:
        model.train(was_training)
    return (predictions == labels).float().mean().item()


# --------------------------------------------------------------------------------------------
# checkpoints


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its ``__metadata__`` keys in sorted order."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def save_safetensors(
    model: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> pathlib.Path:
    """Write ``model``'s state dict (or a ``{name: tensor}`` mapping) to ``path`` in the
    safetensors format.

    With ``dtype`` (e.g. ``torch.bfloat16``) floating tensors are cast to it; other tensors
    (the ``int64`` ``position_ids``) are written unchanged. Tensors are detached, moved to the
    CPU and made contiguous. ``metadata`` goes to the header's ``__metadata__`` (in sorted key
    order, so that equal inputs give identical files). The file is written to a temporary name
    and renamed into place; it gets the usual mode for new files (``save_file`` would make it
    0600). Returns ``path`` as a :class:`pathlib.Path`.
    """
    from safetensors.torch import save

    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        # own storage: safetensors rejects shared tensors
        tensors[name] = tensor.contiguous().clone()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        data = save(tensors, metadata=dict(metadata) if metadata is not None else None)
        if metadata is not None and len(metadata) > 1:
            # safetensors writes ``__metadata__`` in hash-map order, which varies between runs
            data = _sorted_metadata(data)
        # written here rather than by save_file, which creates files with mode 0600
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


# --------------------------------------------------------------------------------------------
# one-call zoo


@dataclass
class ToyZoo:
    """Checkpoints written by :func:`make_toy_zoo`."""

    dir: pathlib.Path
    base: pathlib.Path
    """``<dir>/base.safetensors``"""
    finetuned: dict[str, pathlib.Path] = field(default_factory=dict)
    """task → ``<dir>/ft_<task>.safetensors``"""
    meta: dict[str, dict] = field(default_factory=dict)
    """task → ``{"task": task, "dataset": "toy-<task>", "lr": lr, "steps": steps}``"""

    @property
    def tasks(self) -> tuple[str, ...]:
        """The fine-tuned tasks, in order."""
        return tuple(self.finetuned)


def make_toy_zoo(
    dir: str | os.PathLike[str],
    tasks: Sequence[str] = ("sentiment", "topic", "toxicity"),
    steps: int = 20,
    lr: float = 1e-2,
    width: int = 32,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> ToyZoo:
    """Pre-train a base and fine-tune it on each of ``tasks``; write them as safetensors under
    ``dir``.

    Files: ``base.safetensors`` and ``ft_<task>.safetensors`` per task (floating tensors cast to
    ``dtype`` if given). The same arguments give bit-identical files. The default call takes
    well under a second on CPU.
    """
    tasks = tuple(tasks)
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown toy task {task!r}; expected one of {TASKS}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"duplicate tasks in {tasks}")
    root = pathlib.Path(dir)
    root.mkdir(parents=True, exist_ok=True)
    base_model = pretrain(seed=seed, width=width)
    zoo = ToyZoo(dir=root,
                 base=save_safetensors(base_model, root / "base.safetensors", dtype=dtype))
    for task in tasks:
        model = finetune(base_model, task, steps=steps, lr=lr, seed=seed)
        zoo.finetuned[task] = save_safetensors(model, root / f"ft_{task}.safetensors", dtype=dtype)
        zoo.meta[task] = {"task": task, "dataset": f"toy-{task}", "lr": lr, "steps": steps}
    return zoo
