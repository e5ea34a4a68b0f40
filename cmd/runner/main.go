// Command runner is the pgonce job runner: a transactional-outbox job runner
// on PostgreSQL whose dedupe and idempotency the database enforces.
//
//	runner serve              HTTP API and workers against DATABASE_URL
//	runner serve --dev        the same on a throwaway database and SMTP sink
//	runner demo               a realistic workload end to end, then an audit
//	runner migrate up|down|status
//	runner gateway            the reference payment gateway
//	runner sync SOURCE        sync a data source now
//	runner inspect            what the database knows, as tables
//	runner chaos              kill runners and restart PostgreSQL under load, then audit
//	runner bench              throughput and latency against the commit ceiling and bare River
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

const usage = `runner: a PostgreSQL transactional-outbox job runner

Usage:
  runner serve [flags]              HTTP API and workers against DATABASE_URL (--dev: throwaway database and SMTP sink)
  runner demo [flags]               start everything on embedded defaults, drive signups, payments and a data sync, print an audit
  runner migrate up|down|status     manage the schema (River's tables included) in DATABASE_URL
  runner gateway [flags]            run the reference payment gateway (with fault injection)
  runner sync [flags] SOURCE        sync a data source of SYNC_SOURCES now, with progress
  runner inspect [job ID|key KEY]   what the database knows: a summary, or the story of a job or an Idempotency-Key
  runner chaos [flags]              kill runners and restart PostgreSQL under load, then audit (make chaos)
  runner bench [flags]              measure against the commit ceiling and bare River, print the table (make bench)

Run "runner <command> -h" for a command's flags.`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// errUsage marks a mistake in the command line (exit code 2).
var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(ctx, args[1:], stdout, stderr)
	case "demo":
		err = demoCommand(ctx, args[1:], stdout, stderr)
	case "migrate":
		err = migrate(ctx, args[1:], stdout, stderr)
	case "gateway":
		err = gatewayCommand(ctx, args[1:], stdout, stderr)
	case "sync":
		err = syncCommand(ctx, args[1:], stdout, stderr)
	case "inspect":
		err = inspectCommand(ctx, args[1:], stdout, stderr)
	case "chaos":
		err = chaosCommand(ctx, args[1:], stdout, stderr)
	case "bench":
		err = benchCommand(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "runner: unknown command %q\n\n%s\n", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "runner %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "runner %s: %v\n", args[0], err)
		return 1
	}
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%w: log level %q: want debug, info, warn or error", errUsage, level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(format) {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("%w: log format %q: want json or text", errUsage, format)
}
