"""LoRA import: a PEFT LoRA adapter as a task vector, ΔW = scale · B · A per adapted module.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` (PEFT's
``save_pretrained``). For each module with ``lora_A``/``lora_B`` weights, the delta of the base
tensor ``MODULE.weight`` is ``scale · (B @ A)`` (transposed when ``fan_in_fan_out``), with
``scale = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA) and ``r``/``alpha`` taken from
``rank_pattern``/``alpha_pattern`` as PEFT matches them (a pattern key ``K`` matches a module name
that ends in ``K`` after a dot, as a regex). Other tensors of the base get a zero delta. What
PEFT adapters can hold beyond that (DoRA magnitudes, embedding or convolution LoRA, trained
biases, ``modules_to_save`` copies, other PEFT methods) is refused, naming it: the imported
vector would otherwise differ from the merged model. The adapted tensors are stored as their
factors (the ``lowrank`` codec, which decodes them the same on every machine: float64 sums in a
fixed order, rounded once).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tvreg.digest import parse_json
from tvreg.errors import CheckpointError, IncompatibleCheckpoints
from tvreg.util.listings import listing

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tvreg.codecs import LowRank
    from tvreg.tensors.checkpoints import TensorInfo

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<which>[AB])\.weight")


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter read from its folder: config, factor tensors and the scale of each
    adapted layer."""

    path: str
    config: dict[str, Any]
    #: module name -> (A, B) float tensors as stored
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora", False))

    @property
    def fan_in_fan_out(self) -> bool:
        return bool(self.config.get("fan_in_fan_out", False))

    def _pattern(self, table: str, module: str, default: Any) -> Any:
        pattern = self.config.get(table) or {}
        for key in pattern:
            if re.match(rf"(.*\.)?({key})$", module):
                return pattern[key]
        return default

    def rank(self, module: str) -> int:
        return int(self._pattern("rank_pattern", module, self.config.get("r", 8)))

    def alpha(self, module: str) -> float:
        return float(self._pattern("alpha_pattern", module, self.config.get("lora_alpha", 8)))

    def scale(self, module: str) -> float:
        r = self.rank(module)
        return self.alpha(module) / (math.sqrt(r) if self.use_rslora else r)

    def summary(self) -> dict[str, Any]:
        """What the version record's metadata says about the adapter."""
        ranks = sorted({self.rank(m) for m in self.modules})
        return {"lora.r": ",".join(map(str, ranks)),
                "lora.alpha": float(self.config.get("lora_alpha", 8)),
                "lora.rslora": self.use_rslora, "lora.modules": len(self.modules)}


def _fail(path: str, message: str) -> CheckpointError:
    return CheckpointError(f"{path}: {message}")


def read_adapter(path: str | os.PathLike) -> LoraAdapter:
    """Read and check a PEFT LoRA adapter directory (no pickle: safetensors only)."""
    from safetensors import safe_open

    path = os.fspath(path)
    config_path, weights_path = os.path.join(path, CONFIG_FILE), os.path.join(path, WEIGHTS_FILE)
    if not os.path.isdir(path):
        raise _fail(path, "not an adapter directory")
    if not os.path.isfile(config_path):
        raise _fail(path, f"no {CONFIG_FILE}")
    if not os.path.isfile(weights_path):
        bin_path = os.path.join(path, "adapter_model.bin")
        raise _fail(path, f"no {WEIGHTS_FILE}" + (" (adapter_model.bin is a pickle, which tvreg "
                                                  "never loads: save with safe_serialization)"
                                                  if os.path.exists(bin_path) else ""))
    try:
        with open(config_path, "rb") as f:
            config = parse_json(f.read())
    except (OSError, ValueError) as e:
        raise _fail(path, f"{CONFIG_FILE} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise _fail(path, f"{CONFIG_FILE} is not a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise _fail(path, f"a {config.get('peft_type')} adapter; only LoRA adapters can be "
                          "imported")
    if config.get("use_dora"):
        raise _fail(path, "a DoRA adapter (use_dora): its merged weights are not base + B·A; "
                          "not supported")
    for key in ("r", "lora_alpha"):
        value = config.get(key, 8)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise _fail(path, f"{CONFIG_FILE}: {key} must be a positive number")
    adapter = LoraAdapter(path, config)
    pairs: dict[str, dict[str, Any]] = {}
    unsupported: list[str] = []
    try:
        with safe_open(weights_path, "pt") as f:
            for key in f.keys():
                name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
                m = _KEY.fullmatch(name)
                if m:
                    pairs.setdefault(m.group("module"), {})[m.group("which")] = f.get_tensor(key)
                else:
                    unsupported.append(name)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on a bad file
        raise _fail(path, f"{WEIGHTS_FILE} is not a readable safetensors file "
                          f"({' '.join(str(e).split())[:200]})") from None
    if unsupported:
        raise _fail(path, f"{len(unsupported)} adapter tensor(s) tvreg cannot import "
                          f"(embedding/convolution LoRA, trained biases, modules_to_save, "
                          f"DoRA…): {listing(sorted(unsupported))}")
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise _fail(path, f"module {module} has lora_{'A' if 'A' in ab else 'B'} only")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] \
                or not a.is_floating_point() or not b.is_floating_point():
            raise _fail(path, f"module {module}: lora_A {list(a.shape)} and lora_B "
                              f"{list(b.shape)} are not a rank-r pair of matrices "
                              "(only linear layers are supported)")
        if a.shape[0] != adapter.rank(module):
            raise _fail(path, f"module {module}: lora_A has rank {a.shape[0]}, the config says "
                              f"{adapter.rank(module)}")
        adapter.modules[module] = (a, b)
    if not adapter.modules:
        raise _fail(path, "the adapter has no LoRA weights")
    return adapter


