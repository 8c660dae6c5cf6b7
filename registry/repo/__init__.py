"""One registry's state, reads and write protocol (layer L4): the ``Repo`` object every
operation takes, writes of versions and tags, create/recode/export, stored bases, the queries
behind ls/log/show (docs/architecture.md).
"""

from tvreg.util.lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "AddBaseResult": "bases",
    "LS_QUERY": "bases",
    "add": "bases",
    "export_base": "bases",
    "names_of": "bases",
    "open_base": "bases",
    "resolve": "bases",
    "set_name": "bases",
    "show_base": "bases",
    "LEFT_OUT_NAMES_CHARS": "create",
    "create": "create",
    "export": "create",
    "recode": "create",
    "base_name_row": "index",
    "base_row": "index",
    "reindex_bases": "index",
    "codec_fields": "queries",
    "log": "queries",
    "ls_query": "queries",
    "show": "queries",
    "Repo": "repo",
    "CreateResult": "write",
    "claim_version": "write",
    "finish_version": "write",
    "index_tag": "write",
    "set_tag": "write",
    "store_version": "write",
    "write_vector": "write",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
