package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/idempotency"
	"github.com/pgonce/pgonce/internal/app"
	"github.com/pgonce/pgonce/internal/tracing"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/runner"
)

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", "Usage: runner serve [flags]\n\nServes the HTTP API and works jobs until SIGINT or SIGTERM, then shuts down gracefully.")
	fs.SetOutput(stderr)
	dev := fs.bool("dev", "", false, "development mode: a throwaway database when DATABASE_URL is unset, an in-process SMTP sink when SMTP_URL is unset, the reference gateway in process when GATEWAY_URL is unset, and a generated API token when API_TOKENS is unset")
	databaseURL := fs.string("database-url", "DATABASE_URL", "", "PostgreSQL URL (required unless --dev)")
	listen := fs.string("listen", "LISTEN_ADDR", "127.0.0.1:8080", "HTTP listen address")
	smtpURL := fs.string("smtp-url", "SMTP_URL", "", "SMTP server, smtp://[user:pass@]host[:port][?tls=none|opportunistic|starttls&timeout=15s] or smtps://[user:pass@]host[:port][?timeout=15s] (required unless --dev)")
	mailFrom := fs.string("mail-from", "MAIL_FROM", "", "sender address of emails (default welcome@<mail-domain>)")
	mailDomain := fs.string("mail-domain", "MAIL_DOMAIN", jobs.DomainDefault, "domain of Message-IDs")
	emailLease := fs.duration("email-lease", "EMAIL_LEASE", jobs.EmailLeaseDefault, "how long a send attempt holds an email (longer than any SMTP conversation); a process killed mid-send delays the retry this long")
	tokens := fs.string("api-tokens", "API_TOKENS", "", "API clients as principal:token pairs, comma-separated; tokens at least 16 characters (required unless --dev)")
	adminCreds := fs.string("admin-credentials", "ADMIN_CREDENTIALS", "", "user:password (password 12+ characters) for the operator routes: /metrics, /riverui/, GET /api/users/{id}, GET /api/jobs/{id}, POST /api/jobs/{id}/retry (HTTP Basic); unset, they refuse everyone (--dev generates some)")
	gatewayURL := fs.string("gateway-url", "GATEWAY_URL", "", "payment gateway base URL, speaking the reference gateway's protocol (required unless --dev)")
	gatewayToken := fs.string("gateway-token", "GATEWAY_TOKEN", "", "bearer token for the gateway")
	gatewayTimeout := fs.duration("gateway-timeout", "GATEWAY_TIMEOUT", gateway.ClientTimeoutDefault, "timeout of each charge request (a timeout is retried with the same key)")
	paymentAttempts := fs.int("payment-max-attempts", "PAYMENT_MAX_ATTEMPTS", jobs.PaymentMaxAttemptsDefault, "attempts to charge a payment before its job is discarded")
	keyLifetime := fs.duration("idempotency-key-lifetime", "IDEMPOTENCY_KEY_LIFETIME", idempotency.LifetimeDefault, "how long an Idempotency-Key's stored answer is replayed")
	purgeInterval := fs.duration("idempotency-purge-interval", "IDEMPOTENCY_PURGE_INTERVAL", idempotency.PurgeIntervalDefault, "how often expired Idempotency-Key answers are deleted")
	syncSources := fs.string("sync-sources", "SYNC_SOURCES", "", "data sources, name=URL;name=URL with postgres://...?sync_table=t or http(s):// feed URLs")
	syncInterval := fs.duration("sync-interval", "SYNC_INTERVAL", 0, "sync every source this often (0: only on request)")
	syncPageSize := fs.int("sync-page-size", "SYNC_PAGE_SIZE", jobs.SyncPageSizeDefault, "changes per sync page (one transaction each)")
	migrateUp := fs.bool("migrate", "MIGRATE", true, "apply pending migrations at start")
	rc := runnerFlags(fs, runner.BackoffMinDefault)
	logFormat := fs.string("log-format", "LOG_FORMAT", "json", "log format: json or text")
	logLevel := fs.string("log-level", "LOG_LEVEL", "info", "log level: debug, info, warn or error")
	if err := fs.parse(args); err != nil {
		return err
	}
	logger, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	logf := func(format string, a ...any) { logger.Info(fmt.Sprintf(format, a...)) }

	if !*dev {
		var missing []string
		if *databaseURL == "" {
			missing = append(missing, "DATABASE_URL")
		}
		if *smtpURL == "" {
			missing = append(missing, "SMTP_URL")
		}
		if *tokens == "" {
			missing = append(missing, "API_TOKENS")
		}
		if *gatewayURL == "" {
			missing = append(missing, "GATEWAY_URL")
		}
		if len(missing) > 0 {
			return fmt.Errorf("%w: %v must be set (or run with --dev for throwaway defaults)", errUsage, missing)
		}
	}
	tokenMap, err := parseTokens(*tokens)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if len(tokenMap) == 0 {
		var b [16]byte
		_, _ = rand.Read(b[:])
		token := hex.EncodeToString(b[:])
		tokenMap[token] = "dev"
		fmt.Fprintf(stdout, "dev API token (principal \"dev\"): %s\n", token)
	}
	adminUser, adminPassword, _ := strings.Cut(*adminCreds, ":")
	if *adminCreds != "" && (adminUser == "" || len(adminPassword) < 12) {
		return fmt.Errorf("%w: ADMIN_CREDENTIALS must be user:password with a password of at least 12 characters", errUsage)
	}
	if *adminCreds == "" && *dev {
		var b [12]byte
		_, _ = rand.Read(b[:])
		adminUser, adminPassword = "admin", hex.EncodeToString(b[:])
		fmt.Fprintf(stdout, "dev operator credentials (/metrics, /riverui/, users and jobs routes): %s:%s\n", adminUser, adminPassword)
	}
	shutdownTracing, tracing, err := tracing.Setup(ctx, "pgonce")
	if err != nil {
		return err
	}
	defer shutdownTracing(context.Background()) //nolint:errcheck
	if tracing {
		logf("exporting traces over OTLP")
	}

	if *paymentAttempts < 1 || *keyLifetime <= 0 || *purgeInterval <= 0 || *gatewayTimeout <= 0 {
		return fmt.Errorf("%w: payment-max-attempts, idempotency-key-lifetime, idempotency-purge-interval and gateway-timeout must be positive", errUsage)
	}
	sender, sink, err := mailSender(*smtpURL, logf)
	if err != nil {
		return err
	}
	if sink != nil {
		defer sink.Close()
	}
	gw, localGW, err := paymentGateway(*gatewayURL, *gatewayToken, *gatewayTimeout, gateway.Faults{}, logf)
	if err != nil {
		return err
	}
	if localGW != nil {
		defer localGW.Close()
	}
	if *syncPageSize < 1 || *syncInterval < 0 {
		return fmt.Errorf("%w: sync-page-size must be positive and sync-interval not negative", errUsage)
	}
	db, err := openDatabase(ctx, *databaseURL, *migrateUp, logf)
	if err != nil {
		return err
	}
	sources, err := openSources(ctx, *syncSources, *syncInterval)
	if err != nil {
		db.Close()
		return err
	}
	defer sources.Close()
	cfg, err := rc.config()
	if err != nil {
		db.Close()
		return err
	}
	groupCfg, noGroup, err := rc.group()
	if err != nil {
		db.Close()
		return err
	}
	a, err := app.New(&app.Options{
		Pool: db.Pool, Mailer: sender, Gateway: gw, MailFrom: *mailFrom, MailDomain: *mailDomain, EmailLeaseFor: *emailLease,
		Tokens: tokenMap, AdminUser: adminUser, AdminPassword: adminPassword, Runner: *cfg, Queues: rc.queues(), Logger: logger,
		IdempotencyKeyLifetime: *keyLifetime, PurgeInterval: *purgeInterval, PaymentMaxAttempts: *paymentAttempts,
		Sources: sources.sources, SyncIntervals: sources.intervals, SyncPageSize: *syncPageSize,
		GroupCommit: groupCfg, NoGroupCommit: noGroup,
	})
	if err != nil {
		db.Close()
		return err
	}
	if err := a.Start(ctx, *listen); err != nil {
		db.Close()
		return err
	}
	logger.Info("serving", "url", a.URL(), "runner_id", a.Runner.ID(), "embedded_database", db.Embedded != nil)
	fmt.Fprintf(stdout, "listening on %s\n", a.URL())
	if db.Embedded != nil {
		fmt.Fprintf(stdout, "throwaway database (removed at exit): %s\n  DATABASE_URL='%s' bin/runner inspect\n", db.URL, db.URL)
	}

	<-ctx.Done()
	logger.Info("shutting down", "budget", cfg.ShutdownTimeout.String())
	stopCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	stopErr := a.Stop(stopCtx)
	var shutdownErr *runner.ShutdownError
	if errors.As(stopErr, &shutdownErr) {
		// Goroutines of jobs that ignored cancellation may still hold
		// connections: closing the pool would wait for them forever.
		logger.Warn("jobs ignored cancellation and were requeued", "job_ids", shutdownErr.Requeued)
		if db.Embedded != nil {
			_ = db.Embedded.Stop(context.Background())
		}
		return nil
	}
	db.Close()
	if stopErr != nil {
		return stopErr
	}
	logger.Info("stopped")
	return nil
}

