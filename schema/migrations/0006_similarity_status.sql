-- tvreg catalog, migration 6: how far each base's similarities are (docs/similarity.md).
-- Past the registry's exact limit (config.json's similarity.exact_limit), an insert computes
-- a vector's statistics and sketch only: its exact pairs are *pending* until `tvreg
-- similarities` computes them in one batch pass; queries estimate them from sketches
-- meanwhile. Derived from the tables of migrations 2 and 5, nothing stored.

CREATE OR REPLACE VIEW similarity_status AS
WITH bases AS (
    SELECT base_hash, arch_fingerprint, count(*) AS n_vectors
    FROM vectors GROUP BY base_hash, arch_fingerprint
), with_stats AS (
    SELECT v.base_hash, v.arch_fingerprint, count(*) AS n
    FROM vector_stats s JOIN vectors v ON v.vector_id = s.vector_id
    GROUP BY v.base_hash, v.arch_fingerprint
), exact AS (  -- a pair stored before migration 5 (n_matrices NULL) is missing its alignment
    SELECT v.base_hash, v.arch_fingerprint, count(*) AS n
    FROM similarities p JOIN vectors v ON v.vector_id = p.vector_a
    WHERE p.n_matrices IS NOT NULL
    GROUP BY v.base_hash, v.arch_fingerprint
)
SELECT b.base_hash, b.arch_fingerprint, b.n_vectors,
       b.n_vectors - coalesce(s.n, 0) AS n_without_stats,
       b.n_vectors * (b.n_vectors - 1) // 2 AS n_pairs,
       coalesce(e.n, 0) AS n_exact_pairs,
       b.n_vectors * (b.n_vectors - 1) // 2 - coalesce(e.n, 0) AS n_pending_pairs
FROM bases b
LEFT JOIN with_stats s USING (base_hash, arch_fingerprint)
LEFT JOIN exact e USING (base_hash, arch_fingerprint);
