package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/pgonce/pgonce/internal/progress"
)

// growth measures the welcome emails again on a database that retains
// Retained completed welcome-email jobs, users, email-log rows and send
// attempts, as a long-running system that keeps its history would.
func (b *bench) growth(ctx context.Context) error {
	note := fmt.Sprintf("%s completed jobs and email-log rows retained", thousands(b.cfg.Retained))
	_, err := b.welcomeEmails(ctx, "growth_retained", "growth", note, b.seed)
	return err
}

// seedChunk is how many rows one INSERT of the seed writes.
const seedChunk = 250_000

// seed fills d with Retained rows per table, the way the product would have
// written them. It loads each table in the transaction that truncates it,
// with its secondary indexes and unique constraints dropped and rebuilt
// afterwards (PostgreSQL then skips most of the WAL under wal_level=minimal,
// and builds each index in one sort), two tables at a time.
func (b *bench) seed(ctx context.Context, d *db) error {
	n := b.cfg.Retained
	start := time.Now()
	b.logf("growth: seeding %s rows in each of river_job, users, email_log and email_attempts", thousands(n))
	bar := progress.New(b.cfg.Progress, int64(4*n), "seed rows")
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return b.seedTables(gctx, d, []string{"river_job"}, []string{`
			INSERT INTO river_job (state, attempt, max_attempts, attempted_at, created_at, finalized_at, scheduled_at,
			                       args, attempted_by, kind, queue, unique_key, unique_states)
			SELECT 'completed', 1, 10, now() - interval '2 hours', now() - interval '2 hours', now() - interval '119 minutes',
			       now() - interval '2 hours', jsonb_build_object('user_id', g, 'email_type', 'welcome'), ARRAY['seed'],
			       'welcome_email', 'email', sha256(('seed welcome ' || g)::bytea), B'11110101'
			FROM generate_series($1::bigint, $2::bigint) g`}, n, bar)
	})
	g.Go(func() error {
		return b.seedTables(gctx, d, []string{"users", "email_log", "email_attempts"}, []string{`
			INSERT INTO users (email, name, created_at)
			SELECT 'seed' || g || '@seed.example', 'Seed User', now() - interval '2 hours'
			FROM generate_series($1::bigint, $2::bigint) g`, `
			INSERT INTO email_log (user_id, email_type, status, message_id, job_id, attempts, created_at, updated_at, sent_at)
			SELECT g, 'welcome', 'sent', 'welcome.' || g || '@seed.example', g, 1,
			       now() - interval '2 hours', now() - interval '119 minutes', now() - interval '119 minutes'
			FROM generate_series($1::bigint, $2::bigint) g`, `
			INSERT INTO email_attempts (email_log_id, job_id, job_attempt, started_at, finished_at, outcome)
			SELECT g, g, 1, now() - interval '2 hours', now() - interval '119 minutes', 'delivered'
			FROM generate_series($1::bigint, $2::bigint) g`}, n, bar)
	})
	err := g.Wait()
	bar.Finish()
	if err != nil {
		return fmt.Errorf("seeding: %w", err)
	}
	b.logf("growth: vacuum and checkpoint")
	if _, err := d.Pool.Exec(ctx, `VACUUM ANALYZE river_job, users, email_log, email_attempts`); err != nil {
		return err
	}
	// Flush what the seed dirtied, so that the measure does not pay for it.
	if _, err := d.Pool.Exec(ctx, `CHECKPOINT`); err != nil {
		b.logf("growth: CHECKPOINT refused (%v); the measure may pay for flushing the seed", err)
	}
	var size string
	if err := d.Pool.QueryRow(ctx, `SELECT pg_size_pretty(pg_database_size(current_database()))`).Scan(&size); err == nil {
		b.logf("growth: seeded in %s, database %s", time.Since(start).Round(time.Second), size)
	}
	return nil
}

// seedTables empties tables in one transaction, drops their secondary
// indexes and unique constraints, runs each insert (one per table, in
// chunks of seedChunk over 1..n), and rebuilds what it dropped.
func (b *bench) seedTables(ctx context.Context, d *db, tables []string, inserts []string, n int, bar *progress.Bar) error {
	conn, err := d.Pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	if _, err := tx.Exec(ctx, `SET LOCAL maintenance_work_mem = '512MB'; SET LOCAL synchronous_commit = off`); err != nil {
		return err
	}
	// The rows are consistent by construction (email_log.user_id g is user
	// g): skip the foreign-key triggers when this role may.
	if _, err := tx.Exec(ctx, `SAVEPOINT s; SET LOCAL session_replication_role = replica`); err != nil {
		if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT s`); err != nil {
			return err
		}
	}
	if _, err := tx.Exec(ctx, `TRUNCATE `+strings.Join(tables, ", ")+` RESTART IDENTITY`); err != nil {
		return err
	}
	rows, err := tx.Query(ctx, `
		SELECT 'DROP INDEX ' || indexrelid::regclass::text, pg_get_indexdef(indexrelid)
		FROM pg_index i
		WHERE indrelid = ANY($1::regclass[]) AND NOT indisprimary
		  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
		UNION ALL
		SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', conrelid::regclass, conname),
		       format('ALTER TABLE %s ADD CONSTRAINT %I %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
		FROM pg_constraint
		WHERE conrelid = ANY($1::regclass[]) AND contype = 'u'`, tables)
	if err != nil {
		return err
	}
	type ddl struct{ drop, create string }
	rebuild, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ddl, error) {
		var x ddl
		err := row.Scan(&x.drop, &x.create)
		return x, err
	})
	if err != nil {
		return err
	}
	for _, x := range rebuild {
		if _, err := tx.Exec(ctx, x.drop); err != nil {
			return err
		}
	}
	for _, insert := range inserts {
		for from := 1; from <= n; from += seedChunk {
			to := min(from+seedChunk-1, n)
			if _, err := tx.Exec(ctx, insert, from, to); err != nil {
				return err
			}
			bar.Add(int64(to - from + 1))
		}
	}
	for _, x := range rebuild {
		if _, err := tx.Exec(ctx, x.create); err != nil {
			return fmt.Errorf("rebuilding: %s: %w", x.create, err)
		}
	}
	return tx.Commit(ctx)
}

// thousands formats n with commas.
func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
