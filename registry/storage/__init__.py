"""Objects and documents in a store (layer L3): the content-addressed object database with its
staging, reading and claiming records and tags, and the gc lock of a local registry.
"""

from tvreg.util.lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "base_keys": "documents",
    "base_name_keys": "documents",
    "claim": "documents",
    "documents_of": "documents",
    "json_keys": "documents",
    "or_none": "documents",
    "parse_record_key": "documents",
    "read_base": "documents",
    "read_base_name": "documents",
    "read_keyed": "documents",
    "read_many": "documents",
    "read_record": "documents",
    "read_tag": "documents",
    "readable": "documents",
    "record_keys": "documents",
    "tag_keys": "documents",
    "versions_in": "documents",
    "LOCK_FILE": "gclock",
    "gc_lock": "gclock",
    "in_use": "gclock",
    "remove_unless_locked": "gclock",
    "ObjectDB": "objects",
    "PREFIX": "objects",
    "Referencer": "objects",
    "Staging": "objects",
    "object_key": "objects",
    "referencing": "objects",
}

__all__ = ["LOCK_FILE", "ObjectDB", "PREFIX", "Referencer", "Staging", "base_keys",
           "base_name_keys", "claim", "documents_of", "gc_lock", "in_use", "json_keys",
           "object_key", "or_none", "parse_record_key", "read_base", "read_base_name",
           "read_keyed", "read_many", "read_record", "read_tag", "readable",
           "record_keys", "referencing", "remove_unless_locked", "tag_keys",
           "versions_in"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
