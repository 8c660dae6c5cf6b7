"""Registry upkeep (layer L5): verify, gc, and repair from a remote.
"""

from tvreg.util.lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "GcReport": "gc",
    "reachable_objects": "gc",
    "VerifyReport": "report",
    "blobs_intact": "report",
    "check_manifest": "report",
    "read_each": "report",
    "verify": "verify",
}

__all__ = ["GcReport", "VerifyReport", "blobs_intact", "check_manifest", "reachable_objects",
           "read_each", "verify"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
