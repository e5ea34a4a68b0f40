package schema_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/schema"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

func tables(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT table_name::text FROM information_schema.tables
		WHERE table_schema = current_schema() AND table_name <> 'goose_db_version' ORDER BY 1`)
	require.NoError(t, err)
	var out []string
	for rows.Next() {
		var n string
		require.NoError(t, rows.Scan(&n))
		out = append(out, n)
	}
	require.NoError(t, rows.Err())
	return out
}

// Up, down to nothing and up again: every migration reverses cleanly, River's
// included.
func TestMigrations_RoundTrip(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, &testdb.Opts{Empty: true})
	ctx := context.Background()
	sqlDB := stdlib.OpenDBFromPool(db.Pool)
	defer sqlDB.Close()

	p, err := schema.NewProvider(sqlDB)
	require.NoError(t, err)
	_, err = p.Up(ctx)
	require.NoError(t, err)
	require.Subset(t, tables(t, db.Pool), []string{"river_job", "river_leader", "river_migration", "river_queue", "users", "email_log", "email_attempts"})

	var riverVersion int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT max(version) FROM river_migration`).Scan(&riverVersion))
	require.Equal(t, schema.RiverMigrationVersion, riverVersion)

	hasPending, err := p.HasPending(ctx)
	require.NoError(t, err)
	require.False(t, hasPending)

	_, err = p.DownTo(ctx, 0)
	require.NoError(t, err)
	require.Empty(t, tables(t, db.Pool))

	_, err = schema.Up(ctx, sqlDB)
	require.NoError(t, err)
	require.Contains(t, tables(t, db.Pool), "river_job")
}

// Several processes migrating at once take turns.
func TestMigrations_Concurrent(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, &testdb.Opts{Empty: true})
	ctx := context.Background()
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			sqlDB := stdlib.OpenDBFromPool(db.Pool)
			defer sqlDB.Close()
			_, err := schema.Up(ctx, sqlDB)
			errs <- err
		}()
	}
	for range 4 {
		require.NoError(t, <-errs)
	}
}

// The invariants are constraints: the database refuses what the code must
// never write.
func TestConstraints(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, `INSERT INTO users (id, email) OVERRIDING SYSTEM VALUE VALUES (1, 'a@example.com'), (2, 'b@example.com')`)
	require.NoError(t, err)
	_, err = db.Pool.Exec(ctx, `INSERT INTO email_log (user_id, email_type, message_id) VALUES (1, 'welcome', 'm1')`)
	require.NoError(t, err)

	for name, stmt := range map[string]string{
		"email case-insensitively unique": `INSERT INTO users (email) VALUES ('A@EXAMPLE.COM')`,
		"email format":                    `INSERT INTO users (email) VALUES ('nope')`,
		"email trimmed":                   `INSERT INTO users (email) VALUES (' c@example.com')`,
		"one email per user and type":     `INSERT INTO email_log (user_id, email_type, message_id) VALUES (1, 'welcome', 'm2')`,
		"message id unique":               `INSERT INTO email_log (user_id, email_type, message_id) VALUES (2, 'welcome', 'm1')`,
		"status known":                    `UPDATE email_log SET status = 'maybe' WHERE user_id = 1`,
		"sent means sent_at":              `UPDATE email_log SET status = 'sent' WHERE user_id = 1`,
		"user exists":                     `INSERT INTO email_log (user_id, email_type, message_id) VALUES (99, 'welcome', 'm3')`,
		"email type format":               `INSERT INTO email_log (user_id, email_type, message_id) VALUES (2, 'Welcome Email', 'm4')`,
		"attempt outcome known":           `INSERT INTO email_attempts (email_log_id, job_id, job_attempt, outcome, finished_at) SELECT id, 1, 1, 'lost', now() FROM email_log`,
	} {
		_, err := db.Pool.Exec(ctx, stmt)
		require.Error(t, err, name)
	}
}