// runnerSettings are the runner's tuning flags, shared by serve and demo.
type runnerSettings struct {
	id              *string
	emailWorkers    *int
	paymentWorkers  *int
	syncWorkers     *int
	defaultWorkers  *int
	fetchCooldown   *time.Duration
	jobTimeout      *time.Duration
	rescueAfter     *time.Duration
	shutdownTimeout *time.Duration
	retryMin        *time.Duration
	retryMax        *time.Duration
	groupCommit     *bool
	groupLanes      *int
	groupMaxBatch   *int
	groupMaxDelay   *time.Duration
}

func runnerFlags(fs *flags, retryMin time.Duration) *runnerSettings {
	return &runnerSettings{
		id:              fs.string("runner-id", "RUNNER_ID", "", "this process's name among the runners of the database (default: host, pid and start time)"),
		emailWorkers:    fs.int("email-workers", "EMAIL_WORKERS", 50, "jobs the email queue works at once"),
		paymentWorkers:  fs.int("payment-workers", "PAYMENT_WORKERS", 50, "jobs the payment queue works at once"),
		syncWorkers:     fs.int("sync-workers", "SYNC_WORKERS", 10, "jobs the sync queue works at once"),
		defaultWorkers:  fs.int("default-workers", "DEFAULT_WORKERS", 50, "jobs the default queue works at once"),
		fetchCooldown:   fs.duration("fetch-cooldown", "FETCH_COOLDOWN", runner.FetchCooldownDefault, "minimum time between two fetches of a queue"),
		jobTimeout:      fs.duration("job-timeout", "JOB_TIMEOUT", runner.JobTimeoutDefault, "how long a job may run before its context is cancelled"),
		rescueAfter:     fs.duration("rescue-after", "RESCUE_AFTER", 0, "how long a job may stay running before it is presumed dead and retried (default job-timeout + 1m)"),
		shutdownTimeout: fs.duration("shutdown-timeout", "SHUTDOWN_TIMEOUT", runner.ShutdownTimeoutDefault, "graceful shutdown budget"),
		retryMin:        fs.duration("retry-min", "RETRY_MIN", retryMin, "delay before a failed job's first retry (doubling after)"),
		retryMax:        fs.duration("retry-max", "RETRY_MAX", runner.BackoffMaxDefault, "longest delay between retries"),
		groupCommit:     fs.bool("group-commit", "GROUP_COMMIT", true, "commit the email and payment jobs' transactions in groups (one commit for many jobs, each in its own savepoint); false gives each its own commit"),
		groupLanes:      fs.int("group-lanes", "GROUP_LANES", 0, "group transactions open at once, each on its own connection (0: 8, or a quarter of the pool when that is fewer)"),
		groupMaxBatch:   fs.int("group-max-batch", "GROUP_MAX_BATCH", runner.GroupMaxBatchDefault, "most jobs one group commit carries (1 to 60)"),
		groupMaxDelay:   fs.duration("group-max-delay", "GROUP_MAX_DELAY", runner.GroupMaxDelayDefault, "longest a group stays open for more jobs while others keep arriving"),
	}
}

