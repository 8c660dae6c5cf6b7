"""PEFT LoRA adapters out (issue 16, item 3): a task vector as ``adapter_config.json`` +
``adapter_model.safetensors``, the folder PEFT's ``save_pretrained`` writes.

Each carried module ``M`` (a 2-D floating ``M.weight`` that is not an embedding) gets
``base_model.model.M.lora_A.weight`` (r × in) and ``lora_B.weight`` (out × r), float32, with
``B @ A`` ≈ ΔW. Dense deltas are factored by a truncated SVD computed in float64
(``B = U·√S``, ``A = √S·Vᵀ``, then rounded to float32). Deltas stored as factors (the
``lowrank`` codec of a LoRA import, or a task-arithmetic sum of them) are concatenated,
coefficients folded into ``B``, and truncated, when asked, by the SVD of the product through
QR of the factors. Every module's ``lora_alpha`` is set so that PEFT's scale ``alpha / r``
gives exactly the product written (``alpha = r`` after an SVD or a fold, ``alpha = scale·r``
for one LoRA import written back as stored); rsLoRA is never set.

Not carried (reported with their share of the vector's squared norm): 1-D and other non-2-D
tensors (biases, LayerNorm), embeddings (names with ``embed``, ``wte``, ``wpe``: PEFT adapts
them with ``lora_embedding_A/B`` and another layout, not written here), tensors not named
``*.weight``, and what ``include`` leaves out. GPT-2's ``Conv1D`` stores its weight as
(in, out): tvreg cannot tell it from a Linear by name and shape, so such a vector's adapter
would need ``fan_in_fan_out``; not handled (documented in docs/interop.md).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvreg.errors import InvalidInput

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "AdapterModule", "Factors", "PeftPlan",
           "adapter_config", "check_peft_output", "check_rank_options", "factor_dense",
           "factor_product", "is_carried", "write_adapter"]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
_EMBEDDING = re.compile(r"(^|\.)(\w*embed\w*|wte|wpe)(\.|$)", re.I)


def is_carried(name: str, shape: tuple[int, ...], dtype: str) -> str | None:
    """None if the tensor can be a LoRA module's delta; else why not."""
    if len(shape) != 2:
        return "not 2-D"
    if not name.endswith(".weight"):
        return "not a .weight"
    if not dtype.startswith(("float", "bfloat")):
        return "not floating"
    if _EMBEDDING.search(name[:-len(".weight")]):
        return "embedding"
    if min(shape) == 0:
        return "empty"
    return None


def check_rank_options(rank: int | None, energy: float | None) -> None:
    """Exactly one of ``rank`` (a positive integer) and ``energy`` (in (0, 1])."""
    if (rank is None) == (energy is None):
        raise InvalidInput("give --rank R or --energy E (one of them)")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise InvalidInput(f"invalid rank {rank!r}: a positive integer")
    if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float))
                               or not math.isfinite(energy) or not 0 < energy <= 1):
        raise InvalidInput(f"invalid energy {energy!r}: a number in (0, 1]")


def _pick_rank(s: np.ndarray, rank: int | None, energy: float | None) -> int:
    """The rank kept of singular values ``s`` (descending): ``rank`` capped at ``len(s)``, or
    the smallest keeping fraction ``energy`` of Σs² (at least 1)."""
    if rank is not None:
        return min(rank, len(s))
    assert energy is not None  # check_rank_options: one of them
    sq = s.astype(np.float64) ** 2
    total = float(sq.sum())
    if total == 0.0:
        return 1
    kept = np.cumsum(sq) / total
    return int(min(len(s), np.searchsorted(kept, energy * (1 - 1e-12)) + 1))


@dataclass
class Factors:
    """``B @ A`` with B (out × r) and A (r × in) float32, and the PEFT alpha that makes
    ``alpha / r`` the scale of the product (``exact``: the product is the delta, bit for bit
    as tvreg decodes it, up to float32 matmul rounding)."""

    a: np.ndarray
    b: np.ndarray
    alpha: float
    exact: bool

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


def _split(u: np.ndarray, s: np.ndarray, vt: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    root = np.sqrt(s[:r])
    return ((vt[:r] * root[:, None]).astype(np.float32),
            (u[:, :r] * root[None, :]).astype(np.float32))


def factor_dense(delta: np.ndarray, rank: int | None, energy: float | None) -> Factors:
    """Truncated SVD of a dense 2-D delta, computed in float64."""
    d = np.asarray(delta, dtype=np.float64)
    u, s, vt = np.linalg.svd(d, full_matrices=False)
    r = _pick_rank(s, rank, energy)
    a, b = _split(u, s, vt, r)
    return Factors(a, b, float(r), exact=False)


def factor_product(parts: list[tuple[np.ndarray, np.ndarray, float, bool]],
                   rank: int | None, energy: float | None) -> Factors:
    """The delta Σ scale_i · B_i A_i (each transposed if its flag is set) as factors.

    One part of scale s kept whole: its A and B as they are, alpha = s·r. Several parts (or
    one transposed): concatenated, scales folded into B, alpha = r. Truncated (``rank`` below
    the total rank, or ``energy``): QR of the concatenated factors, SVD of the small core, in
    float64."""
    bs, as_ = [], []
    for a, b, scale, transpose in parts:
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if transpose:  # the delta is (B A)^T = A^T B^T
            a64, b64 = b64.T, a64.T
        bs.append(b64 * float(scale))
        as_.append(a64)
    total = sum(x.shape[0] for x in as_)
    out_dim, in_dim = bs[0].shape[0], as_[0].shape[1]
    whole = energy is None and rank is not None and rank >= total and total <= min(out_dim, in_dim)
    if whole:
        if len(parts) == 1 and not parts[0][3]:
            a, b, scale, _ = parts[0]
            return Factors(np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32),
                           float(scale) * a.shape[0], exact=True)
        return Factors(np.concatenate(as_).astype(np.float32),
                       np.concatenate(bs, axis=1).astype(np.float32), float(total), exact=True)
    bcat, acat = np.concatenate(bs, axis=1), np.concatenate(as_)
    qb, rb = np.linalg.qr(bcat)
    qa, ra = np.linalg.qr(acat.T)
    u, s, vt = np.linalg.svd(rb @ ra.T)
    r = _pick_rank(s, rank, energy)
    a, b = _split(qb @ u, s, vt @ qa.T, r)
    return Factors(a, b, float(r), exact=False)


