"""Which merge method for these vectors (``compare_methods``): several methods over the same
expression, each merged once, its λ chosen on validation over one grid, optionally scored on
test at that λ; a table of the results and the best method.

Invariants:

* Everything that can be wrong with the input is found before the first merge: the grid, the
  methods and their parameters (each composition is resolved, which checks the parameters, the
  operand count — slerp takes two vectors — and the vectors' compatibility, reading
  manifests only), the evaluation commands, and the base (read once, checked against the
  vectors). A bad input is :class:`InvalidInput` with nothing merged, run or written.
* The λ search is :func:`tvreg.compose.save.search_coefficients`' own: ``composition.search``
  over θ_base + λ·merged (``save.scaled``), the merged vector computed once per method.
* The same grid, base and evaluation for every method, in the order given; a method's
  ``seconds`` is the time to compute its merged vector, evaluation left out. The best method
  is the highest validation score (the first listed on a tie). Nothing is written to the
  registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tvreg.compose.composition import scale_grid, search
from tvreg.compose.eval_command import CommandEvaluator
from tvreg.compose.merge import METHODS
from tvreg.compose.resolve import resolve
from tvreg.compose.save import base_state, check_fits, scaled
from tvreg.compose.spectral import SPECTRAL_METHODS
from tvreg.errors import InvalidInput

if TYPE_CHECKING:  # pragma: no cover
    from tvreg.compose.composition import Composition
    from tvreg.repo.repo import Repo

#: compared when no methods are given: task arithmetic, the trimming family and the spectral
#: and mask-based methods, each with the parameters of :data:`DEFAULT_PARAMS`
DEFAULT_METHODS = ("task_arithmetic", "ties", "dare_ties", "breadcrumbs", "tsv", "iso_c",
                   "iso_cts", "consensus")
#: the parameters a method gets when it is named without them (a method named with some gets
#: these for the rest). TIES keeps the top 20 % by magnitude (the TIES paper's k = 20);
#: DARE keeps half of the entries at random (seed 0), mergekit's example density; breadcrumbs
#: keeps the same 20 % budget as TIES after dropping the top 1 % as outliers (mergekit's
#: gamma); DELLA keeps half, ± 0.15 by rank (mergekit's epsilon); slerp stops halfway. The
#: methods not listed need nothing (tsv, iso_c, consensus, …) or have defaults of their own
#: (iso_cts: common_fraction 0.8; consensus: k 2, tall_mask_lambda 0.6).
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "ties": {"density": 0.2},
    "magnitude_prune": {"density": 0.2},
    "dare_linear": {"density": 0.5},
    "dare_ties": {"density": 0.5},
    "breadcrumbs": {"density": 0.2, "gamma": 0.01},
    "breadcrumbs_ties": {"density": 0.2, "gamma": 0.01},
    "della": {"density": 0.5},
    "della_linear": {"density": 0.5},
    "slerp": {"t": 0.5},
}
#: the λ grid when none is given: wide enough for task arithmetic's small λ (about 1/T for T
#: tasks) and for the methods that average (TIES, the spectral ones: about 1)
DEFAULT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0)

Evaluate = Callable[[dict], Any]


@dataclass(frozen=True)
class MethodSpec:
    """One method to compare: its name and the parameters it is resolved with."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``ties (density=0.2)``: the name and the parameters set for it."""
        given = ", ".join(f"{k}={_show(v)}" for k, v in self.params.items() if v is not None)
        return f"{self.method} ({given})" if given else self.method


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" \
        if isinstance(value, float) else str(value)


