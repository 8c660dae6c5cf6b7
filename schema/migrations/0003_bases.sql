-- tvreg catalog, migration 3: stored bases (`tvreg base add`) and their names.
-- An index over bases/BASE_HASH.json, bases/names/NAME.json and the bases' manifests
-- (docs/format.md §8.4); `tvreg reindex` rebuilds it from them.

CREATE TABLE bases (
    base_hash        VARCHAR PRIMARY KEY,   -- sha256 over the base's floating tensors (format §7)
    arch_fingerprint VARCHAR NOT NULL,      -- sha256 over the sorted (name, shape, dtype) list
    manifest_id      VARCHAR NOT NULL,      -- object id of the manifest of its tensors
    n_tensors        INTEGER NOT NULL,      -- every tensor of the checkpoint
    n_floating       INTEGER NOT NULL,      -- of those, the floating ones (the hashed ones)
    n_params         BIGINT  NOT NULL,      -- elements over all tensors
    raw_bytes        BIGINT  NOT NULL,      -- decoded size of all tensors
    stored_bytes     BIGINT  NOT NULL,      -- encoded size (sum of blob sizes, before dedup)
    codec            VARCHAR NOT NULL,      -- codec pipeline label(s), e.g. bytegroup4+zstd3,zstd3
    created_at       TIMESTAMP NOT NULL     -- UTC
);

CREATE TABLE base_names (
    name             VARCHAR PRIMARY KEY,   -- a base name (format §13 name rules)
    base_hash        VARCHAR NOT NULL,      -- the stored base it points at
    updated_at       TIMESTAMP NOT NULL     -- UTC
);
