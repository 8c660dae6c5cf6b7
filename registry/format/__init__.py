"""The on-disk documents as values, with no I/O (layer L2): manifests, version and tag records, base
records and base names; each parses and checks its canonical JSON (docs/format.md §6–§8).
"""

from tvreg.util.lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "BaseName": "bases",
    "BaseRecord": "bases",
    "MIN_HASH_PREFIX": "bases",
    "base_key": "bases",
    "base_name_key": "bases",
    "Chunk": "manifest",
    "FORMAT": "manifest",
    "MAX_SIZE": "manifest",
    "Manifest": "manifest",
    "SkippedTensor": "manifest",
    "TensorEntry": "manifest",
    "Metadata": "records",
    "TagRecord": "records",
    "VersionRecord": "records",
    "check_meta": "records",
    "parse_meta_value": "records",
    "record_key": "records",
    "seal": "records",
    "tag_key": "records",
    "unseal": "records",
    "utc_now": "records",
}

__all__ = ["BaseName", "BaseRecord", "Chunk", "FORMAT", "MAX_SIZE", "MIN_HASH_PREFIX",
           "Manifest", "Metadata", "SkippedTensor", "TagRecord", "TensorEntry",
           "VersionRecord", "base_key", "base_name_key", "check_meta",
           "parse_meta_value", "record_key", "seal", "tag_key", "unseal", "utc_now"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
