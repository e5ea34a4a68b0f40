package datasync_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

// newSourceDB makes another database holding a tracked items table.
func newSourceDB(t *testing.T) *testdb.DB {
	t.Helper()
	src := testdb.New(t, &testdb.Opts{Empty: true})
	ddl, err := datasync.TrackingSQL("items")
	require.NoError(t, err)
	_, err = src.Pool.Exec(context.Background(), `CREATE TABLE items (id text PRIMARY KEY, name text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());`+ddl)
	require.NoError(t, err)
	return src
}

// syncAll runs one sync to its end, page by page, each page in one
// transaction, and returns the pages and rows read.
func syncAll(t *testing.T, dest *pgxpool.Pool, name string, src datasync.Source, size int) (pages int, rows int) {
	t.Helper()
	ctx := context.Background()
	for {
		var more bool
		err := pgx.BeginFunc(ctx, dest, func(tx pgx.Tx) error {
			cur, err := datasync.LockCursor(ctx, tx, name)
			if err != nil {
				return err
			}
			page, err := src.Changes(ctx, cur.Cursor, size)
			if err != nil {
				return err
			}
			applied, unchanged, err := datasync.Apply(ctx, tx, name, page.Changes)
			if err != nil {
				return err
			}
			rows += len(page.Changes)
			more = page.More
			return datasync.Advance(ctx, tx, name, page, applied, unchanged)
		})
		require.NoError(t, err)
		pages++
		if !more {
			return pages, rows
		}
	}
}

// requireEqual compares the source table with the synced records row by row.
func requireEqual(t *testing.T, src, dest *pgxpool.Pool, name string) {
	t.Helper()
	ctx := context.Background()
	want := map[string]string{}
	rows, err := src.Query(ctx, `SELECT id, version, name FROM items`)
	require.NoError(t, err)
	for rows.Next() {
		var id, n string
		var v int64
		require.NoError(t, rows.Scan(&id, &v, &n))
		want[id] = fmt.Sprintf("%d/%s", v, n)
	}
	require.NoError(t, rows.Err())
	got := map[string]string{}
	rows, err = dest.Query(ctx, `SELECT record_id, version, data->>'name' FROM data_records WHERE source = $1`, name)
	require.NoError(t, err)
	for rows.Next() {
		var id, n string
		var v int64
		require.NoError(t, rows.Scan(&id, &v, &n))
		got[id] = fmt.Sprintf("%d/%s", v, n)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, want, got)
}

func status(t *testing.T, dest *pgxpool.Pool, name string) *datasync.Cursor {
	t.Helper()
	c, err := datasync.Status(context.Background(), dest, name)
	require.NoError(t, err)
	return c
}

// A writer transaction takes its timestamp, stays open across a sync, then
// commits: its row arrives with the next sync.
func TestPostgresSource_LateCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srcDB, dest := newSourceDB(t), testdb.New(t, nil)
	src, err := datasync.NewPostgresSource(srcDB.Pool, "items")
	require.NoError(t, err)

	late, err := srcDB.Pool.Begin(ctx)
	require.NoError(t, err)
	defer late.Rollback(ctx) //nolint:errcheck
	_, err = late.Exec(ctx, `INSERT INTO items (id, name) VALUES ('late', 'written first, committed last')`)
	require.NoError(t, err)
	_, err = srcDB.Pool.Exec(ctx, `INSERT INTO items (id, name) VALUES ('a', 'on time'), ('b', 'on time')`)
	require.NoError(t, err)

	syncAll(t, dest.Pool, "items", src, 10)
	var n int
	require.NoError(t, dest.Pool.QueryRow(ctx, `SELECT count(*) FROM data_records`).Scan(&n))
	require.Equal(t, 2, n, "the open transaction's row is not visible yet")

	require.NoError(t, late.Commit(ctx))
	syncAll(t, dest.Pool, "items", src, 10)
	requireEqual(t, srcDB.Pool, dest.Pool, "items")
	c := status(t, dest.Pool, "items")
	require.NotNil(t, c.CaughtUpTo)
	require.Nil(t, c.RunStartedAt)
}

