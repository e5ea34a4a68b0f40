package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgonce/pgonce/internal/pgembed"
	"github.com/pgonce/pgonce/internal/smtpsink"
	"github.com/pgonce/pgonce/mailer"
	"github.com/pgonce/pgonce/runner"
	"github.com/pgonce/pgonce/schema"
)

// database is the PostgreSQL a command runs against.
type database struct {
	Pool     *pgxpool.Pool
	URL      string
	Embedded *pgembed.Server // nil for DATABASE_URL
}

// openDatabase connects to databaseURL, or when it is empty starts a throwaway
// server (installed binaries, else Docker) that Close removes. It migrates
// the schema when migrateUp is set.
func openDatabase(ctx context.Context, databaseURL string, migrateUp bool, logf func(string, ...any)) (*database, error) {
	db := &database{URL: databaseURL}
	if databaseURL == "" {
		logf("no DATABASE_URL: starting a throwaway PostgreSQL (removed at exit)")
		srv, err := pgembed.Start(ctx, &pgembed.Options{Logf: logf})
		if err != nil {
			return nil, err
		}
		db.Embedded, db.URL = srv, srv.URL
	}
	pool, err := runner.NewPool(ctx, db.URL)
	if err != nil {
		db.Close()
		return nil, err
	}
	db.Pool = pool
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connecting to the database: %w", err)
	}
	if migrateUp {
		res, err := schema.UpPool(ctx, pool)
		if err != nil {
			db.Close()
			return nil, err
		}
		if len(res) > 0 {
			logf("applied %d migration(s)", len(res))
		}
	}
	return db, nil
}

// Close closes the pool and removes a throwaway server.
func (d *database) Close() {
	if d.Pool != nil {
		d.Pool.Close()
	}
	if d.Embedded != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = d.Embedded.Stop(ctx)
	}
}

// mailSender returns a sender for smtpURL, or when it is empty an
// in-process SMTP sink on loopback (returned so it can be audited).
func mailSender(smtpURL string, logf func(string, ...any)) (mailer.Sender, *smtpsink.Sink, error) {
	if smtpURL == "" {
		sink, err := smtpsink.Start()
		if err != nil {
			return nil, nil, err
		}
		logf("no SMTP_URL: delivering to an in-process SMTP sink at %s", sink.Addr())
		m, err := mailer.NewSMTP(sink.URL())
		if err != nil {
			_ = sink.Close()
			return nil, nil, err
		}
		return m, sink, nil
	}
	m, err := mailer.NewSMTP(smtpURL)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	return m, nil, nil
}

func mailerFor(sink *smtpsink.Sink) (mailer.Sender, error) {
	return mailer.NewSMTP(sink.URL())
}
