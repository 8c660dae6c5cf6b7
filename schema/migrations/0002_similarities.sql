-- tvreg catalog, migration 2: precomputed similarities between vectors of the same base.
-- Derived data: `tvreg similarities --rebuild` recomputes all of it from the stored vectors.
-- A pair is stored once, with vector_a < vector_b; the view similar_versions has both directions.
-- See docs/similarity.md for what each statistic means.

CREATE TABLE vector_stats (
    vector_id        VARCHAR PRIMARY KEY,
    base_hash        VARCHAR NOT NULL,
    arch_fingerprint VARCHAR NOT NULL,
    norm             DOUBLE  NOT NULL,      -- L2 norm of the whole vector (float64 sums)
    n_params         BIGINT  NOT NULL,
    n_material       BIGINT  NOT NULL,      -- parameters in the top 20% |value| of their tensor
    sketch           FLOAT[4096] NOT NULL,  -- CountSketch of the vector (docs/similarity.md)
    computed_at      TIMESTAMP NOT NULL     -- UTC
);

CREATE TABLE tensor_stats (
    vector_id        VARCHAR NOT NULL,
    tensor           VARCHAR NOT NULL,
    norm             DOUBLE  NOT NULL,
    threshold        DOUBLE  NOT NULL,      -- |value| at or above which a parameter is material
    n_material       BIGINT  NOT NULL,
    PRIMARY KEY (vector_id, tensor)
);

CREATE TABLE similarities (
    vector_a           VARCHAR NOT NULL,
    vector_b           VARCHAR NOT NULL,
    dot                DOUBLE  NOT NULL,    -- exact products, float64 sums
    norm_a             DOUBLE  NOT NULL,
    norm_b             DOUBLE  NOT NULL,
    cosine             DOUBLE,              -- NULL when a norm is zero
    n_both_material    BIGINT  NOT NULL,    -- parameters material in both
    n_sign_conflicts   BIGINT  NOT NULL,    -- of those, with opposite signs
    sign_conflict_rate DOUBLE,              -- n_sign_conflicts / n_both_material; NULL if 0/0
    computed_at        TIMESTAMP NOT NULL,  -- UTC
    PRIMARY KEY (vector_a, vector_b),
    CHECK (vector_a < vector_b)
);

CREATE TABLE tensor_similarities (
    vector_a           VARCHAR NOT NULL,
    vector_b           VARCHAR NOT NULL,
    tensor             VARCHAR NOT NULL,
    dot                DOUBLE  NOT NULL,
    cosine             DOUBLE,
    n_both_material    BIGINT  NOT NULL,
    n_sign_conflicts   BIGINT  NOT NULL,
    sign_conflict_rate DOUBLE,
    PRIMARY KEY (vector_a, vector_b, tensor),
    CHECK (vector_a < vector_b)
);

-- every pair of versions whose vectors have a stored similarity, in both directions
CREATE VIEW similar_versions AS
WITH pairs AS (
    SELECT vector_a AS vector_id, vector_b AS other_vector_id, cosine, sign_conflict_rate, dot
    FROM similarities
    UNION ALL
    SELECT vector_b, vector_a, cosine, sign_conflict_rate, dot FROM similarities
)
SELECT a.name, a.version, b.name AS other_name, b.version AS other_version,
       p.cosine, p.sign_conflict_rate, p.dot, p.vector_id, p.other_vector_id
FROM pairs p
JOIN versions a ON a.vector_id = p.vector_id
JOIN versions b ON b.vector_id = p.other_vector_id;
