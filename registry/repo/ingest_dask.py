"""The ``dask`` engine of bulk ingest (:mod:`tvreg.repo.ingest`): items staged as tasks of a
Dask cluster, landed by the client.

Needs the ``dask`` extra (``pip install 'tvreg[dask]'``: dask and distributed); imported only
when ``--engine dask`` is asked for. Each task opens the registry by its folder on the worker
(once per worker process) and stages one vector there: it reads the checkpoints and writes the
encoded objects and the manifest straight into the registry's store (for ``ingest --to
REMOTE``: into the remote's store, opened on the worker by its URL and storage options). What
comes back to the client is the staged vector's manifest and metadata (kilobytes), which the
client makes a version of, so the catalog has one writer. The workers must see the registry's
folder and the checkpoints at the same paths as the client: a ``LocalCluster`` on this
machine (the default, ``workers`` processes), or a cluster whose workers share those folders
(``scheduler``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from tvreg.errors import InvalidInput

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from concurrent.futures import Future

    from tvreg.repo.write import VectorTarget

#: worker processes of the LocalCluster made when no scheduler is given
DEFAULT_WORKERS = 2
#: how long the client tries to reach a given scheduler
CONNECT_TIMEOUT = "10s"

_opened: dict[str, Any] = {}  # registry folder or store key -> target, in a worker process
_opened_lock = threading.Lock()


def executor(scheduler: str | None, workers: int | None) -> DaskExecutor:
    """A client of the cluster at ``scheduler``, or of a new ``LocalCluster`` of ``workers``
    processes; InvalidInput without the extra, or when the scheduler cannot be reached."""
    try:
        import distributed
    except ImportError:
        raise InvalidInput("--engine dask needs the dask extra: pip install 'tvreg[dask]'"
                           ) from None
    cluster = None
    try:
        if scheduler is None:
            # on loopback; its HTTP server on a free port (None still takes :8787 and warns
            # when another cluster holds it)
            cluster = distributed.LocalCluster(
                n_workers=workers or DEFAULT_WORKERS, threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=50)
            client = distributed.Client(cluster)
        else:
            if workers is not None:
                raise InvalidInput("--workers sizes a local cluster; with --scheduler the "
                                   "cluster has its own workers")
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as e:
        if cluster is not None:
            cluster.close()
        raise InvalidInput(f"cannot reach the Dask scheduler {scheduler or '(local)'}: "
                           f"{e}") from None
    return DaskExecutor(client, cluster)


def on_worker(where: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """A task: ``fn(target, *args)`` with the target opened once per worker process: ``where``
    is a registry's folder (a :class:`~tvreg.repo.repo.Repo` is opened there) or a
    :class:`~tvreg.repo.target.StoreTarget` (pickled as the callable that opens its store),
    kept by its key. ``fn`` is pickled by reference: a module-level function of tvreg."""
    from tvreg.repo.repo import Repo

    key = where if isinstance(where, str) else where.key
    with _opened_lock:
        target = _opened.get(key)
        if target is None:
            target = _opened[key] = Repo(where) if isinstance(where, str) else where
    return fn(target, *args)


class DaskExecutor:
    """Runs work on a registry as tasks of a Dask client; closes the client (and a cluster it
    made)."""

    def __init__(self, client: Any, cluster: Any) -> None:
        self.client, self.cluster = client, cluster

    def submit(self, fn: Callable[..., Any], target: VectorTarget, *args: Any) -> Future:
        """A future of ``fn(target, *args)`` run on a worker with the target opened there: a
        registry by its folder, a remote's store by its URL and options (``.result()`` raises
        the task's error)."""
        from tvreg.repo.target import StoreTarget

        where = target if isinstance(target, StoreTarget) else target.root
        # pure=False: a rerun after a failure must run the task again, not reuse its result
        return self.client.submit(on_worker, where, fn, *args, pure=False)

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
