package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/internal/app"
	"github.com/pgonce/pgonce/internal/demo"
	"github.com/pgonce/pgonce/internal/inspect"
	"github.com/pgonce/pgonce/internal/smtpsink"
	"github.com/pgonce/pgonce/jobs"
)

func demoCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", "Usage: runner demo [flags]\n\n"+
		"Starts the runner and its HTTP API (on a throwaway PostgreSQL, an in-process SMTP sink and an in-process\n"+
		"reference payment gateway), drives it over HTTP with a signup workload (a share of users submit more\n"+
		"than once), a payment workload (clients retry after timeouts with the same Idempotency-Key,\n"+
		"double-submit, reuse keys with another amount) with SMTP and gateway faults switched on, and a data sync\n"+
		"from a source table that concurrent writers keep changing; waits for every email, charge and sync, and\n"+
		"prints an audit of each. Exits 1 if an invariant fails.\n\n"+
		"It writes thousands of rows: it ignores DATABASE_URL, and uses a database of yours only when given\n"+
		"--database-url (or DEMO_DATABASE_URL).")
	fs.SetOutput(stderr)
	databaseURL := fs.string("database-url", "DEMO_DATABASE_URL", "", "PostgreSQL URL to run the demo in, which it fills with demo users and payments and a pgonce_demo_source database (default: a throwaway server)")
	users := fs.int("users", "DEMO_USERS", 2000, "users signing up")
	dupShare := fs.float("dup-share", "DEMO_DUP_SHARE", 1.0/3, "share of users submitting more than once")
	concurrency := fs.int("concurrency", "DEMO_CONCURRENCY", 32, "users signing up at once")
	smtpFaults := fs.float("smtp-fault-rate", "DEMO_SMTP_FAULT_RATE", 0.03, "share of SMTP conversations the sink rejects temporarily (451), to exercise retries")
	smtpDrops := fs.float("smtp-drop-rate", "DEMO_SMTP_DROP_RATE", 0, "share of SMTP conversations the sink drops after receiving the data (in-doubt sends, delivered twice with one Message-ID)")
	smtpAcceptDrops := fs.float("smtp-accept-drop-rate", "DEMO_SMTP_ACCEPT_DROP_RATE", 0.01, "share of SMTP conversations the sink drops right after accepting the message (delivered; the sender's next command fails)")
	payments := fs.int("payments", "DEMO_PAYMENTS", 2000, "payments submitted (0 skips the payment workload)")
	gwTimeout := fs.duration("gateway-timeout", "GATEWAY_TIMEOUT", 300*time.Millisecond, "timeout of each charge request")
	syncDuration := fs.duration("sync-duration", "DEMO_SYNC_DURATION", 8*time.Second, "how long writers change the sync source concurrently (0 skips the sync workload)")
	syncBulk := fs.int("sync-bulk", "DEMO_SYNC_BULK", 20_000, "rows written at once and synced alone first, to measure the sync rate")
	gwFaults := faultFlags(fs, gateway.Faults{ServerError: 0.05, TimeoutAfterCharge: 0.03, Decline: 0.03, RateLimit: 0.02})
	drainTimeout := fs.duration("drain-timeout", "DEMO_DRAIN_TIMEOUT", 3*time.Minute, "how long to wait for every email and charge after the last request")
	keep := fs.bool("keep", "", false, "keep the throwaway database running after the audit (until Ctrl-C), to look at it with runner inspect or psql")
	rc := runnerFlags(fs, 200*time.Millisecond)
	logLevel := fs.string("log-level", "LOG_LEVEL", "warn", "log level: debug, info, warn or error")
	if err := fs.parse(args); err != nil {
		return err
	}
	if *users < 1 || *payments < 0 || *concurrency < 1 || *dupShare < 0 || *dupShare > 1 || *smtpFaults < 0 || *smtpDrops < 0 ||
		*smtpAcceptDrops < 0 || *smtpFaults+*smtpDrops+*smtpAcceptDrops > 1 {
		return fmt.Errorf("%w: users and concurrency must be positive, rates between 0 and 1", errUsage)
	}
	logger, err := newLogger(stderr, "text", *logLevel)
	if err != nil {
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "demo: "+format+"\n", a...) }

	db, err := openDatabase(ctx, *databaseURL, true, logf)
	if err != nil {
		return err
	}
	defer db.Close()
	sink, err := smtpsink.Start()
	if err != nil {
		return err
	}
	defer sink.Close()
	logf("SMTP sink at %s (temporary rejections %.1f%%, drops after data %.1f%%, drops after accepting %.1f%%)",
		sink.Addr(), 100**smtpFaults, 100**smtpDrops, 100**smtpAcceptDrops)
	var faults []smtpsink.Fault
	for _, f := range []struct {
		rate  float64
		fault smtpsink.Fault
	}{{*smtpFaults, smtpsink.FaultTempReject}, {*smtpDrops, smtpsink.FaultDropAfterData}, {*smtpAcceptDrops, smtpsink.FaultDropAfterAccept}} {
		// Weight the fault kinds by their rates.
		for range int(f.rate * 1000) {
			faults = append(faults, f.fault)
		}
	}
	sink.SetFaultRate(*smtpFaults+*smtpDrops+*smtpAcceptDrops, faults...)
	sender, err := mailerFor(sink)
	if err != nil {
		return err
	}

	gw, localGW, err := paymentGateway("", "", *gwTimeout, *gwFaults, logf)
	if err != nil {
		return err
	}
	defer localGW.Close()
	logf("gateway faults: %.0f%% 503, %.0f%% timeout after charging, %.0f%% declines, %.0f%% 429",
		100*gwFaults.ServerError, 100*gwFaults.TimeoutAfterCharge, 100*gwFaults.Decline, 100*gwFaults.RateLimit)

	cfg, err := rc.config()
	if err != nil {
		return err
	}
	groupCfg, noGroup, err := rc.group()
	if err != nil {
		return err
	}
	// The sync queue is worked by the sync workload's own workers, which it
	// restarts; this runner only enqueues syncs.
	sizes := rc.queues()
	cfg.Queues = jobs.Queues(sizes)
	delete(cfg.Queues, jobs.QueueSync)

	var sourceDB *pgxpool.Pool
	var demoSource *datasync.PostgresSource
	if *syncDuration > 0 {
		var closeSource func()
		sourceDB, closeSource, err = openDemoSource(ctx, db.URL, logf)
		if err != nil {
			return err
		}
		defer closeSource()
		if err := demo.SetupSourceTable(ctx, sourceDB); err != nil {
			return err
		}
		if demoSource, err = datasync.NewPostgresSource(sourceDB, demo.SourceTable); err != nil {
			return err
		}
	}
	clients := []demo.Client{{Principal: "shop-a", Token: randomHex(16)}, {Principal: "shop-b", Token: randomHex(16)}}
	tokens := map[string]string{}
	for _, c := range clients {
		tokens[c.Token] = c.Principal
	}
	var sources map[string]datasync.Source
	if demoSource != nil {
		sources = map[string]datasync.Source{"demo": demoSource}
	}
	a, err := app.New(&app.Options{
		Pool: db.Pool, Mailer: sender, Gateway: gw, MailDomain: jobs.DomainDefault,
		Tokens: tokens, Runner: *cfg, Logger: logger, Sources: sources,
		GroupCommit: groupCfg, NoGroupCommit: noGroup,
	})
	if err != nil {
		return err
	}
	if err := a.Start(ctx, "127.0.0.1:0"); err != nil {
		return err
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		stopCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		return a.Stop(stopCtx)
	}
	defer stop() //nolint:errcheck // the error path already reports
	logf("API at %s, runner %s", a.URL(), a.Runner.ID())

	runID := "run" + randomHex(4)
	signups := &demo.Signups{
		BaseURL: a.URL(), Token: clients[0].Token, RunID: runID,
		Users: *users, DupShare: *dupShare, Concurrency: *concurrency, Progress: stderr,
	}
	signupRes, err := signups.Run(ctx)
	if err != nil {
		return err
	}
	var pays *demo.Payments
	var payRes *demo.PaymentsResult
	if *payments > 0 {
		pays = &demo.Payments{BaseURL: a.URL(), Clients: clients, RunID: runID, Payments: *payments,
			Concurrency: *concurrency, Progress: stderr}
		if payRes, err = pays.Run(ctx); err != nil {
			return err
		}
	}

	var syncRun *demo.Sync
	var syncRes *demo.SyncResult
	if demoSource != nil {
		syncRun = &demo.Sync{BaseURL: a.URL(), Token: clients[0].Token, Name: "demo", Source: sourceDB, Dest: db.Pool,
			Src: demoSource, Bulk: *syncBulk, Duration: *syncDuration, Logger: logger, Progress: stderr}
		if syncRes, err = syncRun.Run(ctx); err != nil {
			return err
		}
	}

	waitCtx, cancel := context.WithTimeout(ctx, *drainTimeout)
	defer cancel()
	waitErr := demo.WaitForWelcomeEmails(waitCtx, db.Pool, signups.Domain(), *users, stderr)
	if waitErr == nil && pays != nil {
		waitErr = demo.WaitForPayments(waitCtx, db.Pool, runID, *payments, stderr)
	}
	if err := stop(); err != nil {
		logf("stopping: %v", err)
	}

	auditCtx := context.WithoutCancel(ctx)
	audits := []*demo.Audit{}
	signupAudit, err := demo.AuditSignups(auditCtx, db.Pool, sink, signups, signupRes)
	if err != nil {
		return err
	}
	audits = append(audits, signupAudit)
	if pays != nil {
		payAudit, err := demo.AuditPayments(auditCtx, db.Pool, localGW.Ledger(), localGW.Stats(), pays, payRes)
		if err != nil {
			return err
		}
		audits = append(audits, payAudit)
	}
	if syncRun != nil {
		syncAudit, err := demo.AuditSync(auditCtx, syncRun, syncRes)
		if err != nil {
			return err
		}
		audits = append(audits, syncAudit)
	}
	var failed []demo.Check
	for _, audit := range audits {
		fmt.Fprintln(stdout)
		if err := audit.Print(stdout); err != nil {
			return err
		}
		failed = append(failed, audit.Failed()...)
	}
	samples := signupRes.FailedSamples
	if payRes != nil {
		samples = append(samples, payRes.FailureSamples...)
	}
	if len(samples) > 0 {
		fmt.Fprintf(stdout, "sample failed requests:\n  %s\n", strings.Join(samples, "\n  "))
	}
	if summary, err := inspect.LoadSummary(auditCtx, db.Pool); err == nil {
		fmt.Fprintln(stdout, "\nWhat runner inspect shows now:")
		_ = printSummary(stdout, summary)
	}
	var result error
	switch {
	case waitErr != nil:
		result = waitErr
	case len(failed) > 0:
		result = fmt.Errorf("%d invariant(s) failed, first: %s = %s, expected %s", len(failed), failed[0].Name, failed[0].Value, failed[0].Expected)
	default:
		fmt.Fprintln(stdout, "\nevery invariant holds")
	}
	if *keep && db.Embedded != nil {
		fmt.Fprintf(stdout, "\nthe database stays up until Ctrl-C:\n  DATABASE_URL='%s' bin/runner inspect\n  psql '%s'\n", db.URL, db.URL)
		<-ctx.Done()
	}
	return result
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
