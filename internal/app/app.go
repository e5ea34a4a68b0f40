// Package app assembles the runner, its workers and the HTTP API from their
// settings: what `runner serve`, `runner demo` and the integration tests share.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/rivercontrib/otelriver"
	"riverqueue.com/riverui"

	"github.com/pgonce/pgonce/api"
	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/idempotency"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/mailer"
	"github.com/pgonce/pgonce/metrics"
	"github.com/pgonce/pgonce/runner"
)

// Options configure an App.
type Options struct {
	Pool    *pgxpool.Pool
	Mailer  mailer.Sender
	Gateway gateway.Gateway // optional: without it payments are accepted but not processed

	MailFrom      string
	MailDomain    string
	EmailLeaseFor time.Duration

	// Tokens and AllowAnonymous configure API authentication (see api.Config).
	Tokens         map[string]string
	AllowAnonymous bool

	// AdminUser and AdminPassword guard /metrics and /riverui/.
	AdminUser, AdminPassword string

	// GroupCommit configures the group commit of the email and payment
	// workers' transactions; NoGroupCommit gives each its own commit.
	GroupCommit   runner.GroupConfig
	NoGroupCommit bool

	// Runner is the base runner configuration; Workers and Queues are filled
	// in here.
	Runner runner.Config
	Queues *jobs.QueueSizes

	// Sources are the data sources to sync, by name; SyncIntervals asks for a
	// periodic sync of some of them.
	Sources       map[string]datasync.Source
	SyncIntervals map[string]time.Duration
	SyncPageSize  int

	// IdempotencyKeyLifetime and PurgeInterval configure stored answers of
	// Idempotency-Key requests and their periodic purge.
	IdempotencyKeyLifetime time.Duration
	PurgeInterval          time.Duration
	PaymentMaxAttempts     int

	Logger *slog.Logger
}

// App is a wired runner with its API.
type App struct {
	Pool    *pgxpool.Pool
	Runner  *runner.Runner
	Group   *runner.Group // nil with NoGroupCommit
	API     *api.Server
	Metrics *metrics.Metrics
	Logger  *slog.Logger

	riverUI     *riverui.Handler
	stopRiverUI context.CancelFunc

	httpServer *http.Server
	listener   net.Listener
	serveDone  chan error
}

// New builds the runner, registers the job kinds and builds the API.
func New(opts *Options) (*App, error) {
	if opts.Pool == nil || opts.Mailer == nil {
		return nil, errors.New("app: Pool and Mailer are required")
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	var txDB runner.Beginner = opts.Pool
	var group *runner.Group
	if !opts.NoGroupCommit {
		g, err := runner.NewGroup(opts.Pool, &opts.GroupCommit)
		if err != nil {
			return nil, err
		}
		txDB, group = g, g
	}
	workers := river.NewWorkers()
	if err := jobs.Register(workers, &jobs.Deps{
		Pool: opts.Pool, TxDB: txDB, Mailer: opts.Mailer, MailFrom: opts.MailFrom, MailDomain: opts.MailDomain, Gateway: opts.Gateway,
		EmailLeaseFor: opts.EmailLeaseFor,
		Sources:       opts.Sources, SyncPageSize: opts.SyncPageSize,
	}); err != nil {
		return nil, err
	}
	river.AddWorker(workers, &idempotency.PurgeWorker{DB: opts.Pool})
	cfg := opts.Runner
	cfg.Workers = workers
	if group != nil {
		cfg.Groups = append(cfg.Groups, group)
	}
	if cfg.Queues == nil {
		cfg.Queues = jobs.Queues(opts.Queues)
		if len(opts.Sources) == 0 {
			// Without sources this process cannot work a sync: leave the
			// sync queue to the runners that have them, instead of
			// burning the attempts of their jobs.
			delete(cfg.Queues, jobs.QueueSync)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = logger
	}
	m := metrics.New(opts.Pool, logger)
	if group != nil {
		m.WatchGroup(group.Stats)
	}
	cfg.Middleware = append(cfg.Middleware, m.RiverMiddleware()...)
	// Traces through OpenTelemetry's global provider: a no-op unless one is
	// installed (runner serve installs OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set).
	cfg.Middleware = append(cfg.Middleware, otelriver.NewMiddleware(&otelriver.MiddlewareConfig{EnableTracePropagation: true}))
	cfg.PeriodicJobs = append(cfg.PeriodicJobs, idempotency.PeriodicPurge(opts.PurgeInterval))
	sources := make([]string, 0, len(opts.Sources))
	for name := range opts.Sources {
		sources = append(sources, name)
		if every := opts.SyncIntervals[name]; every > 0 {
			cfg.PeriodicJobs = append(cfg.PeriodicJobs, jobs.PeriodicSync(name, every))
		}
	}
	sort.Strings(sources)
	r, err := runner.New(opts.Pool, &cfg)
	if err != nil {
		return nil, err
	}
	ui, err := riverui.NewHandler(&riverui.HandlerOpts{
		Endpoints: riverui.NewEndpoints(r.Client(), nil),
		Logger:    logger,
		Prefix:    "/riverui",
	})
	if err != nil {
		return nil, fmt.Errorf("app: River UI: %w", err)
	}
	srv, err := api.New(&api.Config{
		Pool: opts.Pool, Runner: r, Tokens: opts.Tokens, AllowAnonymous: opts.AllowAnonymous,
		MessageDomain: opts.MailDomain, Logger: logger,
		IdempotencyKeyLifetime: opts.IdempotencyKeyLifetime, PaymentMaxAttempts: opts.PaymentMaxAttempts,
		Sources: sources, Metrics: m, RiverUI: ui, AdminUser: opts.AdminUser, AdminPassword: opts.AdminPassword,
	})
	if err != nil {
		return nil, err
	}
	return &App{Pool: opts.Pool, Runner: r, Group: group, API: srv, Metrics: m, Logger: logger, riverUI: ui}, nil
}

// Start starts the workers and serves the API on addr ("127.0.0.1:0" picks
// a free port; see URL).
func (a *App) Start(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	if err := a.Runner.Start(ctx); err != nil {
		l.Close()
		return err
	}
	uiCtx, stopUI := context.WithCancel(context.WithoutCancel(ctx))
	if err := a.riverUI.Start(uiCtx); err != nil {
		stopUI()
		l.Close()
		return fmt.Errorf("starting River UI: %w", err)
	}
	a.stopRiverUI = stopUI
	a.listener = l
	a.httpServer = &http.Server{
		Handler:           a.API.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	a.serveDone = make(chan error, 1)
	go func() { a.serveDone <- a.httpServer.Serve(l) }()
	return nil
}

// URL is the API's base URL, e.g. http://127.0.0.1:8080.
func (a *App) URL() string { return "http://" + a.listener.Addr().String() }

// Stop stops taking requests (in-flight ones finish), then stops the runner
// within the rest of ctx's budget (see runner.Runner.Stop).
func (a *App) Stop(ctx context.Context) error {
	var errs []error
	if a.httpServer != nil {
		httpCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := a.httpServer.Shutdown(httpCtx); err != nil {
			// Connections that never sent a request (or a client that does
			// not read its answer) hold Shutdown up; requests are done.
			a.Logger.Warn("closing HTTP connections that did not finish in time", "error", err)
			_ = a.httpServer.Close()
		}
		cancel()
		if err := <-a.serveDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs = append(errs, err)
		}
	}
	if err := a.Runner.Stop(ctx); err != nil {
		errs = append(errs, err)
	}
	if a.stopRiverUI != nil {
		a.stopRiverUI()
	}
	return errors.Join(errs...)
}
