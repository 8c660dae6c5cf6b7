"""The facade users call: :func:`open` and :class:`Registry`.

A ``Registry`` wraps one :class:`~tvreg.repo.repo.Repo` (a registry's state and reads) and
forwards each call to the operation that does it (layers L4-L5, docs/architecture.md); it is
also where the parts are wired together, e.g. similarities computed after a create or a pull.
Write order (docs/format.md): blobs -> manifest -> version record -> catalog. The store is the
truth; the catalog is an index that :meth:`Registry.reindex` rebuilds from it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tvreg.errors import InvalidInput, TvregError
from tvreg.format.manifest import Manifest, TensorEntry
from tvreg.format.records import TagRecord, VersionRecord
from tvreg.names import Ref, validate_name
from tvreg.repo.repo import CATALOG_FILE, CONFIG_FILE, CONFIG_FORMAT, SCRATCH_DIR, Repo
from tvreg.repo.write import CreateResult

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from tvreg.catalog.db import Catalog
    from tvreg.compose.composition import Composition
    from tvreg.format.bases import BaseName, BaseRecord
    from tvreg.maintenance.gc import GcReport
    from tvreg.maintenance.report import VerifyReport
    from tvreg.remote.config import Remote
    from tvreg.remote.gc import RemoteGcReport
    from tvreg.remote.pull import PullReport
    from tvreg.remote.push import PushReport
    from tvreg.repo.bases import AddBaseResult
    from tvreg.similarity.compute import SimilarityMatrix
    from tvreg.storage.objects import ObjectDB
    from tvreg.stores import Store
    from tvreg.tensors.stored_base import StoredBase
    from tvreg.tensors.taskvector import TaskVector
    from tvreg.util.progress import Transfer

    #: what ``create``, ``apply`` and ``add_base`` read a checkpoint from
    Checkpointish = str | os.PathLike | Mapping[str, Any] | torch.nn.Module

# torch and the modules that need it are imported where tensors are touched, so commands that
# only read the catalog (ls, sql, log, show) start in a fraction of the time

__all__ = ["CATALOG_FILE", "CONFIG_FILE", "CONFIG_FORMAT", "SCRATCH_DIR", "CreateResult",
           "Registry", "SimilarityWarning", "default_root", "open"]

class SimilarityWarning(UserWarning):
    """A version was stored but its similarities could not be computed (run `tvreg
    similarities`)."""


def default_root() -> str:
    """``$TVREG_HOME``, else ``~/.tvreg``."""
    return os.environ.get("TVREG_HOME") or os.path.join(os.path.expanduser("~"), ".tvreg")


def open(path: str | os.PathLike | None = None, *,  # noqa: A001 - the API name
         check_tensors: bool = False, options: dict[str, Any] | None = None,
         cache: str | os.PathLike | None = None) -> Registry:
    """Open the registry at ``path`` (default ``$TVREG_HOME``, else ``~/.tvreg``).

    Nothing is created until the first write; reads of a registry that does not exist raise
    :class:`NotFound`. Every blob read is checked against its sha256 (its name); with
    ``check_tensors`` every decoded tensor is also checked against the sha256 in its manifest.

    A URL (``s3://bucket/team``, ``https://host/tvreg``, ``memory://x``, ``file:///srv/tvreg``)
    opens that remote read-only, with fsspec storage ``options`` and objects cached
    under ``cache`` (default ``$TVREG_CACHE``, else ``~/.cache/tvreg``); see
    :mod:`tvreg.remote.view`.
    """
    path = path if path is not None else default_root()
    from tvreg.remote.view import RemoteRepo, is_url

    if isinstance(path, str) and is_url(path):
        return Registry(RemoteRepo(path, options=options, cache=cache,
                                   check_tensors=check_tensors))
    if options or cache is not None:
        raise InvalidInput("options and cache are for registries opened by URL")
    return Registry(path, check_tensors=check_tensors)


class Registry:
    """A task-vector registry: a content-addressed object store plus a DuckDB catalog.

    ``Registry(path)`` (or :func:`tvreg.open`) opens the registry in folder ``path``; a
    :class:`~tvreg.repo.repo.Repo` (e.g. a remote opened read-only by URL) may be given
    instead. Use it as a context manager, or call :meth:`close`, to stop its thread pools.
    """

    def __init__(self, root: str | os.PathLike | Repo, *, check_tensors: bool = False) -> None:
        self.repo = root if isinstance(root, Repo) else Repo(root, check_tensors=check_tensors)

    def __repr__(self) -> str:
        return repr(self.repo)

    # --- the registry's parts (see Repo) -------------------------------------------------------

    @property
    def root(self) -> str:
        """The registry's folder (for one opened by URL: its cache folder)."""
        return self.repo.root

    @property
    def store(self) -> Store:
        """The object store (key -> bytes) holding everything the registry is."""
        return self.repo.store

    @property
    def objects(self) -> ObjectDB:
        """Content-addressed objects (blobs and manifests), checked on read."""
        return self.repo.objects

    @property
    def catalog(self) -> Catalog:
        """The DuckDB catalog: an index of the store."""
        return self.repo.catalog

    @property
    def exists(self) -> bool:
        """Whether the registry has been created."""
        return self.repo.exists

    @property
    def scratch(self) -> str:
        """The registry's scratch folder (staging of writes in progress)."""
        return self.repo.scratch

    def init(self) -> bool:
        """Create the registry if needed; True if it was created now."""
        return self.repo.init()

    def refresh(self) -> None:
        """Read what changed since the registry was opened (for one opened by URL: the
        remote's records again)."""
        self.repo.refresh()

    # --- create --------------------------------------------------------------------------------

    def create(self, name: str, base: Checkpointish, finetuned: Checkpointish | None = None,
               *, lora: str | os.PathLike | None = None,
               task: str | None = None, dataset: str | None = None, lr: float | None = None,
               steps: int | None = None, meta: dict[str, Any] | None = None,
               allow_nonfinite: bool = False, level: int | None = None, similarities: bool = True,
               exact: bool = False, codec: str | None = None,
               include: str | None = None, exclude: str | None = None,
               on_progress: Callable[[int], None] | None = None) -> CreateResult:
        """Store τ = finetuned − base as a new version of ``name``; or, with ``lora`` (a PEFT
        LoRA adapter directory) instead of ``finetuned``, τ = scale · B·A on the adapted
        tensors and 0 elsewhere (:mod:`tvreg.tensors.lora`; its rank, alpha and rsLoRA flag go
        into the metadata as ``lora.*`` unless ``meta`` sets them).

        Everything the user can get wrong is checked before the registry is touched; a failure
        later (NaN found mid-way, I/O error) discards the staged objects and leaves the registry
        as it was. If an existing version of ``name`` has the same content and metadata, no new
        version is made and ``created`` is False. With ``similarities`` (the default) the new
        vector's statistics and its similarities with the stored vectors of its base are
        computed right after (docs/similarity.md).

        ``exact`` (exact mode) stores each tensor as the bit differences of the fine-tuned
        tensor over the base's, so that applying the vector at weight 1 rebuilds the fine-tuned
        checkpoint bit for bit; reading it needs the base, so the base is stored too
        (:meth:`add_base`, deduplicated) unless it already is.

        ``codec`` (a spec such as ``"int8"`` or ``"topk:density=0.1"``, docs/cli.md) stores the
        vector with that lossy codec (:mod:`tvreg.tensors.lossy`); the record's ``recipe`` keeps
        the codec and the error against the exact vector.

        ``base`` and ``finetuned`` are paths, or state dicts in memory (mappings of names to
        torch tensors or numpy arrays, or ``torch.nn.Module`` objects); they are only read.

        ``include`` / ``exclude`` (regexes, ``re.search`` on tensor names, as for
        :meth:`resolve`) select the tensors the vector is made of: base tensors they leave out
        are stored as zero deltas (the vector stays composable with the others of its base),
        fine-tuned-only tensors they leave out are ignored; the rest must match. The metadata
        records them as ``create.include``, ``create.exclude``, ``create.left_out`` (a count)
        and ``create.left_out_names``. A vector that is all zeros is stored with a
        :class:`~tvreg.errors.ZeroVectorWarning`.
        """
        from tvreg.repo.create import create

        return create(self.repo, name, base, finetuned, lora=lora, task=task, dataset=dataset,
                      lr=lr, steps=steps, meta=meta, allow_nonfinite=allow_nonfinite,
                      level=level, exact=exact, codec=codec, include=include, exclude=exclude,
                      on_progress=on_progress, after_insert=self._after_insert(similarities))

    def ingest(self, items: str | os.PathLike | list[Any], *, engine: str = "local",
               workers: int | None = None, scheduler: str | None = None,
               level: int | None = None, similarities: bool = True,
               on_item: Callable[[Any, str], None] | None = None,
               to: str | None = None) -> Any:
        """Create many versions from an ingest list (a JSON Lines file's path, or its items
        from :func:`tvreg.repo.ingest.read_list`), resumable: items landed by an earlier run
        are skipped (docs/cli.md, ``ingest``). Vectors are staged by the ``engine``
        (``"local"``: ``workers`` threads; ``"dask"``: tasks of the Dask cluster at
        ``scheduler``, or of a local one of ``workers`` processes) and made versions here in
        list order, with the same vector ids as :meth:`create` item by item; a failing item
        is reported in the result and the others go on. With
        ``similarities`` (the default), the new versions' similarities are computed at the
        end, once for all of them. Returns a :class:`tvreg.repo.ingest.IngestResult`.

        With ``to`` (a writable remote of this registry's config), the vectors are staged
        straight into that remote's store and made versions there, as :meth:`push` would
        (:mod:`tvreg.remote.ingest`); nothing is written here, no similarities are computed
        (``similarities`` is ignored), and the result's refs are the remote's."""
        from tvreg.repo.ingest import ingest, read_list

        listed = read_list(items) if isinstance(items, (str, os.PathLike)) else list(items)
        if to is not None:
            from tvreg.remote.ingest import ingest as ingest_to

            if not self.repo.exists:  # the remote is named in this registry's config
                self.repo.require()  # NotFound, one line
            return ingest_to(self.repo, listed, to, engine=engine, workers=workers,
                             scheduler=scheduler, level=level, on_item=on_item)
        result = ingest(self.repo, listed, engine=engine, workers=workers, scheduler=scheduler,
                        level=level, on_item=on_item)
        if similarities and result.created:
            self._similarities_after_insert(*result.created)
        return result

    def recode(self, ref: str, codec: str, *, name: str | None = None,
               level: int | None = None, similarities: bool = True) -> CreateResult:
        """Store the vector ``ref`` names again with a lossy ``codec`` (a spec, as for
        :meth:`create`) as a new version of ``name`` (default: ``ref``'s name), with the same
        metadata, ``parents`` = (the source's vector id,) and ``recipe`` = ``{"op": "recode",
        "codec", "source", "source_ref", "error"}``. The error is measured against the source
        vector as stored, so recoding an already lossy version reports the error added by
        this step only."""
        from tvreg.repo.create import recode

        return recode(self.repo, ref, codec, name=name, level=level,
                      after_insert=self._after_insert(similarities))

    def _after_insert(self, similarities: bool) -> Callable[..., None] | None:
        """What runs once new versions are indexed: their similarities, unless turned off."""
        return self._similarities_after_insert if similarities else None

    def _similarities_after_insert(self, *records: VersionRecord) -> None:
        """The versions are stored and indexed; similarities are derived data, so a failure
        here is a warning that says how to finish, not an error."""
        import warnings

        from tvreg.similarity.upkeep import exact_limit, update

        try:
            update(self.repo, [r.vector_id for r in records], exact_limit=exact_limit(self.repo))
        except TvregError as e:
            refs = ", ".join(r.ref for r in records)
            warnings.warn(f"{refs} {'is' if len(records) == 1 else 'are'} stored, but the "
                          f"similarities were not computed ({e}); run `tvreg similarities`",
                          SimilarityWarning, stacklevel=5)

    # --- records and refs ------------------------------------------------------------------------

    def versions(self, name: str) -> list[VersionRecord]:
        """All version records of ``name`` from the store, oldest first."""
        return self.repo.versions(name)

    def record(self, name: str, version: int) -> VersionRecord:
        """The record of ``name@version``; :class:`NotFound` if there is none."""
        return self.repo.record(name, version)

    def tag_record(self, name: str, tag: str) -> TagRecord:
        """The tag ``name@tag``; :class:`NotFound` if there is none."""
        return self.repo.tag_record(name, tag)

    def all_records(self) -> list[VersionRecord]:
        """Every version record in the store."""
        return self.repo.all_records()

    def all_tags(self) -> list[TagRecord]:
        """Every tag in the store."""
        return self.repo.all_tags()

    def tags_of(self, record: VersionRecord) -> list[str]:
        """Names of the tags that point at ``record``."""
        return self.repo.tags_of(record)

    def manifest(self, vector_id: str) -> Manifest:
        """The manifest of vector ``vector_id``."""
        return self.repo.manifest(vector_id)

    def resolve_ref(self, ref: str | Ref) -> tuple[VersionRecord | None, str]:
        """``(record, vector_id)`` of a ref; record is None for an id prefix with no version.

        ``NAME`` is the latest version. A bare string that is both an existing name and a hex
        prefix means the name.
        """
        return self.repo.resolve_ref(ref)

    def get(self, ref: str) -> TaskVector:
        """The task vector a ref names; tensors are read lazily and verified."""
        return self.repo.get(ref)

    def load_tensor(self, entry: TensorEntry, out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode one tensor of a manifest (into ``out`` if given), its blobs checked."""
        return self.repo.load_tensor(entry, out)

    def finetuned_tensor(self, entry: TensorEntry, base: torch.Tensor) -> torch.Tensor:
        """The fine-tuned tensor an exact-mode entry rebuilds, bit for bit, over ``base``."""
        return self.repo.finetuned_tensor(entry, base)

    def base_tensor(self, base_hash: str, name: str) -> torch.Tensor:
        """Tensor ``name`` of base model ``base_hash`` (given with :meth:`using_base`, or
        stored); else :class:`BaseRequired`."""
        return self.repo.base_tensor(base_hash, name)

    def using_base(self, checkpoint: Any, base_hash: str
                   ) -> contextlib.AbstractContextManager[None]:
        """Within the block, exact-mode tensors of base ``base_hash`` read ``checkpoint``."""
        return self.repo.using_base(checkpoint, base_hash)

    def executor(self, kind: str) -> ThreadPoolExecutor:
        """The registry's thread pool for one kind of work (see :meth:`Repo.executor`)."""
        return self.repo.executor(kind)

    # --- composition -----------------------------------------------------------------------------

    def resolve(self, expression: str, *, method: str = "task_arithmetic", lam: float = 1.0,
                include: str | None = None, exclude: str | None = None,
                allow_base_mismatch: bool = False, device: Any = None,
                operand_params: Mapping[str | int, Mapping[str, Any]] | None = None,
                **params: Any) -> Composition:
        """A composition of stored vectors, e.g. ``reg.resolve("0.5*a + b - c@2")``.

        ``method`` is a merge method (docs/composition.md): task_arithmetic, ties, dare_linear,
        dare_ties, magnitude_prune; mergekit's breadcrumbs, breadcrumbs_ties, della,
        della_linear, slerp, nuslerp, karcher, model_stock; consensus (TALL masks); or a
        spectral one (tsv, iso_c, iso_cts). ``params`` are the method's parameters, by
        :class:`~tvreg.compose.merge.MergeParams`'s names: ``density``, ``seed``, ``trim``,
        ``majority_sign``, ``rule`` (``"mergekit"``: mergekit's weighted TIES), ``normalize``,
        ``rescale``, ``common_fraction``, ``gamma``, ``epsilon``, ``t``, ``k``,
        ``tall_mask_lambda``, ``filter_wise``, ``nuslerp_flatten``, ``nuslerp_row_wise``,
        ``max_iter``, ``tol`` (None: the default). ``device`` is where the spectral methods'
        SVDs run ("cuda": the GPU; None: the host with every core, or the CUDA device the
        tensors are asked for on). slerp and karcher interpolate weights: they read the stored
        base (or, in :meth:`apply`, the base written onto; else set ``comp.base_weights`` to
        an open checkpoint).

        Values may differ per operand and per tensor, as in mergekit: ``density``, ``gamma``,
        ``epsilon`` (and slerp's ``t``) may be a number, a list of numbers (a gradient over
        the layers: ``[0.2, 0.8]``) or ``{"filter": "attn", "value": ...}`` conditions (one
        or a list; the first whose filter is in the tensor's name applies), and
        ``operand_params`` gives an operand (its ref as written in the expression, or its
        position) its own ``weight`` (which multiplies its coefficient), ``density``,
        ``gamma`` or ``epsilon`` the same way (docs/composition.md, "Per-operand and
        per-layer parameters"). Every value is evaluated for every tensor here.

        Refs are resolved and compatibility (architecture, base) checked from the manifests;
        no tensor is read until the composition's tensors are asked for.
        """
        from tvreg.compose.resolve import resolve

        return resolve(self.repo, expression, method=method, lam=lam, include=include,
                       exclude=exclude, allow_base_mismatch=allow_base_mismatch, device=device,
                       operand_params=operand_params, **params)

    def save_composition(self, name: str, comp: Composition, *, task: str | None = None,
                         dataset: str | None = None, meta: dict[str, Any] | None = None,
                         level: int | None = None, similarities: bool = True) -> CreateResult:
        """Store a composition as a version of ``name``; its record keeps the recipe (expression,
        method, parameters, operand refs and vector ids) and the operands as parents."""
        from tvreg.compose.save import save_composition

        return save_composition(self.repo, name, comp, task=task, dataset=dataset, meta=meta,
                                level=level, after_insert=self._after_insert(similarities))

    def apply(self, comp: Composition | str, base: Checkpointish | None = None,
              output: str | os.PathLike | None = None, *, dtype: str | None = None,
              allow_base_mismatch: bool | None = None, format: str | None = None,
              shard_size: int | str | None = None, force: bool = False) -> int:
        """Write θ_base + merged as model weights; returns the bytes of weights written.

        ``base`` is a checkpoint path, a state dict in memory (a mapping of names to torch
        tensors or numpy arrays, or a ``torch.nn.Module``), a stored base's name or hash prefix,
        or None: the stored base of the composition's base hash (:meth:`add_base`).
        ``format`` is ``"safetensors"`` (one file) or ``"hf"`` (a Hugging Face model folder:
        the base folder's config and tokenizer, weights in shards of ``shard_size`` bytes or
        units such as ``"500MB"``, a model card; an existing non-empty folder only with
        ``force``); by default ``hf`` unless ``output`` ends in ``.safetensors``."""
        from tvreg.compose.apply import apply

        return apply(self.repo, comp, base, output, dtype=dtype,
                     allow_base_mismatch=allow_base_mismatch, format=format,
                     shard_size=shard_size, force=force)

    def search_coefficients(self, expression: str, evaluate: Callable[[dict], float],
                            grid: Any, *, base: Any = None, **params: Any) -> dict[str, Any]:
        """Pick λ the way the paper does: for each λ in ``grid``, build θ_base + λ·merged as a
        state dict, call ``evaluate(state_dict) -> score`` (e.g. validation accuracy) and return
        ``{"rows": [{"lambda", "score"}], "best_lambda", "best_score"}``.

        ``base`` is a checkpoint path, a stored base (its name or hash prefix; None: the
        expression's), or a state dict; the merged vector is computed once.
        """
        from tvreg.compose.save import search_coefficients

        return search_coefficients(self.repo, expression, evaluate, grid, base=base, **params)

    def compare_methods(self, expression: str, evaluate: Callable[[dict], Any] | str, *,
                        methods: Any = None, grid: Any = None, base: Any = None,
                        test: Callable[[dict], Any] | str | None = None,
                        params: Mapping[str, Mapping[str, Any]] | None = None,
                        include: str | None = None, exclude: str | None = None,
                        allow_base_mismatch: bool = False, device: Any = None,
                        work_dir: str | os.PathLike | None = None,
                        on_row: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Which merge method for these vectors: each method merges ``expression`` once, its λ
        is picked from ``grid`` by ``evaluate(state_dict) -> score`` (validation, as
        :meth:`search_coefficients`), and ``test(state_dict)`` (a number or a dict, optional)
        scores θ_base + λ·merged at that λ.

        ``methods``: names (``"ties"``, ``"ties:density=0.3"``) or ``(name, {params})`` pairs;
        default task_arithmetic, ties, dare_ties, breadcrumbs, tsv, iso_c, iso_cts, consensus.
        A method named without parameters gets ``tvreg.compose.compare.DEFAULT_PARAMS`` (ties
        density 0.2, dare_* 0.5 with seed 0, breadcrumbs density 0.2 and gamma 0.01, …);
        ``params`` (``{"ties": {"density": 0.3}}``) replaces them per method name. ``grid``:
        the λ values (default 0.1 … 2.0, ``DEFAULT_GRID``), the same for every method.
        ``base`` as in :meth:`search_coefficients`. ``evaluate`` and ``test`` may also be
        commands (a string, split without a shell, or a list) naming ``{model}``: each model
        is written to a temporary safetensors file (in ``work_dir``, default the system's
        temporary folder; removed after each run) and the score is the last line of the
        command's stdout. ``device``: where the spectral methods' SVDs run. ``on_row(row)`` is
        called as each method finishes.

        Every method's parameters, the grid, the commands and the base are checked before
        anything is merged (:class:`InvalidInput`, nothing run). Returns ``{"expression",
        "grid", "rows", "best"}``: a row per method, ``{"method", "label", "params" (all of
        the method's), "best_lambda", "validation", "test", "seconds" (the merge),
        "eval_seconds", "scores": [{"lambda", "score"}]}``; ``best`` is the row of the highest
        validation score (the first on a tie).
        """
        from tvreg.compose.compare import compare_methods

        return compare_methods(self.repo, expression, evaluate, methods=methods, grid=grid,
                               base=base, test=test, params=params, include=include,
                               exclude=exclude, allow_base_mismatch=allow_base_mismatch,
                               device=device, work_dir=work_dir, on_row=on_row)

    def merge_config(self, config: str | os.PathLike | Mapping[str, Any], *,
                     allow_base_mismatch: bool = False, device: Any = None) -> Any:
        """A mergekit YAML config (a path or its dict) as a plan: ``plan.composition`` (a
        :class:`Composition` with mergekit's semantics), ``plan.base`` and ``plan.out_dtype``;
        models are registry refs or checkpoints (computed on the fly, nothing stored). Close it
        with ``plan.close()``; write it with :meth:`write_merge` (docs/interop.md). ``device``:
        where a spectral method's SVDs run, as in :meth:`resolve`."""
        from tvreg.compose.mergekit import plan_merge

        return plan_merge(self.repo, config, allow_base_mismatch=allow_base_mismatch,
                          device=device)

    def write_merge(self, plan: Any, output: str | os.PathLike, *, format: str | None = None,
                    shard_size: Any = None, force: bool = False) -> int:
        """Write θ_base + merged of a :meth:`merge_config` plan: a safetensors file, or a
        Hugging Face folder (``format="hf"``, the default without a ``.safetensors`` suffix)."""
        from tvreg.compose.mergekit import write_merge

        return write_merge(self.repo, plan, os.fspath(output), format=format,
                           shard_size=shard_size, force=force)

    def check_merge_output(self, plan: Any, output: str | os.PathLike, *,
                           format: str | None = None, shard_size: Any = None,
                           force: bool = False) -> str:
        """The format :meth:`write_merge` would write ``output`` in, once the checks apply
        runs on an output (before any work) have passed."""
        from tvreg.compose.mergekit import check_merge_output

        return check_merge_output(self.repo, plan, os.fspath(output), format=format,
                                  shard_size=shard_size, force=force)

    def recipe_yaml(self, ref: str) -> str:
        """A saved composition's recipe as a mergekit YAML config (tvreg's own settings in a
        ``tvreg`` block); ``tvreg merge`` of it rebuilds the version."""
        from tvreg.compose.mergekit import recipe_yaml

        record, _ = self.repo.resolve_ref(ref)
        if record is None:
            raise InvalidInput(f"{ref} is not a version (no recipe)")
        return recipe_yaml(record)

    def reproduce(self, ref: str) -> Any:
        """Recompute a saved composition from its recipe and operands; a result with ``ok``
        (every tensor bit-identical), ``vector_id``, and else the first differing ``tensor``
        and its ``max_abs_diff``."""
        from tvreg.compose.mergekit import reproduce

        return reproduce(self.repo, ref)

    # --- stored bases (tvreg.repo.bases) ---------------------------------------------------------

    def add_base(self, path: Checkpointish, name: str | None = None, *,
                 level: int | None = None,
                 on_progress: Callable[[int], None] | None = None) -> AddBaseResult:
        """Store every tensor of the base checkpoint at ``path`` (floating and not) under its
        base hash, and point base name ``name`` at it if given. A base already stored is not
        stored again (``created`` False, no object written). ``path`` may also be a state dict
        in memory (as for :meth:`create`)."""
        from tvreg.repo.bases import add

        return add(self.repo, path, name, level=level, on_progress=on_progress)

    def stored_base(self, base_hash: str) -> StoredBase | None:
        """The stored base of ``base_hash`` as a checkpoint (tensors decoded on demand, blobs
        verified), or None if none is stored."""
        return self.repo.stored_base(base_hash)

    def base(self, ref: str) -> BaseRecord:
        """The record of the stored base a name or a hash prefix (>= 8 hex digits) names."""
        from tvreg.repo.bases import resolve

        return resolve(self.repo, ref)

    def bases(self) -> list[dict[str, Any]]:
        """One row per stored base (from the catalog), oldest first, with its names."""
        from tvreg.repo.bases import LS_QUERY

        self.repo.require()
        return self.catalog.rows(LS_QUERY)

    def show_base(self, ref: str, *, tensors: bool = False) -> dict[str, Any]:
        """A stored base described (hash, names, sizes, codec; its tensors if ``tensors``)."""
        from tvreg.repo.bases import show_base

        self.repo.require()
        return show_base(self.repo, ref, tensors=tensors)

    def name_base(self, ref: str, name: str) -> tuple[BaseName, str | None]:
        """Point base name ``name`` at the base ``ref``: a stored base's name or hash prefix, or
        the base hash (prefix) of stored vectors whose base weights are not stored, or a full
        base hash. Returns the name and the hash it pointed at before (None if new)."""
        from tvreg.repo.bases import name_hash, set_name

        self.repo.require_writable()
        validate_name(name)
        self.repo.require()
        return set_name(self.repo, name, name_hash(self.repo, ref))

    def export_base(self, ref: str, path: str | os.PathLike) -> int:
        """Write a stored base to a safetensors file (its tensors bit for bit as stored)."""
        from tvreg.repo.bases import export_base

        self.repo.require()
        return export_base(self.repo, ref, path)

    # --- remotes ---------------------------------------------------------------------------------

    def remotes(self) -> dict[str, Remote]:
        """The named remotes of ``config.json`` (docs/format.md §9)."""
        from tvreg.remote.config import load

        self.repo.require()
        return load(self.repo)

    def add_remote(self, name: str, url: str, options: dict[str, Any] | None = None) -> Remote:
        """Add a remote: a URL (a path, ``file://``, ``s3://``, ``memory://``, ``http(s)://``…)
        and fsspec storage options without credentials."""
        from tvreg.remote.config import add

        return add(self.repo, name, url, options)

    def remove_remote(self, name: str) -> Remote:
        """Remove a remote (nothing on it is touched)."""
        from tvreg.remote.config import remove
        from tvreg.remote.gc import forget

        self.repo.require_writable()
        self.repo.require()
        gone = remove(self.repo, name)
        forget(self.repo, name)  # notes of failed pushes to it: no push will collect them now
        return gone

    def remote(self, name: str) -> Remote:
        """The remote of that name."""
        from tvreg.remote.config import get

        return get(self.repo, name)

    def push(self, remote: str = "origin", refs: list[str] | None = None, *,
             progress: Transfer | None = None, with_base: bool = False) -> PushReport:
        """Copy versions (default: all) with their objects and tags to a remote; see
        :mod:`tvreg.remote.push` for the order and the numbering rules. ``with_base`` also
        copies the stored bases of those versions (and their names)."""
        from tvreg.remote.push import push

        self.repo.require_writable()
        self.repo.require()
        return push(self.repo, remote, refs, progress=progress, with_base=with_base)

    def pull(self, remote: str = "origin", refs: list[str] | None = None, *,
             progress: Transfer | None = None, similarities: bool = True,
             with_base: bool = False) -> PullReport:
        """Copy versions (default: all) of a remote here, every object checked against its
        hash first; see :mod:`tvreg.remote.pull`. ``with_base`` also copies the stored bases of
        those versions (and their names)."""
        from tvreg.remote.pull import pull

        self.repo.require_writable()
        self.repo.require()
        return pull(self.repo, remote, refs, progress=progress, with_base=with_base,
                    after_insert=self._after_insert(similarities))

    def remote_ls(self, remote: str = "origin", *, all_versions: bool = False
                  ) -> list[dict[str, Any]]:
        """What a remote holds, like :meth:`ls`, from its index (no tensors are read)."""
        from tvreg.remote.index import remote_ls

        return remote_ls(self.remote(remote), all_versions)

    def remote_sql(self, remote: str, query: str) -> list[dict[str, Any]]:
        """A read-only query on a remote's index (tables ``versions``, ``tags``, view
        ``latest``), without pulling."""
        cols, rows = self.remote_sql_table(remote, query)
        return [dict(zip(cols, row, strict=True)) for row in rows]

    def remote_sql_table(self, remote: str, query: str) -> tuple[list[str], list[tuple]]:
        """:meth:`remote_sql` as ``(columns, rows)``."""
        from tvreg.remote.index import remote_sql

        return remote_sql(self.remote(remote), query)

    # --- similarities ----------------------------------------------------------------------------

    def similar(self, ref: str, k: int = 10, by: str = "cosine") -> list[dict[str, Any]]:
        """The ``k`` versions of ``ref``'s base most similar to it, best first by ``by``
        (``"cosine"`` or ``"alignment"``): dicts with ref, name, version, vector_id, cosine,
        sign_conflict_rate, alignment (subspace alignment in [0, 1], None for an estimate or
        without matrices) and exact (False: a sketch estimate). Versions holding ``ref``'s own
        vector are left out."""
        from tvreg.similarity.compute import similar

        self.repo.require()
        return similar(self.repo, ref, k, by)

    def similarity_matrix(self, refs: list[str] | None = None,
                          by: str = "cosine") -> SimilarityMatrix:
        """Cosines (``by="alignment"``: subspace alignments) between ``refs`` (default: the
        newest version of every name), with labels; refs of another base than the first are
        skipped and listed in ``skipped``."""
        from tvreg.similarity.compute import similarity_matrix

        self.repo.require()
        return similarity_matrix(self.repo, refs, by)

    def update_similarities(self, refs: list[str] | None = None, *, engine: str = "local",
                            workers: int | None = None, scheduler: str | None = None,
                            memory: int | None = None,
                            on_vector: Callable[[str], None] | None = None) -> dict[str, int]:
        """Compute the statistics and pairs that are missing, for the bases of ``refs`` (refs
        or vector ids; default every base), whatever the exact limit: pending pairs too, in
        one batch pass that reads each vector once (``engine="dask"``: as tasks of the Dask
        cluster at ``scheduler``, or of a local one of ``workers`` processes; ``memory``: the
        bytes a task may hold, docs/similarity.md). Idempotent. Returns ``{"vectors": N,
        "pairs": M}``: vectors whose statistics and pairs whose values were computed."""
        from tvreg.digest import is_hex_digest
        from tvreg.similarity.upkeep import update

        self.repo.require()
        ids = None if refs is None else [r if is_hex_digest(r) else self.resolve_ref(r)[1]
                                         for r in refs]
        return update(self.repo, ids, exact_limit=None, engine=engine, workers=workers,
                      scheduler=scheduler, memory=memory,
                      on_vector=on_vector)

    def rebuild_similarities(self, *, engine: str = "local", workers: int | None = None,
                             scheduler: str | None = None, memory: int | None = None,
                             on_vector: Callable[[str], None] | None = None
                             ) -> dict[str, int]:
        """Recompute every statistic and pair from the stored vectors (every base, whatever
        the exact limit; engines as for :meth:`update_similarities`, which give the same
        values bit for bit)."""
        from tvreg.similarity.upkeep import update

        self.repo.require()
        return update(self.repo, None, exact_limit=None, engine=engine, workers=workers,
                      scheduler=scheduler, memory=memory,
                      rebuild=True, on_vector=on_vector)

    def similarity_status(self) -> list[dict[str, Any]]:
        """Per base and architecture: ``n_vectors``, ``n_without_stats`` (vectors whose
        statistics are not computed), ``n_pairs``, ``n_exact_pairs``, ``n_pending_pairs``
        (pairs with no exact value: queries estimate them from sketches) and the registry's
        ``exact_limit``."""
        from tvreg.similarity.upkeep import status

        self.repo.require()
        return status(self.repo)

    @property
    def similarity_exact_limit(self) -> int:
        """Vectors per base up to which an insert computes its exact pairs (config.json's
        ``similarity.exact_limit``, default 256); past it, a new vector's pairs are pending."""
        from tvreg.similarity.upkeep import exact_limit

        self.repo.require()
        return exact_limit(self.repo)

    def set_similarity_exact_limit(self, limit: int) -> int:
        """Set :attr:`similarity_exact_limit` (an integer >= 0) in config.json."""
        from tvreg.similarity.upkeep import set_exact_limit

        self.repo.require()
        return set_exact_limit(self.repo, limit)

    # --- tags ------------------------------------------------------------------------------------

    def tag(self, ref: str, tag: str) -> tuple[TagRecord, int | None]:
        """Point ``NAME@tag`` at the version ``ref`` names; returns the tag and the version it
        pointed at before (None if new)."""
        from tvreg.repo.write import set_tag

        return set_tag(self.repo, ref, tag)

    # --- queries ---------------------------------------------------------------------------------

    def ls(self, *, all_versions: bool = False) -> list[dict[str, Any]]:
        """One row per name (its latest version), or per version with ``all_versions``."""
        from tvreg.repo.queries import ls_query

        self.repo.require()
        return self.catalog.rows(ls_query(all_versions, base_names=True))

    def log(self, name: str) -> list[dict[str, Any]]:
        """Every version of ``name``, newest first, with its tags."""
        from tvreg.repo.queries import log

        return log(self.repo, name)

    def show(self, ref: str, *, tensors: bool = False) -> dict[str, Any]:
        """One version described: ref, ids, base hash, architecture, metadata, tags, sizes,
        codec, lossy error and dtypes; with ``tensors``, one entry per tensor too."""
        from tvreg.repo.queries import show

        return show(self.repo, ref, tensors=tensors)

    def sql(self, query: str) -> list[dict[str, Any]]:
        """Run a read-only SQL query on the catalog; rows as dicts."""
        cols, rows = self.sql_table(query)
        return [dict(zip(cols, row, strict=True)) for row in rows]

    def sql_table(self, query: str, *, max_rows: int | None = None,
                  timeout: float | None = None) -> tuple[list[str], list[tuple]]:
        """:meth:`sql` as ``(columns, rows)`` (what ``tvreg sql`` prints). ``max_rows``: fetch
        at most ``max_rows + 1`` rows (more than ``max_rows`` back means the result was cut);
        ``timeout``: stop the query after that many seconds (:class:`SQLError`)."""
        self.repo.require()
        return self.catalog.sql(query, max_rows=max_rows, timeout=timeout)

    # --- export ----------------------------------------------------------------------------------

    def export(self, ref: str, path: str | os.PathLike) -> int:
        """Write the task vector to a safetensors file, one tensor in memory at a time."""
        from tvreg.repo.create import export

        return export(self.repo, ref, path)

    def export_peft(self, ref: str, out_dir: str | os.PathLike, *, rank: int | None = None,
                    energy: float | None = None, include: str | None = None,
                    force: bool = False) -> dict[str, Any]:
        """Write a vector (a ref, an expression such as ``"0.5*a + b"``, or a saved
        task-arithmetic composition) as a PEFT LoRA adapter folder (``adapter_config.json`` +
        ``adapter_model.safetensors``): ``rank`` per module (capped at the module's) or the
        smallest rank keeping fraction ``energy`` of each module's squared norm. LoRA-imported
        factors are written as stored (sums concatenated); dense deltas are factored by SVD
        (docs/interop.md). Returns the report: per module rank and relative error, and the share
        of the vector the adapter does not carry. Bad input writes nothing."""
        from tvreg.compose.peft_export import export_peft

        return export_peft(self.repo, ref, out_dir, rank=rank, energy=energy, include=include,
                           force=force)

    # --- maintenance -----------------------------------------------------------------------------

    def reindex(self) -> dict[str, Any]:
        """Rebuild the catalog from the object store (every record and manifest re-verified).

        Versions whose record or manifest cannot be read are left out and listed under
        ``problems`` (``verify`` says more); the rest is indexed.
        """
        return self.repo.reindex()

    def verify(self, *, deep: bool = False, on_progress: Callable[[int], None] | None = None,
               repair: str | None = None) -> VerifyReport:
        """Check the whole registry (see docs/format.md §12); ``deep`` also decodes every
        stored tensor and checks its sha256.

        ``repair`` (a remote's name) then puts back every damaged or missing object, each
        checked against its sha256, and the records, tags and base documents the catalog
        vouches for, from that remote, and verifies again (docs/format.md §12.1): the report
        is the last verification's, with ``repaired`` and ``unrepaired`` filled in."""
        self.repo.require()
        if repair is not None:
            from tvreg.maintenance.repair import repair as run_repair
            from tvreg.remote.config import get

            self.repo.require_writable()
            return run_repair(self.repo, get(self.repo, repair), deep=deep,
                              on_progress=on_progress)
        from tvreg.maintenance.verify import verify

        return verify(self.repo, on_progress=on_progress, deep=deep)

    def gc(self, *, grace_seconds: float = 3600.0, dry_run: bool = False,
           remote: str | None = None) -> GcReport | RemoteGcReport:
        """Delete unreferenced objects older than ``grace_seconds`` here, or with ``remote``
        on that remote (under its gc lock: :mod:`tvreg.remote.gc`; raises
        :class:`~tvreg.remote.gc.RemoteBusy` while a push to it is in progress). ``dry_run``
        reports what would be deleted and deletes nothing."""
        self.repo.require_writable()
        self.repo.require()
        if remote is not None:
            from tvreg.remote.config import get
            from tvreg.remote.gc import collect

            return collect(self.repo, get(self.repo, remote), grace_seconds=grace_seconds,
                           dry_run=dry_run)
        from tvreg.maintenance.gc import gc

        return gc(self.repo, grace_seconds=grace_seconds, dry_run=dry_run)

    def close(self) -> None:
        """Shut down the registry's thread pools (reading again makes them anew)."""
        self.repo.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

