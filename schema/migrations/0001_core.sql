-- tvreg catalog, migration 1: the core index of vectors, versions, tensors and tags.
-- The catalog is an index over the object store (docs/format.md); `tvreg reindex` rebuilds it.
-- Times are UTC. Ids and hashes are lowercase hex sha256.

CREATE TABLE vectors (
    vector_id        VARCHAR PRIMARY KEY,   -- sha256 of the manifest's canonical bytes
    base_hash        VARCHAR NOT NULL,      -- sha256 over the base model's floating tensors
    arch_fingerprint VARCHAR NOT NULL,      -- sha256 over the sorted (name, shape, dtype) list
    n_tensors        INTEGER NOT NULL,      -- stored (floating) tensors
    n_skipped        INTEGER NOT NULL,      -- non-floating tensors left out
    n_params         BIGINT  NOT NULL,      -- elements over all stored tensors
    raw_bytes        BIGINT  NOT NULL,      -- decoded size of all stored tensors
    stored_bytes     BIGINT  NOT NULL,      -- encoded size (sum of blob sizes, before dedup)
    codec            VARCHAR NOT NULL,      -- codec pipeline label(s), e.g. bytegroup4+zstd3
    skipped          JSON    NOT NULL       -- names of the tensors left out
);

CREATE TABLE versions (
    name             VARCHAR NOT NULL,
    version          INTEGER NOT NULL,
    vector_id        VARCHAR NOT NULL,
    base_hash        VARCHAR NOT NULL,
    arch_fingerprint VARCHAR NOT NULL,
    task             VARCHAR,
    dataset          VARCHAR,
    lr               DOUBLE,
    steps            BIGINT,
    meta             JSON    NOT NULL,      -- free key/values given with --meta
    n_params         BIGINT  NOT NULL,
    raw_bytes        BIGINT  NOT NULL,
    stored_bytes     BIGINT  NOT NULL,
    codec            VARCHAR NOT NULL,
    created_at       TIMESTAMP NOT NULL,    -- UTC
    parents          JSON    NOT NULL,      -- vector ids this version was composed from
    recipe           JSON,                  -- how it was composed (NULL for created vectors)
    PRIMARY KEY (name, version)
);

CREATE TABLE tensors (
    vector_id        VARCHAR NOT NULL,
    name             VARCHAR NOT NULL,
    dtype            VARCHAR NOT NULL,      -- dtype of the stored delta
    source_dtype     VARCHAR NOT NULL,      -- dtype in the checkpoints
    shape            BIGINT[] NOT NULL,
    numel            BIGINT  NOT NULL,
    raw_bytes        BIGINT  NOT NULL,
    stored_bytes     BIGINT  NOT NULL,
    n_chunks         INTEGER NOT NULL,
    codec            VARCHAR NOT NULL,
    sha256           VARCHAR NOT NULL,      -- of the decoded bytes
    PRIMARY KEY (vector_id, name)
);

CREATE TABLE tags (
    name             VARCHAR NOT NULL,
    tag              VARCHAR NOT NULL,
    version          INTEGER NOT NULL,
    vector_id        VARCHAR NOT NULL,
    updated_at       TIMESTAMP NOT NULL,    -- UTC
    PRIMARY KEY (name, tag)
);

-- the newest version of every name
CREATE VIEW latest AS
SELECT * FROM versions
QUALIFY row_number() OVER (PARTITION BY name ORDER BY version DESC) = 1;
