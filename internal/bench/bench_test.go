package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/internal/bench"
	"github.com/pgonce/pgonce/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

// TestRun_EverySection runs the whole benchmark at a tiny scale: every
// section measures something, checks the work it timed was done (emails at
// the sink, charges at the gateway, duplicates reported), and the report
// prints. Timing decides nothing here.
func TestRun_EverySection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	report, err := bench.Run(ctx, &bench.Config{
		DatabaseURL: testdb.ServerURL(t),
		Clients:     8,
		Duration:    300 * time.Millisecond,
		Jobs:        400,
		Retained:    2000,
		HTTPClients: 2,
		LatencyRate: 50,
		Progress:    &progress,
	})
	require.NoError(t, err, progress.String())

	for _, key := range []string{
		"ceiling", "river_noop", "river_tx", "runner_tx", "runner_tx_nogroup", "welcome_email", "process_payment",
		"enqueue_plain", "enqueue_unique_new", "enqueue_duplicate", "http_plain", "http_new", "http_replay", "growth_retained",
	} {
		res := report.Result(key)
		require.NotNil(t, res, "no result %q", key)
		require.Positive(t, res.Rate, key)
	}
	require.Positive(t, report.Result("runner_tx").VsRiver)
	require.Positive(t, report.Result("runner_tx").VsCeiling)
	require.Len(t, report.Targets, 6)

	var table, js bytes.Buffer
	require.NoError(t, report.Print(&table))
	require.Contains(t, table.String(), "bare River, transactional worker")
	require.NoError(t, report.PrintJSON(&js))
	var decoded bench.Report
	require.NoError(t, json.Unmarshal(js.Bytes(), &decoded))
	require.Len(t, decoded.Results, len(report.Results))
}
