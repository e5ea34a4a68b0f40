-- +goose Up
CREATE TABLE sync_cursors (
    source             text PRIMARY KEY,
    cursor             text NOT NULL DEFAULT '',
    run_started_at     timestamptz,
    run_pages          integer NOT NULL DEFAULT 0,
    run_rows           bigint NOT NULL DEFAULT 0,
    last_run_at        timestamptz,
    last_completed_at  timestamptz,
    caught_up_to       timestamptz,
    last_error         text,
    last_error_at      timestamptz,
    pages              bigint NOT NULL DEFAULT 0,
    rows_applied       bigint NOT NULL DEFAULT 0,
    rows_unchanged     bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sync_cursors_source_format CHECK (source ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    CONSTRAINT sync_cursors_counts_nonnegative CHECK (run_pages >= 0 AND run_rows >= 0 AND pages >= 0 AND rows_applied >= 0 AND rows_unchanged >= 0)
);

COMMENT ON TABLE sync_cursors IS 'One row per data source: where the sync stands. A sync page locks this row, reads the next page from the source after cursor, upserts it into data_records and moves cursor, all in one transaction.';
COMMENT ON COLUMN sync_cursors.cursor IS 'Position in the source''s change order, opaque to the runner (for a PostgreSQL source: the transaction-id horizon, the snapshot of the sync in progress and the last row read). Empty: from the beginning.';
COMMENT ON COLUMN sync_cursors.run_started_at IS 'When the sync in progress read its first page; NULL when none is in progress.';
COMMENT ON COLUMN sync_cursors.caught_up_to IS 'Source time up to which every committed change is applied: the time of the snapshot the last completed sync read. now() - caught_up_to is the sync lag.';
COMMENT ON COLUMN sync_cursors.last_error IS 'Error of the last failed page (bad source data, source unreachable); the cursor did not move and nothing of that page was written.';
COMMENT ON COLUMN sync_cursors.rows_unchanged IS 'Rows read whose version was not newer than the stored one (already applied, or delivered out of order): left as they were.';

CREATE TABLE data_records (
    source     text NOT NULL,
    record_id  text NOT NULL,
    data       jsonb NOT NULL,
    version    bigint NOT NULL,
    synced_at  timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, record_id),
    CONSTRAINT data_records_record_id_nonempty CHECK (record_id <> ''),
    CONSTRAINT data_records_version_positive CHECK (version >= 1)
);

COMMENT ON TABLE data_records IS 'Records synced from data sources, one row per (source, record id). An upsert only replaces a row with a strictly newer version: a late or out-of-order delivery of an older version changes nothing.';
COMMENT ON COLUMN data_records.version IS 'The source''s version of the record, increasing with every change of that record.';
COMMENT ON COLUMN data_records.synced_at IS 'When this version was written here.';

-- +goose Down
DROP TABLE data_records;
DROP TABLE sync_cursors;
