package bench

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgonce/pgonce/internal/pgembed"
	"github.com/pgonce/pgonce/runner"
	"github.com/pgonce/pgonce/schema"
)

// benchTables are the tables of the baselines, beside the product's schema.
const benchTables = `
CREATE TABLE bench_ceiling (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    v  bigint NOT NULL
);
COMMENT ON TABLE bench_ceiling IS 'runner bench: the single-row inserts of the commit ceiling and the plain HTTP handler';
CREATE TABLE bench_effects (
    job_id     bigint PRIMARY KEY,
    n          bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE bench_effects IS 'runner bench: the effect of the transactional workers, one row per job';
CREATE TABLE bench_orders (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    n          bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE bench_orders IS 'runner bench: the business rows written in the same transactions as enqueues';
`

// open connects to the server, and creates and migrates the template
// database every section's databases are copied from.
func (b *bench) open(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, b.cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("bench: connecting: %w", err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&b.serverVersion); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	var fsync, syncCommit string
	if err := conn.QueryRow(ctx, `SELECT current_setting('fsync'), current_setting('synchronous_commit')`).Scan(&fsync, &syncCommit); err == nil {
		b.serverVersion += fmt.Sprintf(" (fsync %s, synchronous_commit %s)", fsync, syncCommit)
	}
	b.template = fmt.Sprintf("pgonce_bench_%d_tmpl", os.Getpid())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+b.template); err != nil {
		return fmt.Errorf("bench: creating the template database (the role needs CREATEDB): %w", err)
	}
	pool, err := pgxpool.New(ctx, pgembed.WithDatabase(b.cfg.DatabaseURL, b.template))
	if err != nil {
		b.dropDatabase(b.template)
		return err
	}
	defer pool.Close()
	if _, err := schema.UpPool(ctx, pool); err != nil {
		b.dropDatabase(b.template)
		return fmt.Errorf("bench: migrating the template: %w", err)
	}
	if _, err := pool.Exec(ctx, benchTables); err != nil {
		b.dropDatabase(b.template)
		return fmt.Errorf("bench: creating the baseline tables: %w", err)
	}
	return nil
}

func (b *bench) close() {
	if b.template != "" {
		b.dropDatabase(b.template)
	}
}

// db is a section's database: a copy of the template.
type db struct {
	b    *bench
	name string
	url  string
	Pool *pgxpool.Pool
}

// newDB creates a database from the template with a pool of Clients
// connections, the runner's default pool configuration otherwise.
func (b *bench) newDB(ctx context.Context, purpose string) (*db, error) {
	b.dbCounter++
	name := fmt.Sprintf("pgonce_bench_%d_%d_%s", os.Getpid(), b.dbCounter, purpose)
	if err := b.adminExec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+b.template); err != nil {
		return nil, fmt.Errorf("creating database %s: %w", name, err)
	}
	d := &db{b: b, name: name, url: pgembed.WithDatabase(b.cfg.DatabaseURL, name)}
	cfg, err := runner.PoolConfig(d.url)
	if err != nil {
		b.dropDatabase(name)
		return nil, err
	}
	cfg.MaxConns = int32(b.cfg.Clients)
	if d.Pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		b.dropDatabase(name)
		return nil, err
	}
	if err := d.Pool.Ping(ctx); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Close closes the pool and drops the database.
func (d *db) Close() {
	d.Pool.Close()
	d.b.dropDatabase(d.name)
}

func (b *bench) dropDatabase(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := b.adminExec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		b.logf("dropping database %s: %v", name, err)
	}
}

func (b *bench) adminExec(ctx context.Context, sql string) error {
	return pgembed.AdminExec(ctx, b.cfg.DatabaseURL, sql)
}
