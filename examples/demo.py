"""The main job, end to end, on the embedded default (a local folder + a DuckDB file).

1. pre-trains a small real model and fine-tunes it on three tasks (real gradient steps, CPU);
2. stores each task vector with the `tvreg` CLI, with metadata, and a second version of one;
3. lists, tags, shows, logs and queries them with SQL;
4. exports a vector, checks it equals fine-tuned − base bit for bit, and shows that
   base + exported vector has the fine-tuned model's accuracy;
5. shows how the vectors relate: cosines and sign conflicts computed when they were stored;
6. composes two vectors into a saved multi-task vector (with its recipe) and applies it;
7. shares them: pushes to a directory remote, lists and queries it without pulling, reads it
   by URL, and pulls part of it into a teammate's registry (every object checked on the way);
8. verifies every stored byte.

Run with `make demo` (or `python examples/demo.py [--workdir DIR]`). Every command it runs is
printed before its output, so it doubles as a tour of the CLI.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tvreg.testing import accuracy, finetune, pretrain, save_safetensors

TASKS = {"sentiment": 1e-2, "topic": 1e-2, "toxicity": 5e-3}
STEPS = 40


def run(*args: str, env: dict[str, str]) -> str:
    """Run `tvreg ARGS`, echo the command and its output, fail loudly on a non-zero exit."""
    print(f"\n$ tvreg {' '.join(shlex.quote(a) for a in args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "tvreg.cli", *args], env=env, text=True,
                          capture_output=True)
    out = (proc.stdout + proc.stderr).rstrip()
    if out:
        print(out, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"demo failed: `tvreg {' '.join(args)}` exited {proc.returncode}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".demo", help="folder for checkpoints and registry")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    ckpts, registry = work / "checkpoints", work / "registry"
    ckpts.mkdir(parents=True)
    env = {**os.environ, "TVREG_HOME": str(registry)}
    t0 = time.perf_counter()

    print(f"== 1. fine-tune a small model on {len(TASKS)} tasks (checkpoints in {ckpts})")
    base = pretrain(width=64, steps=60)
    save_safetensors(base, ckpts / "base.safetensors")
    models = {}
    for task, lr in TASKS.items():
        models[task] = finetune(base, task, steps=STEPS, lr=lr)
        save_safetensors(models[task], ckpts / f"ft_{task}.safetensors")
        print(f"   {task:<10} accuracy: base {accuracy(base, task):.3f} -> fine-tuned "
              f"{accuracy(models[task], task):.3f}")
    longer = finetune(base, "sentiment", steps=2 * STEPS, lr=1e-2)
    save_safetensors(longer, ckpts / "ft_sentiment_long.safetensors")

    print(f"\n== 2. store the task vectors in {registry}")
    for task, lr in TASKS.items():
        run("create", task, "--base", str(ckpts / "base.safetensors"),
            "--finetuned", str(ckpts / f"ft_{task}.safetensors"), "--task", task,
            "--dataset", f"toy-{task}", "--lr", str(lr), "--steps", str(STEPS),
            "--meta", "model=toy-classifier-w64", "--meta", "seed=0", env=env)
    run("create", "sentiment", "--base", str(ckpts / "base.safetensors"),
        "--finetuned", str(ckpts / "ft_sentiment_long.safetensors"), "--task", "sentiment",
        "--dataset", "toy-sentiment", "--lr", "0.01", "--steps", str(2 * STEPS), env=env)
    run("create", "sentiment", "--base", str(ckpts / "base.safetensors"),
        "--finetuned", str(ckpts / "ft_sentiment_long.safetensors"), "--task", "sentiment",
        "--dataset", "toy-sentiment", "--lr", "0.01", "--steps", str(2 * STEPS), env=env)

    print("\n== 3. list, tag, inspect, query")
    run("ls", env=env)
    run("tag", "sentiment@1", "prod", env=env)
    run("log", "sentiment", env=env)
    run("show", "sentiment@prod", env=env)
    run("sql", "SELECT name, version, task, lr, steps, n_params, stored_bytes, "
        "round(raw_bytes / stored_bytes, 2) AS ratio FROM versions ORDER BY name, version",
        env=env)
    run("sql", "SELECT t.name AS tensor, t.shape, t.stored_bytes FROM tensors t "
        "JOIN versions v USING (vector_id) WHERE v.name = 'topic' ORDER BY t.stored_bytes DESC "
        "LIMIT 3", env=env)

    print("\n== 4. export and check: the vector comes back bit for bit, and carries the skill")
    out = work / "sentiment_prod.safetensors"
    run("export", "sentiment@prod", "-o", str(out), env=env)
    tau = load_file(out)
    b = load_file(ckpts / "base.safetensors")
    f = load_file(ckpts / "ft_sentiment.safetensors")
    exact = all(torch.equal(tau[n], f[n].float() - b[n].float()) for n in tau)
    print(f"   exported == fine-tuned − base (fp32), every tensor bit for bit: {exact}")
    edited = pretrain(width=64, steps=0)
    edited.load_state_dict({n: (b[n] + tau[n]) if n in tau else b[n] for n in b})
    print(f"   sentiment accuracy of base + τ: {accuracy(edited, 'sentiment'):.3f} "
          f"(fine-tuned: {accuracy(models['sentiment'], 'sentiment'):.3f})")
    if not exact:
        raise SystemExit("demo failed: exported vector differs")

    print("\n== 5. how the vectors relate: cosines and sign conflicts, computed on insert")
    run("similar", "sentiment@prod", env=env)
    run("similar", "--matrix", env=env)
    run("sql", "SELECT name, other_name, round(cosine, 4) AS cosine, "
        "round(sign_conflict_rate, 3) AS sign_conflicts FROM similar_versions "
        "WHERE name < other_name AND version = 1 AND other_version = 1 ORDER BY cosine DESC",
        env=env)

    print("\n== 6. compose: one model good at two tasks (task arithmetic), with lineage")
    run("compose", "sentiment@prod + topic", "--save", "multi", "--task", "sentiment+topic",
        env=env)
    run("sql", "SELECT name, version, recipe->>'expression' AS expression, "
        "json_array_length(parents) AS parents FROM versions WHERE recipe IS NOT NULL", env=env)
    merged_path = work / "multi_model.safetensors"
    run("apply", "0.8*multi", "--base", str(ckpts / "base.safetensors"), "-o", str(merged_path),
        env=env)
    merged = pretrain(width=64, steps=0)
    merged.load_state_dict(load_file(merged_path))
    for task in ("sentiment", "topic"):
        print(f"   {task:<10} accuracy: base {accuracy(base, task):.3f}, fine-tuned "
              f"{accuracy(models[task], task):.3f}, base + 0.8·(τ_sentiment + τ_topic) "
              f"{accuracy(merged, task):.3f}")

    print("\n== 7. share: push to a directory remote, read it without pulling, pull into another registry")
    shared, teammate = work / "shared-remote", work / "teammate-registry"
    run("remote", "add", "origin", str(shared), env=env)
    run("push", env=env)
    run("push", env=env)  # nothing left to send
    mate = {**env, "TVREG_HOME": str(teammate), "TVREG_CACHE": str(work / "cache")}
    run("remote", "add", "origin", str(shared), env=mate)
    run("ls", "--remote", "origin", env=mate)
    run("sql", "--remote", "origin", "SELECT name, version, task, lr FROM versions "
        "WHERE lr <= 5e-3", env=mate)
    run("--registry", f"file://{shared}", "show", "multi", env=mate)
    run("pull", "origin", "sentiment@prod", "multi", env=mate)
    run("ls", env=mate)

    print("\n== 8. verify every stored byte")
    run("verify", env=env)
    run("verify", env=mate)
    print(f"\ndone in {time.perf_counter() - t0:.1f}s; registry at {registry} "
          f"(try: TVREG_HOME={registry} tvreg ls)")


if __name__ == "__main__":
    main()
