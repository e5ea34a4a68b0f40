package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pgonce/pgonce/internal/app"
	"github.com/pgonce/pgonce/internal/demo"
	"github.com/pgonce/pgonce/internal/smtpsink"
	"github.com/pgonce/pgonce/jobs"
)

func demoCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", "Usage: runner demo [flags]\n\n"+
		"Starts the runner and its HTTP API (on a throwaway PostgreSQL and an in-process SMTP sink unless\n"+
		"DATABASE_URL is set), drives it over HTTP with a signup workload in which a share of users submit\n"+
		"more than once, waits for every welcome email, and prints an audit. Exits 1 if an invariant fails.")
	fs.SetOutput(stderr)
	databaseURL := fs.string("database-url", "DATABASE_URL", "", "PostgreSQL URL (default: a throwaway server)")
	users := fs.int("users", "DEMO_USERS", 2000, "users signing up")
	dupShare := fs.float("dup-share", "DEMO_DUP_SHARE", 1.0/3, "share of users submitting more than once")
	concurrency := fs.int("concurrency", "DEMO_CONCURRENCY", 32, "users signing up at once")
	smtpFaults := fs.float("smtp-fault-rate", "DEMO_SMTP_FAULT_RATE", 0.03, "share of SMTP conversations the sink rejects temporarily (451), to exercise retries")
	smtpDrops := fs.float("smtp-drop-rate", "DEMO_SMTP_DROP_RATE", 0, "share of SMTP conversations the sink drops after receiving the data (in-doubt sends, delivered twice with one Message-ID)")
	drainTimeout := fs.duration("drain-timeout", "DEMO_DRAIN_TIMEOUT", 3*time.Minute, "how long to wait for every email after the last signup")
	rc := runnerFlags(fs, 200*time.Millisecond)
	logLevel := fs.string("log-level", "LOG_LEVEL", "warn", "log level: debug, info, warn or error")
	if err := fs.parse(args); err != nil {
		return err
	}
	if *users < 1 || *concurrency < 1 || *dupShare < 0 || *dupShare > 1 || *smtpFaults < 0 || *smtpDrops < 0 || *smtpFaults+*smtpDrops > 1 {
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
	logf("SMTP sink at %s (temporary rejections %.1f%%, drops after data %.1f%%)", sink.Addr(), 100**smtpFaults, 100**smtpDrops)
	var faults []smtpsink.Fault
	for _, f := range []struct {
		rate  float64
		fault smtpsink.Fault
	}{{*smtpFaults, smtpsink.FaultTempReject}, {*smtpDrops, smtpsink.FaultDropAfterData}} {
		// Weight the fault kinds by their rates.
		for range int(f.rate * 1000) {
			faults = append(faults, f.fault)
		}
	}
	sink.SetFaultRate(*smtpFaults+*smtpDrops, faults...)
	sender, err := mailerFor(sink)
	if err != nil {
		return err
	}

	cfg, err := rc.config()
	if err != nil {
		return err
	}
	token := randomHex(16)
	a, err := app.New(&app.Options{
		Pool: db.Pool, Mailer: sender, MailDomain: jobs.DomainDefault,
		Tokens: map[string]string{token: "demo"}, Runner: *cfg, Queues: rc.queues(), Logger: logger,
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

	run := &demo.Signups{
		BaseURL: a.URL(), Token: token, RunID: "run" + randomHex(4),
		Users: *users, DupShare: *dupShare, Concurrency: *concurrency, Progress: stderr,
	}
	res, err := run.Run(ctx)
	if err != nil {
		return err
	}
	waitCtx, cancel := context.WithTimeout(ctx, *drainTimeout)
	defer cancel()
	waitErr := demo.WaitForWelcomeEmails(waitCtx, db.Pool, run.Domain(), *users, stderr)
	if err := stop(); err != nil {
		logf("stopping: %v", err)
	}
	audit, err := demo.AuditSignups(context.WithoutCancel(ctx), db.Pool, sink, run, res)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	if err := audit.Print(stdout); err != nil {
		return err
	}
	if len(res.FailedSamples) > 0 {
		fmt.Fprintf(stdout, "sample failed requests:\n  %s\n", strings.Join(res.FailedSamples, "\n  "))
	}
	if waitErr != nil {
		return waitErr
	}
	if failed := audit.Failed(); len(failed) > 0 {
		return fmt.Errorf("%d invariant(s) failed, first: %s = %s, expected %s", len(failed), failed[0].Name, failed[0].Value, failed[0].Expected)
	}
	fmt.Fprintln(stdout, "every invariant holds")
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
