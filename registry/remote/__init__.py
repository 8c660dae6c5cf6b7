"""Remotes (layer L5): their configuration, the remote index, push, pull, the bases moved with
them, a remote's gc and its locks, and a remote opened read-only by URL.
"""

from tvreg.util.lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "Remote": "config",
    "add": "config",
    "get": "config",
    "load": "config",
    "normalize_url": "config",
    "parse_options": "config",
    "remove": "config",
    "LOCKS": "gc",
    "gc_lock": "gc",
    "gc_remote": "gc",
    "notes": "gc",
    "collect": "gc",
    "push_lock": "gc",
    "read_locks": "gc",
    "TAGS_KEY": "index",
    "VERSIONS_KEY": "index",
    "read": "index",
    "remote_sql": "index",
    "PullReport": "pull",
    "PushReport": "push",
    "RemoteRepo": "view",
    "is_url": "view",
}

__all__ = ["LOCKS", "PullReport", "PushReport", "Remote", "RemoteRepo", "TAGS_KEY",
           "VERSIONS_KEY", "add", "collect", "gc_lock", "gc_remote", "get", "is_url", "load",
           "normalize_url", "notes", "parse_options", "push_lock", "read",
           "read_locks", "remote_sql", "remove"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