// group returns the group commit settings, and whether group commit is off.
func (s *runnerSettings) group() (cfg runner.GroupConfig, off bool, err error) {
	if *s.groupLanes < 0 || *s.groupMaxBatch < 1 || *s.groupMaxBatch > 60 || *s.groupMaxDelay <= 0 {
		return cfg, false, fmt.Errorf("%w: group-lanes must not be negative, group-max-batch must be 1 to 60, group-max-delay positive", errUsage)
	}
	return runner.GroupConfig{Lanes: *s.groupLanes, MaxBatch: *s.groupMaxBatch, MaxDelay: *s.groupMaxDelay}, !*s.groupCommit, nil
}

func (s *runnerSettings) config() (*runner.Config, error) {
	if *s.retryMin <= 0 || *s.retryMax < *s.retryMin {
		return nil, fmt.Errorf("%w: retry-min must be positive and at most retry-max", errUsage)
	}
	return &runner.Config{
		ID:                   *s.id,
		FetchCooldown:        *s.fetchCooldown,
		JobTimeout:           *s.jobTimeout,
		RescueStuckJobsAfter: *s.rescueAfter,
		ShutdownTimeout:      *s.shutdownTimeout,
		RetryPolicy:          &runner.Backoff{Min: *s.retryMin, Max: *s.retryMax},
	}, nil
}

func (s *runnerSettings) queues() *jobs.QueueSizes {
	return &jobs.QueueSizes{Email: *s.emailWorkers, Payment: *s.paymentWorkers, Sync: *s.syncWorkers, Default: *s.defaultWorkers}
}
