"""The DuckDB catalog (layer L3): an index rebuilt from the store, its sandboxed SQL, and the
sketch files used to rank similar vectors.
"""

from tvreg.util.lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "CODEC_COLUMNS": "db",
    "Catalog": "db",
    "CatalogSnapshot": "snapshot",
    "codec_columns": "db",
    "codec_values": "db",
    "forget_similarity_rows": "db",
    "insert_rows": "db",
    "prune_similarity_rows": "db",
    "sandbox": "db",
    "tag_row": "db",
    "timestamp": "db",
    "user_query": "db",
    "version_row": "db",
    "SKETCH_DIM": "sketches",
}

__all__ = ["CODEC_COLUMNS", "Catalog", "CatalogSnapshot", "SKETCH_DIM", "codec_columns",
           "codec_values", "forget_similarity_rows",
           "insert_rows", "prune_similarity_rows", "sandbox", "tag_row", "timestamp",
           "user_query", "version_row"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
