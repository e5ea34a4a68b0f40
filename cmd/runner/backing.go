package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgonce/pgonce/gateway"
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
		logf("starting a throwaway PostgreSQL (removed at exit)")
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

// paymentGateway returns a client of the gateway at gatewayURL, or when it is
// empty of a reference gateway started in this process on loopback (returned
// so it can be audited; Close stops it).
func paymentGateway(gatewayURL, token string, timeout time.Duration, faults gateway.Faults, logf func(string, ...any)) (gateway.Gateway, *localGateway, error) {
	if gatewayURL != "" {
		c, err := gateway.NewClient(gatewayURL, &gateway.ClientOpts{Token: token, Timeout: timeout})
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %w", errUsage, err)
		}
		return c, nil, nil
	}
	srv := gateway.NewServer()
	srv.SetFaults(faults)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	httpSrv := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = httpSrv.Serve(l) }()
	url := "http://" + l.Addr().String()
	logf("no GATEWAY_URL: charging through the reference gateway at %s", url)
	c, err := gateway.NewClient(url, &gateway.ClientOpts{Timeout: timeout})
	if err != nil {
		_ = httpSrv.Close()
		return nil, nil, err
	}
	return c, &localGateway{Server: srv, http: httpSrv}, nil
}

// localGateway is a reference gateway running in this process.
type localGateway struct {
	*gateway.Server
	http *http.Server
}

func (g *localGateway) Close() {
	g.Server.Close()
	_ = g.http.Close()
}

// openDemoSource connects to a database for the demo's sync source: a
// database of its own on the same server when this role may create one
// (another DSN, as in production), else the demo's own database.
func openDemoSource(ctx context.Context, databaseURL string, logf func(string, ...any)) (*pgxpool.Pool, func(), error) {
	const name = "pgonce_demo_source"
	admin, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return nil, nil, err
	}
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	if err == nil {
		_, err = admin.Exec(ctx, "CREATE DATABASE "+name)
	}
	sourceURL := databaseURL
	if err != nil {
		logf("cannot create a source database (%v): the sync source table goes in the demo's database", err)
	} else {
		sourceURL = replaceDatabase(databaseURL, name)
		logf("sync source: table %s in database %s", "demo_items", name)
	}
	pool, err := pgxpool.New(ctx, sourceURL)
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() {
		pool.Close()
		if sourceURL != databaseURL {
			c, err := pgx.Connect(context.Background(), databaseURL)
			if err == nil {
				_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
				_ = c.Close(context.Background())
			}
		}
	}
	return pool, cleanup, nil
}

// replaceDatabase returns the URL with its database replaced.
func replaceDatabase(databaseURL, name string) string {
	u, err := url.Parse(databaseURL)
	if err != nil || u.Scheme == "" {
		return strings.TrimSpace(databaseURL) + " dbname=" + name
	}
	u.Path = "/" + name
	return u.String()
}
