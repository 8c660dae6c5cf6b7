"""One registry's state and write protocol (layer L4): stored bases today; the ``Repo`` object
that operations take lands here (docs/architecture.md).
"""

from tvreg.util.lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "AddBaseResult": "bases",
    "LS_QUERY": "bases",
    "add": "bases",
    "base_manifest": "bases",
    "base_record": "bases",
    "export": "bases",
    "names_of": "bases",
    "open_base": "bases",
    "reindex_into": "bases",
    "resolve": "bases",
    "set_name": "bases",
    "show": "bases",
    "stored_base": "bases",
}

__all__ = ["AddBaseResult", "LS_QUERY", "add", "base_manifest", "base_record", "export",
           "names_of", "open_base", "reindex_into", "resolve", "set_name", "show",
           "stored_base"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
