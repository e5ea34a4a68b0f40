package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/pgonce/pgonce/internal/bench"
	"github.com/pgonce/pgonce/internal/pgembed"
)

func benchCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench", "Usage: runner bench [flags]\n\n"+
		"Measures, in one run so that the ratios hold on a noisy machine: the commit ceiling of PostgreSQL at the\n"+
		"runner's concurrency, bare River (no-op and transactional workers), the runner's jobs end to end (the\n"+
		"transactional worker with group commit, welcome emails over SMTP, payments through the gateway), the cost\n"+
		"of dedupe at enqueue, POST /api/payments with new keys and replays, and throughput with millions of\n"+
		"rows retained. Prints one table of figures and their ratios, and one of the targets.\n\n"+
		"It ignores DATABASE_URL and starts a throwaway PostgreSQL (durable: fsync on). With --database-url (or\n"+
		"BENCH_DATABASE_URL) it creates and drops databases named pgonce_bench_* there: use a server you can spare,\n"+
		"not production.")
	fs.SetOutput(stderr)
	databaseURL := fs.string("database-url", "BENCH_DATABASE_URL", "", "PostgreSQL server to measure, as a role that may create databases (default: a throwaway server)")
	clients := fs.int("clients", "BENCH_CLIENTS", 0, "concurrency of the ceiling and dedupe loops, and pool size of every runner (default 32, the runner's pool size)")
	duration := fs.duration("duration", "BENCH_DURATION", bench.DurationDefault, "length of each timed phase")
	jobsN := fs.int("jobs", "BENCH_JOBS", bench.JobsDefault, "backlog each job scenario drains (emails and payments: half)")
	retained := fs.int("retained", "BENCH_RETAINED", bench.RetainedDefault, "completed jobs and email-log rows the growth section retains (-1 skips it)")
	latencyRate := fs.float("latency-rate", "BENCH_LATENCY_RATE", bench.LatencyRateDefault, "jobs per second enqueued while job latencies are measured")
	httpClients := fs.int("http-clients", "BENCH_HTTP_CLIENTS", bench.HTTPClientsDefault, "HTTP clients sending at once")
	sections := fs.string("sections", "BENCH_SECTIONS", "", "comma-separated sections to run (default all): "+strings.Join(bench.Sections, ","))
	jsonOut := fs.bool("json", "", false, "print the report as JSON instead of tables")
	cpuProfile := fs.string("cpuprofile", "", "", "write a CPU profile of this process to this file (go tool pprof)")
	if err := fs.parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %v", errUsage, fs.Args())
	}
	if *retained == 0 || *retained < -1 {
		return fmt.Errorf("%w: retained must be positive, or -1 to skip the growth section", errUsage)
	}
	var only []string
	for _, s := range strings.Split(*sections, ",") {
		if s = strings.TrimSpace(s); s != "" {
			only = append(only, s)
		}
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "bench: "+format+"\n", a...) }

	url := *databaseURL
	if url == "" {
		logf("starting a throwaway PostgreSQL (durable settings; removed at exit)")
		srv, err := pgembed.Start(ctx, &pgembed.Options{Logf: logf, Settings: map[string]string{
			// What a dedicated database server would have; durability
			// (fsync, synchronous_commit, full_page_writes) stays on.
			"shared_buffers":  "512MB",
			"max_wal_size":    "4GB",
			"max_connections": "200",
			// No replica: the growth section's bulk load skips most WAL.
			"wal_level":       "minimal",
			"max_wal_senders": "0",
		}})
		if err != nil {
			return err
		}
		defer func() {
			stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = srv.Stop(stopCtx)
		}()
		url = srv.URL
	}
	cfg := &bench.Config{
		DatabaseURL: url, Clients: *clients, Duration: *duration, Jobs: *jobsN, Retained: *retained,
		HTTPClients: *httpClients, LatencyRate: *latencyRate, Sections: only, Progress: stderr,
	}
	if cfg.Clients < 0 || cfg.Jobs < 0 || cfg.HTTPClients < 0 || cfg.Duration <= 0 {
		return fmt.Errorf("%w: clients, jobs, http-clients and duration must be positive", errUsage)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	report, err := bench.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if *jsonOut {
		return report.PrintJSON(stdout)
	}
	fmt.Fprintln(stdout)
	return report.Print(stdout)
}
