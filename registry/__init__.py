"""tvreg: a registry and versioned, content-addressed store of task vectors.

    import tvreg
    reg = tvreg.open()                         # $TVREG_HOME, else ~/.tvreg
    reg.create("sentiment", base="base.safetensors", finetuned="ft.safetensors", task="sentiment")
    vec = reg.get("sentiment@1")
    for name, delta in vec.tensors().items(): ...
    reg.sql("SELECT name, version, task, lr FROM versions")
"""

from tvreg.errors import (
    AmbiguousRef,
    BaseNotStored,
    CatalogBusy,
    CheckpointError,
    CorruptObject,
    FormatError,
    IncompatibleCheckpoints,
    InvalidInput,
    InvalidName,
    InvalidRef,
    NonFiniteValues,
    NotFound,
    ReadOnlyRegistry,
    RegistryBusy,
    RegistryError,
    RemoteBusy,
    RemoteError,
    SQLError,
    TvregError,
    ZeroVectorWarning,
)
from tvreg.registry import CreateResult, Registry, open

__version__ = "0.1.0"


def __getattr__(name: str):
    # TaskVector needs torch; importing it lazily keeps `import tvreg` (and the CLI) light
    if name == "TaskVector":
        from tvreg.tensors.taskvector import TaskVector

        return TaskVector
    raise AttributeError(f"module 'tvreg' has no attribute {name!r}")

__all__ = ["open", "Registry", "TaskVector", "CreateResult", "TvregError", "InvalidInput",
           "InvalidName", "InvalidRef", "NotFound", "BaseNotStored", "AmbiguousRef",
           "CheckpointError",
           "IncompatibleCheckpoints", "NonFiniteValues", "SQLError", "CorruptObject",
           "FormatError", "CatalogBusy", "RegistryBusy", "RegistryError", "ReadOnlyRegistry",
           "RemoteBusy", "RemoteError", "ZeroVectorWarning", "__version__"]
