package datasync

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrUnknownSource is returned for a source name without a cursor row.
var ErrUnknownSource = errors.New("datasync: no such source")

// Querier reads: a pgx.Tx, *pgxpool.Pool or *pgxpool.Conn.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Cursor is a sync_cursors row: where the sync of a source stands.
type Cursor struct {
	Source          string     `json:"source"`
	Cursor          string     `json:"cursor"`
	RunStartedAt    *time.Time `json:"run_started_at"`
	RunPages        int        `json:"run_pages"`
	RunRows         int64      `json:"run_rows"`
	LastRunAt       *time.Time `json:"last_run_at"`
	LastCompletedAt *time.Time `json:"last_completed_at"`
	CaughtUpTo      *time.Time `json:"caught_up_to"`
	LastError       *string    `json:"last_error"`
	LastErrorAt     *time.Time `json:"last_error_at"`
	Pages           int64      `json:"pages"`
	RowsApplied     int64      `json:"rows_applied"`
	RowsUnchanged   int64      `json:"rows_unchanged"`
	UpdatedAt       time.Time  `json:"updated_at"`
}

const cursorColumns = `source, cursor, run_started_at, run_pages, run_rows, last_run_at, last_completed_at, caught_up_to,
	last_error, last_error_at, pages, rows_applied, rows_unchanged, updated_at`

func scanCursor(row pgx.Row) (*Cursor, error) {
	var c Cursor
	err := row.Scan(&c.Source, &c.Cursor, &c.RunStartedAt, &c.RunPages, &c.RunRows, &c.LastRunAt, &c.LastCompletedAt,
		&c.CaughtUpTo, &c.LastError, &c.LastErrorAt, &c.Pages, &c.RowsApplied, &c.RowsUnchanged, &c.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrUnknownSource
	}
	return &c, err
}

// LockCursor returns the source's cursor locked FOR UPDATE in tx, creating
// it at the beginning if it is new: syncs of one source take turns page by
// page, whatever jobs run them.
func LockCursor(ctx context.Context, tx pgx.Tx, source string) (*Cursor, error) {
	if !ValidName(source) {
		return nil, fmt.Errorf("datasync: invalid source name %q", source)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO sync_cursors (source) VALUES ($1) ON CONFLICT DO NOTHING`, source); err != nil {
		return nil, fmt.Errorf("creating sync cursor: %w", err)
	}
	c, err := scanCursor(tx.QueryRow(ctx, `SELECT `+cursorColumns+` FROM sync_cursors WHERE source = $1 FOR UPDATE`, source))
	if err != nil {
		return nil, fmt.Errorf("locking sync cursor: %w", err)
	}
	return c, nil
}

// Status returns the source's cursor, or ErrUnknownSource.
func Status(ctx context.Context, q Querier, source string) (*Cursor, error) {
	return scanCursor(q.QueryRow(ctx, `SELECT `+cursorColumns+` FROM sync_cursors WHERE source = $1`, source))
}

// Apply upserts changes into data_records in tx, replacing a stored record
// only with a strictly newer version. It returns how many rows it wrote and
// how many it left unchanged (not newer: applied before, or delivered out of
// order). Within one page the newest version of each record wins.
func Apply(ctx context.Context, tx pgx.Tx, source string, changes []Change) (applied, unchanged int64, err error) {
	if len(changes) == 0 {
		return 0, 0, nil
	}
	newest := make(map[string]int, len(changes))
	var ids, data []string
	var versions []int64
	for _, c := range changes {
		if i, seen := newest[c.ID]; seen {
			if c.Version > versions[i] {
				versions[i], data[i] = c.Version, string(c.Data)
			}
			continue
		}
		newest[c.ID] = len(ids)
		ids, versions, data = append(ids, c.ID), append(versions, c.Version), append(data, string(c.Data))
	}
	err = tx.QueryRow(ctx, `
		WITH up AS (
			INSERT INTO data_records AS d (source, record_id, version, data)
			SELECT $1, u.record_id, u.version, u.data::jsonb
			FROM unnest($2::text[], $3::bigint[], $4::text[]) AS u(record_id, version, data)
			ON CONFLICT (source, record_id) DO UPDATE
				SET data = EXCLUDED.data, version = EXCLUDED.version, synced_at = now()
				WHERE d.version < EXCLUDED.version
			RETURNING 1)
		SELECT count(*) FROM up`, source, ids, versions, data).Scan(&applied)
	if err != nil {
		return 0, 0, fmt.Errorf("upserting data records: %w", err)
	}
	return applied, int64(len(changes)) - applied, nil
}

// Advance moves the source's cursor past page in tx, counting what the page
// did. On the last page of a sync it records the completion and the time the
// destination is caught up to.
func Advance(ctx context.Context, tx pgx.Tx, source string, page *Page, applied, unchanged int64) error {
	var asOf *time.Time
	if !page.AsOf.IsZero() {
		asOf = &page.AsOf
	}
	_, err := tx.Exec(ctx, `
		UPDATE sync_cursors SET
			cursor = $2,
			run_started_at = CASE WHEN $3 THEN coalesce(run_started_at, now()) END,
			run_pages = CASE WHEN $3 THEN run_pages + 1 ELSE 0 END,
			run_rows = CASE WHEN $3 THEN run_rows + $4 + $5 ELSE 0 END,
			last_run_at = now(),
			last_completed_at = CASE WHEN $3 THEN last_completed_at ELSE now() END,
			caught_up_to = CASE WHEN $3 THEN caught_up_to ELSE coalesce($6, now()) END,
			last_error = NULL,
			last_error_at = NULL,
			pages = pages + 1,
			rows_applied = rows_applied + $4,
			rows_unchanged = rows_unchanged + $5,
			updated_at = now()
		WHERE source = $1`, source, page.Next, page.More, applied, unchanged, asOf)
	if err != nil {
		return fmt.Errorf("advancing sync cursor: %w", err)
	}
	return nil
}

// RecordError records a failed page in tx; the cursor does not move.
func RecordError(ctx context.Context, tx pgx.Tx, source string, cause error) error {
	_, err := tx.Exec(ctx, `
		UPDATE sync_cursors SET last_error = $2, last_error_at = now(), last_run_at = now(), updated_at = now()
		WHERE source = $1`, source, cause.Error())
	if err != nil {
		return fmt.Errorf("recording sync error: %w", err)
	}
	return nil
}

// Reset sends the source's cursor back to the beginning in tx: the next sync
// reads everything again (the upserts leave unchanged records as they are).
func Reset(ctx context.Context, tx pgx.Tx, source string) error {
	if _, err := LockCursor(ctx, tx, source); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `
		UPDATE sync_cursors SET cursor = '', run_started_at = NULL, run_pages = 0, run_rows = 0, updated_at = now()
		WHERE source = $1`, source)
	return err
}
