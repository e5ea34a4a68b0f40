package datasync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresSource reads the changes of a table in any PostgreSQL database.
//
// Visibility: a change committed late is never skipped, because the cursor
// is not a timestamp but a transaction-id snapshot. Every row carries the id
// of the transaction that last wrote it (_xid xid8, set by a trigger; see
// TrackingSQL). A sync takes a snapshot S of the source (pg_current_snapshot)
// and reads, in (_xid, id) order, the rows whose _xid is visible in S and was
// not visible in the snapshot P of the previous sync: exactly the changes
// committed between P and S. A transaction still open when S was taken,
// however early it took its timestamps, is not visible in S, and is visible
// in the next sync's snapshot once committed: that sync reads it. Each
// committed change is read once, by the first sync whose snapshot sees it.
//
// This needs no clock and no privilege to see other sessions, unlike a lag
// window behind pg_stat_activity's oldest transaction, and it stays exact
// when the application writes its own timestamps. Its cost: rows are found
// through an index on _xid from xmin(P), the oldest transaction running at
// P, so a transaction that keeps writing for hours makes each sync scan
// (not read) every row written since it began.
//
// The order within a page is (_xid, id), so rows sharing a transaction (and
// a timestamp) are paged through without loss or repetition. Deletions are
// not seen: use a soft delete (an update) for records that must disappear.
type PostgresSource struct {
	pool  *pgxpool.Pool
	table string // sanitised, possibly schema-qualified
	owned bool

	mu     sync.Mutex
	idType string // the id column's type, e.g. bigint or text; "" until known
}

var identPart = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

func sanitizeTable(table string) (string, error) {
	parts := strings.Split(table, ".")
	if len(parts) > 2 {
		return "", fmt.Errorf("datasync: table %q: want table or schema.table", table)
	}
	for _, p := range parts {
		if !identPart.MatchString(p) {
			return "", fmt.Errorf("datasync: table %q: %q is not a plain identifier", table, p)
		}
	}
	return pgx.Identifier(parts).Sanitize(), nil
}

// NewPostgresSource reads table (with an id column, and the tracking columns
// of TrackingSQL) through pool.
func NewPostgresSource(pool *pgxpool.Pool, table string) (*PostgresSource, error) {
	t, err := sanitizeTable(table)
	if err != nil {
		return nil, err
	}
	return &PostgresSource{pool: pool, table: t}, nil
}

// OpenPostgresSource connects to dsn (any database) and reads table there.
// Close releases the connection pool.
func OpenPostgresSource(ctx context.Context, dsn, table string) (*PostgresSource, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("datasync: source DSN: %w", err)
	}
	cfg.MaxConns = 4
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("datasync: connecting to the source: %w", err)
	}
	s, err := NewPostgresSource(pool, table)
	if err != nil {
		pool.Close()
		return nil, err
	}
	s.owned = true
	return s, nil
}

// Close closes the pool when the source opened it.
func (s *PostgresSource) Close() {
	if s.owned {
		s.pool.Close()
	}
}

// TrackingSQL returns the statements that make table a source: an _xid
// column (the writing transaction's id) and a version column, kept by a
// trigger, and an index for the cursor. Versions come from a sequence of the
// table's own (<table>_pgonce_version_seq), so a row's version grows with
// every write to it, also across a DELETE and a new INSERT of the same id:
// the destination never keeps an older version in place of a newer one.
// Running it again on a table set up before upgrades it.
func TrackingSQL(table string) (string, error) {
	t, err := sanitizeTable(table)
	if err != nil {
		return "", err
	}
	parts := strings.Split(table, ".")
	base := strings.Join(parts, "_")
	seqParts := append(parts[:len(parts)-1:len(parts)-1], parts[len(parts)-1]+"_pgonce_version_seq")
	seq := pgx.Identifier(seqParts).Sanitize()
	return fmt.Sprintf(`
ALTER TABLE %[1]s
    ADD COLUMN IF NOT EXISTS _xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 1;
CREATE SEQUENCE IF NOT EXISTS %[3]s;
-- Above every version the table holds already (a table set up before).
SELECT setval('%[3]s', greatest((SELECT max(version) FROM %[1]s), (SELECT last_value FROM %[3]s), 1));
CREATE OR REPLACE FUNCTION pgonce_track_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW._xid := pg_current_xact_id();
    IF TG_NARGS > 0 THEN
        NEW.version := nextval(TG_ARGV[0]::regclass);
        IF TG_OP = 'UPDATE' AND NEW.version <= OLD.version THEN
            NEW.version := OLD.version + 1;
        END IF;
    ELSIF TG_OP = 'UPDATE' THEN
        NEW.version := OLD.version + 1;
    ELSE
        NEW.version := 1;
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS pgonce_track_change ON %[1]s;
CREATE TRIGGER pgonce_track_change BEFORE INSERT OR UPDATE ON %[1]s
    FOR EACH ROW EXECUTE FUNCTION pgonce_track_change('%[3]s');
CREATE INDEX IF NOT EXISTS %[2]s ON %[1]s (_xid, id);
`, t, pgx.Identifier{base + "_pgonce_xid_idx"}.Sanitize(), seq), nil
}