def check_against_base(adapter: LoraAdapter, infos: list[TensorInfo]) -> dict[str, str]:
    """``{base tensor name: module}`` if every adapted module has a floating ``MODULE.weight``
    of the matching shape in the base; else say which modules do not fit (another base)."""
    by_name = {i.name: i for i in infos}
    targets: dict[str, str] = {}
    missing, differ = [], []
    for module, (a, b) in sorted(adapter.modules.items()):
        name = f"{module}.weight"
        info = by_name.get(name)
        shape = (a.shape[1], b.shape[0]) if adapter.fan_in_fan_out else (b.shape[0], a.shape[1])
        if info is None:
            missing.append(name)
        elif tuple(info.shape) != tuple(shape) or not info.dtype.startswith(("float", "bfloat")):
            differ.append(f"{name} ({info.dtype}{list(info.shape)} vs LoRA {list(shape)})")
        else:
            targets[name] = module
    problems = []
    if missing:
        problems.append(f"{len(missing)} adapted tensor(s) not in the base: {listing(missing)}")
    if differ:
        problems.append(f"{len(differ)} tensor(s) of another shape: {listing(differ)}")
    if problems:
        raise IncompatibleCheckpoints(f"adapter {adapter.path} does not fit this base: "
                                      + "; ".join(problems))
    return targets


def lowrank_codec(adapter: LoraAdapter, module: str) -> LowRank:
    from tvreg.codecs import LowRank

    a, b = adapter.modules[module]
    return LowRank(b.shape[0], a.shape[1], a.shape[0], adapter.scale(module),
                   adapter.fan_in_fan_out)


def _factors(adapter: LoraAdapter, module: str):
    import torch

    a, b = adapter.modules[module]
    return a.to(torch.float32).numpy(), b.to(torch.float32).numpy()


def delta_weight(adapter: LoraAdapter, module: str, dtype: torch.dtype) -> torch.Tensor:
    """scale · B @ A (transposed for fan_in_fan_out), summed exactly as the ``lowrank`` codec
    decodes it (float64, in rank order), rounded once to ``dtype``."""
    import numpy as np
    import torch

    a, b = _factors(adapter, module)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    return torch.from_numpy(lowrank_codec(adapter, module).product(a, b, np_dtype)).to(dtype)


def delta_source(adapter: LoraAdapter, infos: list[TensorInfo], *,
                 allow_nonfinite: bool = False):
    """``delta_of(info, base_tensor)`` for :func:`tvreg.tensors.build.build_task_vector`: the
    factors of each adapted float32-delta tensor as they are (``lowrank`` codec), B·A computed for a
    float64 one, zeros elsewhere; checked against the base first."""
    import numpy as np
    import torch

    from tvreg import dtypes
    from tvreg.codecs import CodecPipeline, choose_pipeline
    from tvreg.errors import NonFiniteValues
    from tvreg.tensors.build import Factored

    targets = check_against_base(adapter, infos)
    if not allow_nonfinite:
        for module in sorted(set(targets.values())):
            a, b = _factors(adapter, module)
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                raise NonFiniteValues(f"LoRA factors of {module!r} have NaN/Inf values")
            bound = abs(adapter.scale(module)) * a.shape[0] * float(np.abs(a).max(initial=0)) \
                * float(np.abs(b).max(initial=0))
            if not bound < float(np.finfo(np.float32).max):
                raise NonFiniteValues(f"LoRA delta of {module!r} may overflow float32")

    def delta_of(info: TensorInfo, base_tensor: torch.Tensor):
        work = dtypes.torch_dtype(dtypes.delta_dtype(info.dtype))
        module = targets.get(info.name)
        if module is None:
            return torch.zeros(tuple(info.shape), dtype=work)
        if work != torch.float32:
            return delta_weight(adapter, module, work)
        codec = lowrank_codec(adapter, module)
        payload = codec.payload(*_factors(adapter, module))
        return Factored(CodecPipeline((codec,) + choose_pipeline(payload, 4).codecs), payload)

    return delta_of
