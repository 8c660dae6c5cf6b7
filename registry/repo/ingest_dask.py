"""The ``dask`` engine of bulk ingest (:mod:`tvreg.repo.ingest`): items staged as tasks of a
Dask cluster, landed by the client.

Needs the ``dask`` extra (``pip install 'tvreg[dask]'``: dask and distributed); imported only
when ``--engine dask`` is asked for. Each task opens the registry by its folder on the worker
(once per worker process) and stages one vector there: it reads the checkpoints and writes the
encoded objects and the manifest straight into the registry's store. What comes back to the
client is the staged vector's manifest and metadata (kilobytes), which the client makes a
version of, so the catalog has one writer. The workers must see the registry's folder and the
checkpoints at the same paths as the client: a ``LocalCluster`` on this machine (the default,
``workers`` processes), or a cluster whose workers share those folders (``scheduler``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from tvreg.errors import InvalidInput

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from concurrent.futures import Future

    from tvreg.repo.repo import Repo

#: worker processes of the LocalCluster made when no scheduler is given
DEFAULT_WORKERS = 2
#: how long the client tries to reach a given scheduler
CONNECT_TIMEOUT = "10s"

_opened: dict[str, Any] = {}  # registry folder -> Repo, in a worker process
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


def on_worker(root: str, fn: Callable[..., Any], *args: Any) -> Any:
    """A task: ``fn(repo, *args)`` with the registry at ``root``, opened once per worker
    process (``fn`` is pickled by reference: a module-level function of tvreg)."""
    from tvreg.repo.repo import Repo

    with _opened_lock:
        repo = _opened.get(root)
        if repo is None:
            repo = _opened[root] = Repo(root)
    return fn(repo, *args)


class DaskExecutor:
    """Runs work on a registry as tasks of a Dask client; closes the client (and a cluster it
    made)."""

    def __init__(self, client: Any, cluster: Any) -> None:
        self.client, self.cluster = client, cluster

    def submit(self, fn: Callable[..., Any], repo: Repo, *args: Any) -> Future:
        """A future of ``fn(repo, *args)`` run on a worker with the registry opened there by
        its folder (``.result()`` raises the task's error)."""
        # pure=False: a rerun after a failure must run the task again, not reuse its result
        return self.client.submit(on_worker, repo.root, fn, *args, pure=False)

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
