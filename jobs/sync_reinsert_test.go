package jobs_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/jobs"
)

// A record deleted and inserted again with the same id (a reload) has a
// newer version than before, so the next sync applies it.
func TestSync_ReinsertedRecord(t *testing.T) {
	t.Parallel()
	f := setupSync(t, nil)
	ctx := context.Background()
	_, err := f.src.Pool.Exec(ctx, `INSERT INTO items (id, name) VALUES ('a', 'v1')`)
	require.NoError(t, err)
	_, err = f.src.Pool.Exec(ctx, `UPDATE items SET name = 'v2' WHERE id = 'a'`)
	require.NoError(t, err)
	f.start(t)
	f.waitJob(t, f.enqueue(t, "items", jobs.SyncTrigger{}, nil).JobID, "completed")
	f.requireInSync(t, "items")

	_, err = f.src.Pool.Exec(ctx, `DELETE FROM items WHERE id = 'a'; INSERT INTO items (id, name) VALUES ('a', 'v3-new')`)
	require.NoError(t, err)
	f.waitJob(t, f.enqueue(t, "items", jobs.SyncTrigger{}, nil).JobID, "completed")
	var name string
	require.NoError(t, f.dest.Pool.QueryRow(ctx, `SELECT data->>'name' FROM data_records WHERE record_id = 'a'`).Scan(&name))
	require.Equal(t, "v3-new", name)
	f.requireInSync(t, "items")
}

// A source text holding a backslash followed by "u0000" (six ordinary
// characters, no NUL) syncs like any other.
func TestSync_BackslashU0000IsNotNUL(t *testing.T) {
	t.Parallel()
	f := setupSync(t, nil)
	ctx := context.Background()
	_, err := f.src.Pool.Exec(ctx, `INSERT INTO items (id, name) VALUES ('ok1', 'fine'), ('path', 'C:\u0000dir'), ('ok2', 'fine too')`)
	require.NoError(t, err)
	f.start(t)
	f.waitJob(t, f.enqueue(t, "items", jobs.SyncTrigger{}, nil).JobID, "completed")
	f.requireInSync(t, "items")
}
