package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/olekukonko/tablewriter"
	"github.com/riverqueue/river"

	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/internal/progress"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/runner"
)

// syncCommand runs one sync of a source from the command line: it asks for a
// sync (or joins the one pending, as the API does), works it in this process
// (a runner serve beside it may take pages too; the cursor lock makes them
// take turns), shows progress and prints what it did.
func syncCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("sync", "Usage: runner sync [flags] SOURCE\n\n"+
		"Syncs SOURCE (one of SYNC_SOURCES) into data_records now, with progress, and prints a summary.\n"+
		"Exits 1 if the sync does not complete within --timeout (its last error is printed).")
	fs.SetOutput(stderr)
	databaseURL := fs.string("database-url", "DATABASE_URL", "", "PostgreSQL URL (required)")
	syncSources := fs.string("sync-sources", "SYNC_SOURCES", "", "data sources, name=URL;name=URL (see runner serve -h)")
	pageSize := fs.int("page-size", "SYNC_PAGE_SIZE", jobs.SyncPageSizeDefault, "changes per page (one transaction each)")
	full := fs.bool("full", "", false, "read everything again from the beginning")
	timeout := fs.duration("timeout", "", 10*time.Minute, "give up after this long")
	var rest []string
	for i := 0; i < len(args); i++ { // SOURCE may come before the flags
		if !strings.HasPrefix(args[i], "-") {
			rest = append(rest, args[i])
			continue
		}
		if err := fs.parse(args[i:]); err != nil {
			return err
		}
		rest = append(rest, fs.Args()...)
		break
	}
	if len(rest) != 1 {
		fs.Usage()
		return fmt.Errorf("%w: name exactly one SOURCE", errUsage)
	}
	name := rest[0]
	if *databaseURL == "" {
		return fmt.Errorf("%w: set DATABASE_URL or --database-url", errUsage)
	}
	db, err := openDatabase(ctx, *databaseURL, false, func(string, ...any) {})
	if err != nil {
		return err
	}
	defer db.Close()
	sources, err := openSources(ctx, *syncSources, 0)
	if err != nil {
		return err
	}
	defer sources.Close()
	src, ok := sources.sources[name]
	if !ok {
		return fmt.Errorf("%w: no source %q in SYNC_SOURCES (have %v)", errUsage, name, sources.names())
	}

	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.SyncWorker{Pool: db.Pool, Sources: map[string]datasync.Source{name: src}, PageSize: *pageSize})
	r, err := runner.New(db.Pool, &runner.Config{
		Workers: workers, Queues: map[string]river.QueueConfig{jobs.QueueSync: {MaxWorkers: 1}},
		FetchPollInterval: 100 * time.Millisecond, RetryPolicy: &runner.Backoff{Min: time.Second, Max: 30 * time.Second},
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		return err
	}
	before, _ := datasync.Status(ctx, db.Pool, name)
	var job *runner.EnqueueResult
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		var err error
		job, err = jobs.EnqueueSync(ctx, r, tx, name, jobs.SyncTrigger{By: "cli"}, &jobs.SyncOpts{Full: *full})
		return err
	})
	if err != nil {
		return err
	}
	if job.Duplicate {
		fmt.Fprintf(stderr, "a sync of %s is already pending (job %d); working it\n", name, job.JobID)
	}
	if err := r.Start(ctx); err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Stop(stopCtx)
	}()

	total := int64(0)
	if b, ok := src.(interface {
		Backlog(context.Context, string) (int64, error)
	}); ok && before != nil {
		total, _ = b.Backlog(ctx, before.Cursor)
	}
	bar := progress.New(stderr, max(total, 1), "syncing "+name)
	start := time.Now()
	deadline := time.After(*timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var state string
	var lastErr *string
	for {
		var rows int64
		err := db.Pool.QueryRow(ctx, `
			SELECT j.state::text, coalesce(c.run_rows, 0), c.last_error
			FROM river_job j LEFT JOIN sync_cursors c ON c.source = $2
			WHERE j.id = $1`, job.JobID, name).Scan(&state, &rows, &lastErr)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if state == "running" || state == "available" {
			bar.Set(min(rows, max(total, 1)))
		}
		if state == "completed" || state == "cancelled" || state == "discarded" {
			break
		}
		select {
		case <-ctx.Done():
			bar.Finish()
			return ctx.Err()
		case <-deadline:
			bar.Finish()
			return fmt.Errorf("the sync of %s did not complete within %s (job %d is %s; last error: %s)", name, *timeout, job.JobID, state, deref(lastErr))
		case <-tick.C:
		}
	}
	bar.Set(max(total, 1))
	bar.Finish()
	if state != "completed" {
		return fmt.Errorf("the sync of %s ended %s: %s", name, state, deref(lastErr))
	}
	after, err := datasync.Status(ctx, db.Pool, name)
	if err != nil {
		return err
	}
	return printSyncSummary(stdout, before, after, time.Since(start))
}

func printSyncSummary(w io.Writer, before, after *datasync.Cursor, took time.Duration) error {
	if before == nil {
		before = &datasync.Cursor{}
	}
	applied := after.RowsApplied - before.RowsApplied
	unchanged := after.RowsUnchanged - before.RowsUnchanged
	t := tablewriter.NewWriter(w)
	t.Header("sync "+after.Source, "")
	rows := [][2]string{
		{"pages", strconv.FormatInt(after.Pages-before.Pages, 10)},
		{"rows written (new or newer)", strconv.FormatInt(applied, 10)},
		{"rows unchanged (not newer)", strconv.FormatInt(unchanged, 10)},
		{"duration", took.Round(time.Millisecond).String()},
		{"rows/s", fmt.Sprintf("%.0f", float64(applied+unchanged)/took.Seconds())},
	}
	if after.CaughtUpTo != nil {
		rows = append(rows, [2]string{"caught up to", after.CaughtUpTo.Format(time.RFC3339Nano)})
	}
	for _, r := range rows {
		_ = t.Append(r[0], r[1])
	}
	return t.Render()
}

func deref(s *string) string {
	if s == nil {
		return "none"
	}
	return *s
}