// 1,000 rows written in one transaction (one timestamp, one transaction id)
// paged 100 at a time: all applied, none twice.
func TestPostgresSource_SameTimestampAcrossPages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srcDB, dest := newSourceDB(t), testdb.New(t, nil)
	_, err := srcDB.Pool.Exec(ctx, `INSERT INTO items (id, name) SELECT 'r' || g, 'n' || g FROM generate_series(1, 1000) g`)
	require.NoError(t, err)
	var timestamps int
	require.NoError(t, srcDB.Pool.QueryRow(ctx, `SELECT count(DISTINCT updated_at) FROM items`).Scan(&timestamps))
	require.Equal(t, 1, timestamps)

	src, err := datasync.NewPostgresSource(srcDB.Pool, "items")
	require.NoError(t, err)
	pages, rows := syncAll(t, dest.Pool, "items", src, 100)
	require.Equal(t, 1000, rows, "every row read exactly once")
	require.Equal(t, 11, pages)
	requireEqual(t, srcDB.Pool, dest.Pool, "items")
	c := status(t, dest.Pool, "items")
	require.EqualValues(t, 1000, c.RowsApplied)
	require.Zero(t, c.RowsUnchanged)

	// Nothing new: the next sync reads nothing.
	_, rows = syncAll(t, dest.Pool, "items", src, 100)
	require.Zero(t, rows)
}

// Updates reach the destination as newer versions; rows untouched since are
// not read again.
func TestPostgresSource_Updates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srcDB, dest := newSourceDB(t), testdb.New(t, nil)
	src, err := datasync.NewPostgresSource(srcDB.Pool, "items")
	require.NoError(t, err)
	_, err = srcDB.Pool.Exec(ctx, `INSERT INTO items (id, name) SELECT 'r' || g, 'v1' FROM generate_series(1, 50) g`)
	require.NoError(t, err)
	syncAll(t, dest.Pool, "items", src, 7)
	_, err = srcDB.Pool.Exec(ctx, `UPDATE items SET name = 'v2' WHERE id IN ('r1', 'r2', 'r3')`)
	require.NoError(t, err)
	_, err = srcDB.Pool.Exec(ctx, `UPDATE items SET name = 'v3' WHERE id = 'r1'`)
	require.NoError(t, err)
	_, rows := syncAll(t, dest.Pool, "items", src, 7)
	require.Equal(t, 3, rows)
	requireEqual(t, srcDB.Pool, dest.Pool, "items")
	// Versions come from the table's sequence: r1, written last, has the
	// highest.
	var v, others int64
	require.NoError(t, dest.Pool.QueryRow(ctx, `SELECT version FROM data_records WHERE record_id = 'r1'`).Scan(&v))
	require.NoError(t, dest.Pool.QueryRow(ctx, `SELECT max(version) FROM data_records WHERE record_id <> 'r1'`).Scan(&others))
	require.Greater(t, v, others)
}

