// Package testdb gives each test a migrated PostgreSQL database of its own, so
// that tests run in parallel and never see each other's rows.
//
// The server is found in this order: TEST_DATABASE_URL when set (the role
// needs CREATEDB); else a throwaway cluster started from the installed
// PostgreSQL binaries; else a container through testcontainers-go when a
// Docker engine answers; else the test binary exits with an error saying how
// to get one.
//
// Each package's TestMain calls Main; each test calls New.
package testdb

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/goleak"

	"github.com/pgonce/pgonce/internal/pgembed"
	"github.com/pgonce/pgonce/schema"
)

var (
	serverURL string // superuser URL of the server the tests use
	template  string // migrated database each test database is copied from
	server    *pgembed.Server
	counter   atomic.Int64
	setupOnce sync.Once
	setupErr  error
)

// Main runs the package's tests, stops the server if it started one, and
// then fails the run if goroutines leaked (goleak). Use it as
// `func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }`.
func Main(m *testing.M) int {
	code := m.Run()
	teardown()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			return 1
		}
	}
	return code
}

func setup() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	serverURL = os.Getenv("TEST_DATABASE_URL")
	if serverURL == "" {
		srv, err := pgembed.Start(ctx, &pgembed.Options{Settings: map[string]string{
			// A throwaway server: durability buys nothing and costs time.
			"fsync":              "off",
			"synchronous_commit": "off",
			"full_page_writes":   "off",
		}})
		if err != nil {
			return fmt.Errorf("testdb: %w", err)
		}
		server = srv
		serverURL = srv.URL
	}

	template = fmt.Sprintf("pgonce_tmpl_%d_%d", os.Getpid(), time.Now().UnixNano()%1e6)
	if err := adminExec(ctx, "CREATE DATABASE "+template); err != nil {
		return fmt.Errorf("testdb: creating template database: %w", err)
	}
	pool, err := pgxpool.New(ctx, pgembed.WithDatabase(serverURL, template))
	if err != nil {
		return fmt.Errorf("testdb: %w", err)
	}
	defer pool.Close()
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	if _, err := schema.Up(ctx, db); err != nil {
		return fmt.Errorf("testdb: migrating template: %w", err)
	}
	return nil
}

func teardown() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if template != "" && server == nil {
		_ = adminExec(ctx, "DROP DATABASE IF EXISTS "+template+" WITH (FORCE)")
	}
	if server != nil {
		_ = server.Stop(ctx)
	}
}

// ServerURL returns the superuser URL of the server, starting it if needed.
func ServerURL(t testing.TB) string {
	t.Helper()
	ensure(t)
	return serverURL
}

func ensure(t testing.TB) {
	t.Helper()
	setupOnce.Do(func() { setupErr = setup() })
	if setupErr != nil {
		t.Fatal(setupErr)
	}
}

// DB is a test's own database.
type DB struct {
	Name string
	URL  string
	Pool *pgxpool.Pool
}

// Opts tune New. The zero value is fine.
type Opts struct {
	// MaxConns caps the pool. Defaults to 20.
	MaxConns int32
	// Empty skips the migrations: the database has no tables.
	Empty bool
}

// New creates a database for t (a copy of the migrated template unless
// opts.Empty), and drops it when t ends.
func New(t testing.TB, opts *Opts) *DB {
	t.Helper()
	ensure(t)
	db, drop, err := create(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Errorf("testdb: %v", err)
		}
	})
	return db
}

// ForExample creates a migrated database for a runnable example, which has
// no *testing.T; call the returned function to drop it.
func ForExample() (*DB, func()) {
	setupOnce.Do(func() { setupErr = setup() })
	if setupErr != nil {
		panic(setupErr)
	}
	db, drop, err := create(nil)
	if err != nil {
		panic(err)
	}
	return db, func() { _ = drop() }
}

func create(opts *Opts) (*DB, func() error, error) {
	if opts == nil {
		opts = &Opts{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	name := fmt.Sprintf("t_%d_%d", os.Getpid(), counter.Add(1))
	stmt := "CREATE DATABASE " + name + " TEMPLATE " + template
	if opts.Empty {
		stmt = "CREATE DATABASE " + name
	}
	if err := adminExec(ctx, stmt); err != nil {
		return nil, nil, fmt.Errorf("testdb: %s: %w", stmt, err)
	}
	dbURL := pgembed.WithDatabase(serverURL, name)
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, nil, err
	}
	cfg.MaxConns = 20
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	drop := func() error {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := adminExec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("dropping %s: %w", name, err)
		}
		return nil
	}
	return &DB{Name: name, URL: dbURL, Pool: pool}, drop, nil
}

func adminExec(ctx context.Context, sql string) error {
	return pgembed.AdminExec(ctx, serverURL, sql)
}
