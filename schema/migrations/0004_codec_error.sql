-- tvreg catalog, migration 4: the lossy codec a version was stored with and its reconstruction
-- error, copied from its record's recipe (docs/format.md §8.2: recipes of `create --codec` and
-- `recode`). NULL for versions without a codec in their recipe (lossless ones).

ALTER TABLE versions ADD COLUMN codec_spec VARCHAR;      -- the --codec spec, e.g. topk:density=0.1
ALTER TABLE versions ADD COLUMN rel_l2 DOUBLE;           -- ‖τ̂ − τ‖ / ‖τ‖ over the whole vector
ALTER TABLE versions ADD COLUMN cosine_to_exact DOUBLE;  -- cosine(τ̂, τ); NULL if a norm is 0

-- versions indexed before this migration (none of them can have a codec; kept for completeness)
UPDATE versions SET codec_spec = recipe->>'$.codec',
                    rel_l2 = TRY_CAST(recipe->'$.error'->>'$.rel_l2' AS DOUBLE),
                    cosine_to_exact = TRY_CAST(recipe->'$.error'->>'$.cosine' AS DOUBLE)
WHERE recipe->>'$.codec' IS NOT NULL;