// Changes delivered out of order: the newer version wins, within a page and
// across pages.
func TestApply_NewerVersionWins(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dest := testdb.New(t, nil)
	apply := func(changes ...datasync.Change) (applied, unchanged int64) {
		require.NoError(t, pgx.BeginFunc(ctx, dest.Pool, func(tx pgx.Tx) error {
			var err error
			applied, unchanged, err = datasync.Apply(ctx, tx, "s", changes)
			return err
		}))
		return applied, unchanged
	}
	c := func(id string, v int64, name string) datasync.Change {
		return datasync.Change{ID: id, Version: v, Data: json.RawMessage(fmt.Sprintf(`{"name":%q}`, name))}
	}
	a, u := apply(c("x", 2, "two"), c("y", 1, "one"))
	require.EqualValues(t, 2, a)
	require.Zero(t, u)
	a, u = apply(c("x", 1, "one (late)"), c("x", 2, "two (again)"))
	require.Zero(t, a, "neither is newer than what is stored")
	require.EqualValues(t, 2, u)
	apply(c("y", 3, "three"), c("y", 2, "two (late, same page)"))
	var x, y string
	require.NoError(t, dest.Pool.QueryRow(ctx, `SELECT data->>'name' FROM data_records WHERE record_id = 'x'`).Scan(&x))
	require.NoError(t, dest.Pool.QueryRow(ctx, `SELECT data->>'name' FROM data_records WHERE record_id = 'y'`).Scan(&y))
	require.Equal(t, "two", x)
	require.Equal(t, "three", y)
}

// A PostgreSQL source served as a feed and read over HTTP keeps its
// guarantees.
func TestHTTPSource_Feed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srcDB, dest := newSourceDB(t), testdb.New(t, nil)
	pg, err := datasync.NewPostgresSource(srcDB.Pool, "items")
	require.NoError(t, err)
	feed := httptest.NewServer(datasync.FeedHandler(pg))
	t.Cleanup(feed.Close)
	src, err := datasync.NewHTTPSource(feed.URL+"/changes", nil)
	require.NoError(t, err)

	_, err = srcDB.Pool.Exec(ctx, `INSERT INTO items (id, name) SELECT 'r' || g, 'n' || g FROM generate_series(1, 120) g`)
	require.NoError(t, err)
	late, err := srcDB.Pool.Begin(ctx)
	require.NoError(t, err)
	defer late.Rollback(ctx) //nolint:errcheck
	_, err = late.Exec(ctx, `UPDATE items SET name = 'late' WHERE id = 'r5'`)
	require.NoError(t, err)

	_, rows := syncAll(t, dest.Pool, "feed", src, 25)
	require.Equal(t, 120, rows)
	require.NoError(t, late.Commit(ctx))
	syncAll(t, dest.Pool, "feed", src, 25)
	requireEqual(t, srcDB.Pool, dest.Pool, "feed")
}

func TestPage_Validate(t *testing.T) {
	t.Parallel()
	ok := datasync.Change{ID: "a", Version: 1, Data: json.RawMessage(`{}`)}
	require.NoError(t, (&datasync.Page{Changes: []datasync.Change{ok}}).Validate())
	for name, bad := range map[string]datasync.Change{
		"no id":                          {Version: 1, Data: json.RawMessage(`{}`)},
		"version 0":                      {ID: "a", Data: json.RawMessage(`{}`)},
		"no data":                        {ID: "a", Version: 1},
		"broken data":                    {ID: "a", Version: 1, Data: json.RawMessage(`{"x":`)},
		"NUL in data":                    {ID: "a", Version: 1, Data: json.RawMessage(`{"x":"a\u0000b"}`)},
		"NUL after an escaped backslash": {ID: "a", Version: 1, Data: json.RawMessage(`{"x":"a\\\u0000"}`)},
		"NUL in id":                      {ID: "a\x00", Version: 1, Data: json.RawMessage(`{}`)},
	} {
		err := (&datasync.Page{Changes: []datasync.Change{ok, bad}}).Validate()
		require.ErrorIs(t, err, datasync.ErrBadData, name)
	}
	// A backslash followed by "u0000" is six ordinary characters, stored fine.
	for _, data := range []string{`{"path":"C:\\u0000dir"}`, `{"x":"\\\\u0000"}`, `{"u0000":1}`} {
		require.NoError(t, (&datasync.Page{Changes: []datasync.Change{{ID: "a", Version: 1, Data: json.RawMessage(data)}}}).Validate(), data)
	}
	_, err := datasync.TrackingSQL("items; DROP TABLE x")
	require.Error(t, err)
	require.False(t, datasync.ValidName("Bad Name"))
}
