package api_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/api"
	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/runner"
)

func TestSync(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := testdb.New(t, &testdb.Opts{Empty: true})
	ddl, err := datasync.TrackingSQL("items")
	require.NoError(t, err)
	_, err = src.Pool.Exec(ctx, `CREATE TABLE items (id text PRIMARY KEY, name text);`+ddl+
		`INSERT INTO items (id, name) SELECT 'r' || g, 'n' FROM generate_series(1, 40) g;`)
	require.NoError(t, err)
	pg, err := datasync.NewPostgresSource(src.Pool, "items")
	require.NoError(t, err)

	db := testdb.New(t, nil)
	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.SyncWorker{Pool: db.Pool, Sources: map[string]datasync.Source{"items": pg}, PageSize: 10})
	r, err := runner.New(db.Pool, &runner.Config{Workers: workers, Queues: jobs.Queues(nil), Logger: quiet})
	require.NoError(t, err)
	s, err := api.New(&api.Config{Pool: db.Pool, Runner: r, Tokens: map[string]string{token: "client-a"}, Logger: quiet, Sources: []string{"items"}})
	require.NoError(t, err)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	f := &fixture{pool: db.Pool, srv: srv, r: r}

	// Never synced yet: a status with nothing in it.
	resp, raw := f.do(t, "GET", "/api/sync/items", "", "")
	require.Equal(t, 200, resp.StatusCode, string(raw))
	require.Contains(t, string(raw), `"lag_seconds":null`)

	resp, raw = f.do(t, "POST", "/api/sync/items", "", "")
	require.Equal(t, 202, resp.StatusCode, string(raw))
	var first api.SyncResponse
	require.NoError(t, json.Unmarshal(raw, &first))
	require.False(t, first.Duplicate)
	resp, raw = f.do(t, "POST", "/api/sync/items", "", "")
	require.Equal(t, 202, resp.StatusCode)
	var again api.SyncResponse
	require.NoError(t, json.Unmarshal(raw, &again))
	require.True(t, again.Duplicate, "the pending sync is reported")
	require.Equal(t, first.JobID, again.JobID)

	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() { _ = r.Stop(context.Background()) })
	require.Eventually(t, func() bool {
		_, raw := f.do(t, "GET", "/api/sync/items", "", "")
		var st api.SyncStatus
		return json.Unmarshal(raw, &st) == nil && st.LastCompletedAt != nil
	}, 10*time.Second, 20*time.Millisecond)
	_, raw = f.do(t, "GET", "/api/sync/items", "", "")
	var st api.SyncStatus
	require.NoError(t, json.Unmarshal(raw, &st))
	require.EqualValues(t, 40, st.RowsApplied)
	require.NotNil(t, st.LagSeconds)
	require.False(t, st.Running)
	require.Nil(t, st.LastError)

	resp, raw = f.do(t, "POST", "/api/sync/nope", "", "")
	requireProblem(t, resp, raw, 404, "source-not-found")
	resp, raw = f.do(t, "POST", "/api/sync/items?full=maybe", "", "")
	requireProblem(t, resp, raw, 400, "invalid-parameter")
	resp, raw = f.do(t, "POST", "/api/sync/items?full=true", "", "")
	require.Equal(t, 202, resp.StatusCode, string(raw))
}