@dataclass
class AdapterModule:
    """One module of the adapter: its factors and what they miss."""

    module: str
    shape: tuple[int, int]
    factors: Factors
    norm_sq: float
    error_sq: float

    def report(self) -> dict[str, Any]:
        return {"module": self.module, "shape": list(self.shape), "rank": self.factors.rank,
                "alpha": self.factors.alpha, "exact_factors": self.factors.exact,
                "rel_error": (math.sqrt(self.error_sq / self.norm_sq) if self.norm_sq else 0.0)}


@dataclass
class PeftPlan:
    """The modules of an adapter and the tensors it does not carry (name -> (why, ‖τ‖²))."""

    modules: list[AdapterModule] = field(default_factory=list)
    not_carried: dict[str, tuple[str, float]] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        total = sum(m.norm_sq for m in self.modules) + sum(v for _, v in self.not_carried.values())
        err = sum(m.error_sq for m in self.modules)
        carried = sum(m.norm_sq for m in self.modules)
        left = total - carried
        return {"modules": [m.report() for m in self.modules],
                "ranks": sorted({m.factors.rank for m in self.modules}),
                "total_rank": sum(m.factors.rank for m in self.modules),
                "rel_error_modules": math.sqrt(err / carried) if carried else 0.0,
                "rel_error": math.sqrt((err + left) / total) if total else 0.0,
                "not_carried_share": left / total if total else 0.0,
                "not_carried": [{"name": n, "why": why, "share": (v / total if total else 0.0)}
                                for n, (why, v) in sorted(self.not_carried.items())]}


def error_sq(delta: np.ndarray, f: Factors) -> float:
    """‖ΔW − (alpha/r)·B·A‖² in float64 from the float32 factors as written."""
    scale = f.alpha / f.rank
    diff = np.asarray(delta, np.float64) - scale * (f.b.astype(np.float64) @ f.a.astype(np.float64))
    return float(np.sum(diff * diff))


def adapter_config(modules: list[AdapterModule], base_name: str | None) -> dict[str, Any]:
    """The ``adapter_config.json`` of a LoRA adapter with these modules: ``r``/``lora_alpha``
    the most common pair, ``rank_pattern``/``alpha_pattern`` for the others."""
    from collections import Counter

    pairs = Counter((m.factors.rank, m.factors.alpha) for m in modules)
    (r0, a0), _ = max(pairs.items(), key=lambda kv: (kv[1], -kv[0][0]))
    rank_pattern = {m.module: m.factors.rank for m in modules if m.factors.rank != r0}
    alpha_pattern = {m.module: m.factors.alpha for m in modules
                     if (m.factors.rank, m.factors.alpha) != (r0, a0)}
    alpha_pattern.update({m.module: m.factors.alpha for m in modules if m.module in rank_pattern})
    return {"alpha_pattern": alpha_pattern, "auto_mapping": None,
            "base_model_name_or_path": base_name, "bias": "none", "fan_in_fan_out": False,
            "inference_mode": True, "init_lora_weights": True, "lora_alpha": a0,
            "lora_dropout": 0.0, "modules_to_save": None, "peft_type": "LORA", "r": r0,
            "rank_pattern": rank_pattern, "target_modules": sorted(m.module for m in modules),
            "task_type": None, "use_dora": False, "use_rslora": False}


def check_peft_output(out_dir: str, *, force: bool = False) -> None:
    """The output must be new, an empty folder, or (``force``) a folder to replace."""
    from tvreg.tensors.hf_folder import check_output_dir

    check_output_dir(out_dir, force=force)


def write_adapter(out_dir: str | os.PathLike[str], modules: list[AdapterModule],
                  base_name: str | None, metadata: dict[str, str] | None = None, *,
                  force: bool = False, files: dict[str, str] | None = None) -> None:
    """Write the adapter folder (and ``files``: name -> text, e.g. the model card) into a
    temporary folder, then rename it into place."""
    import torch
    from safetensors.torch import save_file

    out = os.path.abspath(os.fspath(out_dir))
    check_peft_output(out, force=force)
    tensors = {}
    for m in modules:
        tensors[f"{PREFIX}{m.module}.lora_A.weight"] = torch.from_numpy(m.factors.a.copy())
        tensors[f"{PREFIX}{m.module}.lora_B.weight"] = torch.from_numpy(m.factors.b.copy())
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp",
                           dir=os.path.dirname(out))
    try:
        save_file(tensors, os.path.join(tmp, WEIGHTS_FILE), {"format": "pt", **(metadata or {})})
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(json.dumps(adapter_config(modules, base_name), indent=2, sort_keys=True)
                    + "\n")
        for name, text in (files or {}).items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write(text)
        if os.path.isdir(out):
            if os.listdir(out):
                old = out + f".old-{os.getpid()}"
                os.rename(out, old)
                os.rename(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
                return
            os.rmdir(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
