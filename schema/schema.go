package schema

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"github.com/riverqueue/river/riverdriver/riverdatabasesql"
	"github.com/riverqueue/river/rivermigrate"
)

// RiverMigrationVersion is the River schema version migration 1 installs:
// the latest migration of the River release in go.mod (v0.51.2).
const RiverMigrationVersion = 8

//go:embed migrations/*.sql
var embedded embed.FS

// Migrations returns the SQL migrations, for tools that want to read them.
func Migrations() fs.FS {
	sub, err := fs.Sub(embedded, "migrations")
	if err != nil {
		panic(err) // the embedded directory is fixed at build time
	}
	return sub
}

// NewProvider returns a goose provider over db holding every migration,
// with a session lock so that concurrent migrators take turns. The caller
// closes it.
//
// The tables are created in the first schema of db's search_path.
func NewProvider(db *sql.DB) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return nil, fmt.Errorf("creating migration lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, Migrations(),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithGoMigrations(riverMigration()),
	)
	if err != nil {
		return nil, fmt.Errorf("creating migration provider: %w", err)
	}
	return p, nil
}

// Up applies every pending migration.
func Up(ctx context.Context, db *sql.DB) ([]*goose.MigrationResult, error) {
	p, err := NewProvider(db)
	if err != nil {
		return nil, err
	}
	res, err := p.Up(ctx)
	if err != nil {
		return res, fmt.Errorf("migrating up: %w", err)
	}
	return res, nil
}

// UpPool applies every pending migration through a pgx pool.
func UpPool(ctx context.Context, pool *pgxpool.Pool) ([]*goose.MigrationResult, error) {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	return Up(ctx, db)
}

// riverMigration is goose migration 1: River's schema at
// RiverMigrationVersion, applied through River's own migrator so that River's
// migration table stays truthful. It runs outside goose's transaction because
// River's migrations must each commit on their own (a later one uses an enum
// value an earlier one adds, which PostgreSQL refuses within one
// transaction); River records each version it applies, so a run interrupted
// halfway resumes where it stopped.
func riverMigration() *goose.Migration {
	migrator := func(db *sql.DB) (*rivermigrate.Migrator[*sql.Tx], error) {
		return rivermigrate.New(riverdatabasesql.New(db), nil)
	}
	up := func(ctx context.Context, db *sql.DB) error {
		m, err := migrator(db)
		if err != nil {
			return err
		}
		_, err = m.Migrate(ctx, rivermigrate.DirectionUp, &rivermigrate.MigrateOpts{TargetVersion: RiverMigrationVersion})
		if err != nil {
			return fmt.Errorf("river migrations up to %d: %w", RiverMigrationVersion, err)
		}
		return nil
	}
	down := func(ctx context.Context, db *sql.DB) error {
		m, err := migrator(db)
		if err != nil {
			return err
		}
		_, err = m.Migrate(ctx, rivermigrate.DirectionDown, &rivermigrate.MigrateOpts{TargetVersion: -1})
		if err != nil {
			return fmt.Errorf("river migrations down: %w", err)
		}
		return nil
	}
	return goose.NewGoMigration(1, &goose.GoFunc{RunDB: up}, &goose.GoFunc{RunDB: down})
}
