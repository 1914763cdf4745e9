-- tests/load/compression.sql - what the draft column's compression costs
-- PostgreSQL per write and per read, on tenantq-load's draft (4 pages x 5
-- sections, ~6.5 KB as text; workload.c), without the rest of a request.
-- docs/benchmarks.md ("Storage mapping") uses it to split the W2 difference
-- between the Prisma-shaped table (jsonb columns left at PostgreSQL's
-- default_toast_compression, pglz) and tenantq's own table (lz4, which
-- --init-db sets).
--
--   psql -X -q -d SCRATCH_DB -f tests/load/compression.sql
--
-- Temporary tables (no WAL, no fsync): only compression and the jsonb
-- conversions differ between the two.  Each pass writes every row's draft
-- once with a new "rev" (the UPDATE tenantq sends: parse $2::jsonb,
-- compress, write the row) and reads it once as text (the SELECT's
-- draft::text: decompress, print).  Three passes of each, alternating;
-- EXPLAIN ANALYZE prints each statement's time for N_ROWS rows; w_none is
-- the same UPDATE without a new draft (the row rewritten, its draft datum
-- kept as is), so w_* minus w_none is parsing and compressing the draft.
\set n_rows 10000
\set passes 3
SET client_min_messages = warning;
DROP TABLE IF EXISTS tq_c_pglz, tq_c_lz4;
CREATE TEMP TABLE tq_c_pglz (id text PRIMARY KEY, draft jsonb COMPRESSION pglz, version int);
CREATE TEMP TABLE tq_c_lz4 (id text PRIMARY KEY, draft jsonb COMPRESSION lz4, version int);
CREATE TEMP TABLE tq_c_draft AS
SELECT jsonb_build_object('pages', (
    SELECT jsonb_object_agg('page' || p, jsonb_build_object('sections', (
        SELECT jsonb_agg(jsonb_build_object(
            'type', 'text',
            'headline', 'Spring collection: light layers for long evenings',
            'body', 'Linen shirts, cotton knits and easy trousers in warm neutrals. Free returns '
                    'within thirty days, delivery in two to four working days.',
            'style', jsonb_build_object('align', 'left', 'theme', 'light', 'columns', 2),
            'rev', 'seed', 'id', 'page' || p || '-s' || s) ORDER BY s)
        FROM generate_series(0, 4) AS s)))
    FROM generate_series(0, 3) AS p))::text AS draft;
-- (from text, each: a copied datum would keep the other table's compression)
INSERT INTO tq_c_pglz SELECT 'load-t' || lpad(g::text, 6, '0'), d.draft::jsonb, 1
    FROM generate_series(0, :n_rows - 1) AS g, tq_c_draft AS d;
INSERT INTO tq_c_lz4 SELECT 'load-t' || lpad(g::text, 6, '0'), d.draft::jsonb, 1
    FROM generate_series(0, :n_rows - 1) AS g, tq_c_draft AS d;
VACUUM ANALYZE tq_c_pglz, tq_c_lz4;
SELECT 'stored' AS what, avg(pg_column_size(draft))::int AS bytes,
       avg(octet_length(draft::text))::int AS text_bytes,
       min(pg_column_compression(draft)) AS method FROM tq_c_pglz
UNION ALL
SELECT 'stored', avg(pg_column_size(draft))::int, avg(octet_length(draft::text))::int,
       min(pg_column_compression(draft)) FROM tq_c_lz4;
-- one write: the draft as text in, a new rev so that every row differs
PREPARE w_pglz(int) AS UPDATE tq_c_pglz
    SET draft = replace(d.draft, '"rev": "seed"', '"rev": "p' || $1 || '-' || id || '"')::jsonb,
        version = version + 1
    FROM tq_c_draft AS d;
PREPARE w_lz4(int) AS UPDATE tq_c_lz4
    SET draft = replace(d.draft, '"rev": "seed"', '"rev": "p' || $1 || '-' || id || '"')::jsonb,
        version = version + 1
    FROM tq_c_draft AS d;
PREPARE r_pglz AS SELECT sum(octet_length(draft::text)) FROM tq_c_pglz;
PREPARE r_lz4 AS SELECT sum(octet_length(draft::text)) FROM tq_c_lz4;
-- a baseline without compression: the same UPDATE writing only the version
PREPARE w_none AS UPDATE tq_c_lz4 SET version = version + 1 FROM tq_c_draft AS d;
SELECT format('EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON, COSTS OFF) EXECUTE %s%s', s, a)
    FROM generate_series(1, :passes) AS pass,
         LATERAL (VALUES ('w_pglz', '(' || pass || ')'), ('w_lz4', '(' || pass || ')'),
                         ('w_none', ''), ('r_pglz', ''), ('r_lz4', '')) AS v(s, a) \gexec
