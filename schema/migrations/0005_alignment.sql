-- tvreg catalog, migration 5: the subspace alignment of a pair's matrices beside its cosine
-- (docs/similarity.md: Marczak et al., ICML 2025, the share of one matrix's Frobenius norm in the
-- other's top singular subspace holding 0.95 of its own, symmetrised; in [0, 1]).
-- Derived data like the rest of migration 2. Pairs stored before this migration have
-- n_matrices NULL: `tvreg similarities` (or the next create into their base) computes them again,
-- cosine and alignment in one pass; `tvreg similarities --rebuild` recomputes everything.

ALTER TABLE similarities ADD COLUMN alignment DOUBLE;         -- NULL: no matrix, or a side all zero
ALTER TABLE similarities ADD COLUMN n_matrices INTEGER;       -- 2-D tensors compared; NULL: not yet
ALTER TABLE tensor_similarities ADD COLUMN alignment DOUBLE;  -- NULL: not 2-D, or a side all zero

CREATE OR REPLACE VIEW similar_versions AS
WITH pairs AS (
    SELECT vector_a AS vector_id, vector_b AS other_vector_id, cosine, sign_conflict_rate,
           alignment, dot
    FROM similarities
    UNION ALL
    SELECT vector_b, vector_a, cosine, sign_conflict_rate, alignment, dot FROM similarities
)
SELECT a.name, a.version, b.name AS other_name, b.version AS other_version,
       p.cosine, p.sign_conflict_rate, p.dot, p.vector_id, p.other_vector_id, p.alignment
FROM pairs p
JOIN versions a ON a.vector_id = p.vector_id
JOIN versions b ON b.vector_id = p.other_vector_id;
