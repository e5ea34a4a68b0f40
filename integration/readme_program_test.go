package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/internal/testdb"
)

// The README's complete program (examples/invoice, kept identical to the
// README by cmd/runner's README test) runs as written: its order is invoiced
// once, and a second run is told its job is a duplicate.
func TestREADME_CompleteProgram(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "invoice")
	build := exec.Command("go", "build", "-o", bin, "../examples/invoice")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))

	db := testdb.New(t, &testdb.Opts{Empty: true})
	ctx := context.Background()
	_, err = db.Pool.Exec(ctx, `CREATE TABLE orders (id bigint PRIMARY KEY, invoiced bool NOT NULL DEFAULT false)`)
	require.NoError(t, err)

	runOnce := func() string {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin)
		cmd.Env = append(os.Environ(), "DATABASE_URL="+db.URL)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, string(out))
		return string(out)
	}
	first := runOnce()
	require.Contains(t, first, "duplicate: false")
	require.Contains(t, first, "order 42 invoiced")
	second := runOnce()
	require.Contains(t, second, "duplicate: true")

	var jobs, attempts int
	require.NoError(t, db.Pool.QueryRow(ctx,
		`SELECT count(*), coalesce(sum(attempt), 0) FROM river_job WHERE kind = 'send_invoice' AND state = 'completed'`).
		Scan(&jobs, &attempts))
	require.Equal(t, 1, jobs)
	require.Equal(t, 1, attempts)
	require.True(t, strings.Count(first+second, "order 42 invoiced") == 2)
}
