"""Small helpers every layer may use (layer L0): lazy re-exports, fault injection for crash tests,
progress bars, recycled buffers, short listings in messages, fsync of a folder,
waiting for a flock with backoff.
"""

from tvreg.util.lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "BufferPool": "buffers",
    "KILL_ENV": "faults",
    "TRACE_ENV": "faults",
    "fsync_dir": "fsio",
    "lazy_exports": "lazy",
    "listing": "listings",
    "flock_until": "locks",
    "read_holder": "locks",
    "write_holder": "locks",
    "compile_option": "patterns",
    "Transfer": "progress",
}

__all__ = ["BufferPool", "KILL_ENV", "TRACE_ENV", "Transfer", "compile_option", "flock_until",
           "fsync_dir", "lazy_exports", "listing", "read_holder", "write_holder"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