def _value(text: str) -> Any:
    """A parameter's value as written: true/false, an integer, a number, else the word."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_method(text: str) -> tuple[str, dict[str, Any]]:
    """``"ties:density=0.3,trim=global"`` -> ``("ties", {"density": 0.3, "trim": "global"})``."""
    name, _, rest = text.partition(":")
    name = name.strip()
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))) if rest.strip() else ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise InvalidInput(f"method {text!r}: {item!r} is not KEY=VALUE "
                               "(e.g. ties:density=0.2,trim=global)")
        params[key.strip().replace("-", "_")] = _value(value)
    if rest and not params:
        raise InvalidInput(f"method {text!r}: nothing after ':' (e.g. ties:density=0.2)")
    return name, params


def method_specs(methods: Any = None, params: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> list[MethodSpec]:
    """The methods to compare: names (``"ties"``, or ``"ties:density=0.3"``) or
    ``(name, {params})`` pairs, each over its :data:`DEFAULT_PARAMS` and the ``params`` given
    for its name (``{"ties": {"density": 0.3}}``)."""
    if methods is None:
        methods = DEFAULT_METHODS
    if isinstance(methods, str) or not isinstance(methods, Sequence):
        raise InvalidInput("methods must be a list of method names or (name, {params}) pairs")
    if not methods:
        raise InvalidInput("no method to compare")
    overrides = dict(params or {})
    unknown = sorted(set(overrides) - set(METHODS))
    if unknown:
        raise InvalidInput(f"params for unknown method(s) {', '.join(unknown)}; known: "
                           f"{', '.join(METHODS)}")
    specs = []
    for item in methods:
        if isinstance(item, str):
            name, given = parse_method(item)
        elif isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], str) \
                and isinstance(item[1], Mapping):
            name, given = item[0], dict(item[1])
        else:
            raise InvalidInput(f"method {item!r}: a name or a (name, {{params}}) pair")
        if name not in METHODS:
            raise InvalidInput(f"unknown merge method {name!r}; known: {', '.join(METHODS)}")
        if not isinstance(overrides.get(name, {}), Mapping):
            raise InvalidInput(f"params[{name!r}] must be a mapping of parameters")
        specs.append(MethodSpec(name, {**DEFAULT_PARAMS.get(name, {}),
                                       **overrides.get(name, {}), **given}))
    return specs


def check_grid(grid: Any) -> list[float]:
    """The λ grid: :data:`DEFAULT_GRID` for None, else a non-empty list of finite numbers."""
    if grid is None:
        return list(DEFAULT_GRID)
    if isinstance(grid, str):
        raise InvalidInput(f"the λ grid must be a list of numbers, not the string {grid!r}")
    try:
        return scale_grid(grid)  # finite numbers, else InvalidInput
    except TypeError:  # not iterable
        raise InvalidInput(f"the λ grid must be a list of numbers, not {grid!r}") from None


def _evaluator(what: str, fn: Any, work_dir: Any, metadata: dict[str, str]
               ) -> tuple[Evaluate, CommandEvaluator | None]:
    """A callable as given, or a command (a string or a list of strings) run on a file."""
    if callable(fn):
        return fn, None
    if isinstance(fn, (str, Sequence)):
        cmd = CommandEvaluator(fn, what=what, work_dir=work_dir, metadata=metadata)
        return cmd, cmd
    raise InvalidInput(f"{what} must be a function of a state dict, or a command")


def compare_methods(repo: Repo, expression: str, evaluate: Any, *, methods: Any = None,
                    grid: Any = None, base: Any = None, test: Any = None,
                    params: Mapping[str, Mapping[str, Any]] | None = None,
                    include: str | None = None, exclude: str | None = None,
                    allow_base_mismatch: bool = False, device: Any = None,
                    work_dir: Any = None, on_row: Callable[[dict], None] | None = None
                    ) -> dict[str, Any]:
    """Each method's merged vector, λ chosen by ``evaluate`` over ``grid``, scored by ``test``
    at that λ; see :meth:`tvreg.Registry.compare_methods`."""
    values = check_grid(grid)
    specs = method_specs(methods, params)
    comps: list[Composition] = []
    for spec in specs:
        kw = dict(spec.params)
        if device is not None and spec.method in SPECTRAL_METHODS:
            kw["device"] = device
        try:
            comps.append(resolve(repo, expression, method=spec.method, include=include,
                                 exclude=exclude, allow_base_mismatch=allow_base_mismatch,
                                 **kw))
        except InvalidInput as e:
            if type(e) is InvalidInput:  # a parameter or operand count: say which method
                raise InvalidInput(f"{spec.label}: {e}") from None
            raise
    seen: dict[str, str] = {}
    for spec, comp in zip(specs, comps, strict=True):
        key = repr(sorted(comp.params.to_json().items()))
        if key in seen:
            raise InvalidInput(f"{spec.label} is listed twice (as {seen[key]})")
        seen[key] = spec.label
    metadata = {"tvreg.expression": comps[0].expression, "tvreg.base_hash": comps[0].base_hash}
    commands: list[CommandEvaluator] = []
    try:
        evaluate, cmd = _evaluator("eval command", evaluate, work_dir, metadata)
        commands += [cmd] if cmd else []
        if test is not None:
            test, cmd = _evaluator("test command", test, work_dir, metadata)
            commands += [cmd] if cmd else []
        base_sd = base_state(repo, base, comps[0])
        for comp in comps[1:]:
            check_fits(base_sd, comp)
        if any(comp.params.weight_space for comp in comps):
            from tvreg.tensors.checkpoints import InMemoryCheckpoint

            weights = InMemoryCheckpoint(base_sd, "base")
            for comp in comps:
                if comp.params.weight_space:  # slerp, karcher: the base evaluated on
                    comp.base_weights = weights
        for comp in comps:
            comp.check_ready()
        rows = []
        for spec, comp in zip(specs, comps, strict=True):
            rows.append(_run(spec, comp, base_sd, evaluate, test, values, commands))
            if on_row is not None:
                on_row(rows[-1])
    finally:
        for cmd in commands:
            cmd.close()
    best = max(rows, key=lambda r: r["validation"])
    return {"expression": comps[0].expression, "grid": values, "rows": rows, "best": best}


def _run(spec: MethodSpec, comp: Composition, base_sd: dict, evaluate: Evaluate,
         test: Evaluate | None, grid: list[float], commands: list[CommandEvaluator]) -> dict:
    """One method's row: merged once, searched over ``grid``, tested at the best λ."""
    t0 = time.perf_counter()
    merged = comp.state_dict()
    seconds = time.perf_counter() - t0
    make = scaled(base_sd, merged)

    def labelled(lam: float, stage: str = "validation") -> dict:
        for cmd in commands:
            cmd.label = f"{spec.label}, lambda {lam:g}, {stage}"
        return make(lam)

    t1 = time.perf_counter()
    found = search(labelled, evaluate, grid)
    test_score = None
    if test is not None:
        test_score = test(labelled(found["best_lambda"], "test"))
        if isinstance(test_score, Mapping):
            test_score = dict(test_score)
        elif isinstance(test_score, bool) or not isinstance(test_score, (int, float)):
            raise InvalidInput(f"test returned {type(test_score).__name__}: a number or a dict")
        else:
            test_score = float(test_score)
    params = {k: v for k, v in comp.params.to_json().items() if k != "method"}
    # a best λ at the grid's smallest or largest value may not be the method's best at all
    edge = len(set(grid)) > 1 and found["best_lambda"] in (min(grid), max(grid))
    return {"method": spec.method, "label": spec.label, "params": params,
            "best_lambda": found["best_lambda"], "at_edge": edge,
            "validation": found["best_score"],
            "test": test_score, "seconds": seconds,
            "eval_seconds": time.perf_counter() - t1, "scores": found["rows"]}
