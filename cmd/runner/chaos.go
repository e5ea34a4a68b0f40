package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/pgonce/pgonce/internal/chaos"
)

func chaosCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("chaos", "Usage: runner chaos [flags]\n\n"+
		"Starts its own PostgreSQL and several runner processes sharing the queues, drives them with the demo's\n"+
		"workloads (signups, payments with retries and reused keys, a data sync with a concurrent writer), and\n"+
		"meanwhile SIGKILLs and SIGTERMs runners (starting replacements), restarts PostgreSQL and switches gateway\n"+
		"and SMTP faults on and off. Then it drains and audits: every accepted request had its effect exactly\n"+
		"once, no job lost or left running. Prints a report; exits 1 on any violation.")
	fs.SetOutput(stderr)
	runners := fs.int("runners", "CHAOS_RUNNERS", 4, "runner processes at once")
	duration := fs.duration("duration", "CHAOS_DURATION", 60*time.Second, "how long the load and the chaos last")
	killEvery := fs.duration("kill-every", "CHAOS_KILL_EVERY", 3*time.Second, "pause between two runner stops (SIGKILL, or SIGTERM one time in three)")
	restarts := fs.int("pg-restarts", "CHAOS_PG_RESTARTS", 2, "PostgreSQL restarts during the run")
	users := fs.int("users", "CHAOS_USERS", 1000, "users signing up")
	payments := fs.int("payments", "CHAOS_PAYMENTS", 1000, "payments submitted")
	seed := fs.int("seed", "CHAOS_SEED", 1, "seed of what the run asks for (timing is not repeatable)")
	logDir := fs.string("log-dir", "CHAOS_LOG_DIR", "", "where the runners' logs go (default: a temporary directory)")
	if err := fs.parse(args); err != nil {
		return err
	}
	if *runners < 1 || *duration < 10*time.Second || *killEvery <= 0 || *users < 1 || *payments < 1 || *restarts < 0 {
		return fmt.Errorf("%w: runners, users and payments at least 1, duration at least 10s", errUsage)
	}
	binary, err := os.Executable()
	if err != nil {
		return err
	}
	report, err := chaos.Run(ctx, &chaos.Config{
		Binary: binary, Runners: *runners, Duration: *duration, KillEvery: *killEvery, PostgresRestarts: *restarts,
		Users: *users, Payments: *payments, Seed: uint64(*seed), LogDir: *logDir, Progress: stderr,
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	if err := report.Audit.Print(stdout); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "runner logs: %s\n", report.LogDir)
	if report.Violations > 0 {
		return fmt.Errorf("%d violation(s) of the invariants", report.Violations)
	}
	fmt.Fprintln(stdout, "no invariant violated")
	return nil
}
