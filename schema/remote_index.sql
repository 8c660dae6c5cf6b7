-- tvreg remote index: the tables `tvreg push` writes to a remote as Parquet files
-- (index/versions.parquet, index/tags.parquet; docs/format.md §9), so that `tvreg ls --remote`
-- and `tvreg sql --remote` answer without pulling. Same columns as the catalog's tables of the
-- same names (migrations/0001_core.sql and 0004_codec_error.sql; tests/test_remote_index_schema.py
-- keeps them equal); the index is derived data: records and tags are the truth.
-- versions.parquet holds the columns up to `recipe`; the last three, derived from `recipe` by the
-- function the catalog uses (tvreg.catalog.db.codec_values), are filled in when it is loaded.

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
    meta             JSON    NOT NULL,
    n_params         BIGINT  NOT NULL,
    raw_bytes        BIGINT  NOT NULL,
    stored_bytes     BIGINT  NOT NULL,
    codec            VARCHAR NOT NULL,
    created_at       TIMESTAMP NOT NULL,
    parents          JSON    NOT NULL,
    recipe           JSON,
    codec_spec       VARCHAR,   -- derived from recipe on load (not in versions.parquet)
    rel_l2           DOUBLE,
    cosine_to_exact  DOUBLE,
    PRIMARY KEY (name, version)
);

CREATE TABLE tags (
    name             VARCHAR NOT NULL,
    tag              VARCHAR NOT NULL,
    version          INTEGER NOT NULL,
    vector_id        VARCHAR NOT NULL,
    updated_at       TIMESTAMP NOT NULL,
    PRIMARY KEY (name, tag)
);