type pgCursor struct {
	// Prev is the snapshot the last completed sync read ("" before the first).
	Prev string `json:"prev,omitempty"`
	// Snapshot is the snapshot of the sync in progress.
	Snapshot string    `json:"snapshot,omitempty"`
	AsOf     time.Time `json:"as_of,omitzero"`
	AfterXID string    `json:"after_xid,omitempty"`
	AfterID  string    `json:"after_id,omitempty"`
}

// idColumnType looks up the type of the id column once, so that the page
// query compares ids in their own type and an index on (_xid, id) serves
// the keyset.
func (s *PostgresSource) idColumnType(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.idType != "" {
		return s.idType, nil
	}
	err := s.pool.QueryRow(ctx, `
		SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
		WHERE a.attrelid = $1::regclass AND a.attname = 'id' AND NOT a.attisdropped`, s.table).Scan(&s.idType)
	if err != nil {
		// Not remembered: the table may be created or fixed later.
		return "", fmt.Errorf("datasync: source table %s needs an id column: %w", s.table, err)
	}
	return s.idType, nil
}

// Changes implements Source.
func (s *PostgresSource) Changes(ctx context.Context, cursor string, limit int) (*Page, error) {
	idType, err := s.idColumnType(ctx)
	if err != nil {
		return nil, err
	}
	var cur pgCursor
	if cursor != "" {
		if err := json.Unmarshal([]byte(cursor), &cur); err != nil || (cur.Prev == "" && cur.Snapshot == "") {
			return nil, fmt.Errorf("datasync: cursor %q is not a PostgreSQL source cursor", cursor)
		}
	}
	if cur.Snapshot == "" {
		err = s.pool.QueryRow(ctx, `SELECT pg_current_snapshot()::text, clock_timestamp()`).Scan(&cur.Snapshot, &cur.AsOf)
		if err != nil {
			return nil, fmt.Errorf("datasync: taking a snapshot of the source: %w", err)
		}
		cur.AfterXID, cur.AfterID = "", ""
	}
	var prev, afterXID, afterID *string
	if cur.Prev != "" {
		prev = &cur.Prev
	}
	if cur.AfterXID != "" {
		afterXID, afterID = &cur.AfterXID, &cur.AfterID
	}
	rows, err := s.pool.Query(ctx, `
		SELECT t._xid::text, t.id::text, t.version, to_jsonb(t) - '_xid' - 'version'
		FROM `+s.table+` t
		WHERE ($1::pg_snapshot IS NULL
		       OR (t._xid >= pg_snapshot_xmin($1::pg_snapshot) AND NOT pg_visible_in_snapshot(t._xid, $1::pg_snapshot)))
		  AND pg_visible_in_snapshot(t._xid, $2::pg_snapshot)
		  AND ($3::text IS NULL OR (t._xid, t.id) > ($3::xid8, $4::text::`+idType+`))
		ORDER BY t._xid, t.id
		LIMIT $5`, prev, cur.Snapshot, afterXID, afterID, limit)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "42703" || pgErr.Code == "42P01") {
			return nil, fmt.Errorf("datasync: source table %s is not set up (run TrackingSQL): %w", s.table, err)
		}
		return nil, fmt.Errorf("datasync: reading the source: %w", err)
	}
	defer rows.Close()
	page := &Page{}
	var lastXID string
	for rows.Next() {
		var c Change
		var data []byte
		if err := rows.Scan(&lastXID, &c.ID, &c.Version, &data); err != nil {
			return nil, fmt.Errorf("datasync: reading the source: %w", err)
		}
		c.Data = data
		page.Changes = append(page.Changes, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("datasync: reading the source: %w", err)
	}

	next := cur
	if len(page.Changes) < limit {
		// Everything this snapshot sees is read: it is the next sync's P.
		next = pgCursor{Prev: cur.Snapshot}
		page.AsOf = cur.AsOf
	} else {
		next.AfterXID, next.AfterID = lastXID, page.Changes[len(page.Changes)-1].ID
		page.More = true
	}
	b, err := json.Marshal(next)
	if err != nil {
		return nil, err
	}
	page.Next = string(b)
	return page, nil
}

// Backlog counts the rows a sync from cursor still has to read, as of now.
func (s *PostgresSource) Backlog(ctx context.Context, cursor string) (int64, error) {
	var cur pgCursor
	if cursor != "" {
		if err := json.Unmarshal([]byte(cursor), &cur); err != nil {
			return 0, err
		}
	}
	var prev *string
	if cur.Prev != "" {
		prev = &cur.Prev
	}
	var n int64
	err := s.pool.QueryRow(ctx, `
		SELECT count(*) FROM `+s.table+` t
		WHERE $1::pg_snapshot IS NULL
		   OR (t._xid >= pg_snapshot_xmin($1::pg_snapshot) AND NOT pg_visible_in_snapshot(t._xid, $1::pg_snapshot))`, prev).Scan(&n)
	return n, err
}
