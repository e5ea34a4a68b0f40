// Package bench measures the runner against the machine's limit and against
// bare River, every figure in the same run so that ratios hold on a noisy
// machine: what `runner bench` (and `make bench`) prints.
//
// Sections, in the order they run:
//
//   - ceiling: single-row INSERT commits per second at the runner's
//     concurrency (the pool size): what PostgreSQL can commit here.
//   - river: bare River with the same pool and fetch settings, a no-op worker
//     and a transactional worker (insert a row, JobCompleteTx, commit).
//   - product: jobs enqueued in business transactions and worked end to end:
//     the runner's transactional worker (the same insert as bare River's,
//     through runner.WorkTx and group commit), welcome emails over SMTP and
//     payments through the reference gateway.
//   - dedupe: plain enqueue, unique enqueue of new keys, of duplicate keys.
//   - http: POST /api/payments with new keys and replays, against a plain
//     handler doing one INSERT.
//   - growth: the welcome-email throughput again with millions of completed
//     jobs and email-log rows retained.
//
// Each section works in databases of its own (copies of a migrated template
// on the server DatabaseURL names), created and dropped by the run.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/pgonce/pgonce/runner"
)

// Defaults for Config.
const (
	// DurationDefault is how long each timed phase runs.
	DurationDefault = 4 * time.Second
	// JobsDefault is the backlog each job scenario drains.
	JobsDefault = 10_000
	// RetainedDefault is how many completed jobs and email-log rows the
	// growth section keeps while it measures.
	RetainedDefault = 5_000_000
	// HTTPClientsDefault is how many HTTP clients send requests at once.
	HTTPClientsDefault = 8
	// LatencyRateDefault is the load, in jobs per second enqueued by
	// business transactions, that job latencies are measured at.
	LatencyRateDefault = 500
)

// Sections lists the sections in the order they run.
var Sections = []string{"ceiling", "river", "product", "dedupe", "http", "growth"}

// Config configures a run. Zero fields take their defaults.
type Config struct {
	// DatabaseURL is the server to measure, as a role that may create
	// databases (the run creates and drops databases named pgonce_bench_*).
	// Required.
	DatabaseURL string

	// Clients is the concurrency of the commit ceiling and of the dedupe
	// section, and the pool size of every runner and River client.
	//
	// Defaults to runner.PoolMaxConnsDefault (32).
	Clients int

	// Duration is how long each timed phase runs.
	//
	// Defaults to DurationDefault (4 s).
	Duration time.Duration

	// Jobs is the backlog each job scenario drains (the payment and email
	// scenarios use half as many).
	//
	// Defaults to JobsDefault (10,000).
	Jobs int

	// Retained is the number of completed jobs, users and email-log rows the
	// growth section seeds before it measures. Negative skips the section.
	//
	// Defaults to RetainedDefault (5,000,000).
	Retained int

	// HTTPClients is how many HTTP clients send requests at once.
	//
	// Defaults to HTTPClientsDefault (8).
	HTTPClients int

	// LatencyRate is the load job latencies are measured at, in jobs per
	// second enqueued by business transactions while the workers run. The
	// same for every scenario, so that their latencies compare; it should be
	// well below each one's throughput (enqueueing costs about as much
	// database time as working).
	//
	// Defaults to LatencyRateDefault (500).
	LatencyRate float64

	// Sections to run; empty runs every one. The ratios of a section need the
	// ones they are taken against (ceiling, river).
	Sections []string

	// Progress receives a line per step and progress bars. Nil shows nothing.
	Progress io.Writer

	// Logger receives the runners' and the API's logs. Defaults to warnings
	// and errors on Progress.
	Logger *slog.Logger
}

func (c *Config) withDefaults() (*Config, error) {
	out := *c
	if out.DatabaseURL == "" {
		return nil, errors.New("bench: DatabaseURL is required")
	}
	if out.Clients == 0 {
		out.Clients = runner.PoolMaxConnsDefault
	}
	if out.Duration == 0 {
		out.Duration = DurationDefault
	}
	if out.Jobs == 0 {
		out.Jobs = JobsDefault
	}
	if out.Retained == 0 {
		out.Retained = RetainedDefault
	}
	if out.HTTPClients == 0 {
		out.HTTPClients = HTTPClientsDefault
	}
	if out.LatencyRate == 0 {
		out.LatencyRate = LatencyRateDefault
	}
	if out.Logger == nil {
		w := out.Progress
		if w == nil {
			w = io.Discard
		}
		out.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	switch {
	case out.Clients < 2:
		return nil, fmt.Errorf("bench: Clients must be at least 2, got %d", out.Clients)
	case out.Duration < 100*time.Millisecond:
		return nil, fmt.Errorf("bench: Duration must be at least 100ms, got %s", out.Duration)
	case out.Jobs < 100:
		return nil, fmt.Errorf("bench: Jobs must be at least 100, got %d", out.Jobs)
	case out.LatencyRate < 1:
		return nil, fmt.Errorf("bench: LatencyRate must be at least 1 job/s, got %g", out.LatencyRate)
	case out.HTTPClients < 1:
		return nil, fmt.Errorf("bench: HTTPClients must be at least 1, got %d", out.HTTPClients)
	}
	for _, s := range out.Sections {
		if !slices.Contains(Sections, s) {
			return nil, fmt.Errorf("bench: unknown section %q (want one of %v)", s, Sections)
		}
	}
	return &out, nil
}

func (c *Config) runs(section string) bool {
	return len(c.Sections) == 0 || slices.Contains(c.Sections, section)
}

// Run runs the benchmark and returns its report.
func Run(ctx context.Context, cfg *Config) (*Report, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	b := &bench{cfg: c, report: &Report{Started: time.Now().UTC(), Settings: Settings{
		Clients: c.Clients, Duration: c.Duration.String(), Jobs: c.Jobs, Retained: c.Retained, HTTPClients: c.HTTPClients,
		FetchCooldown: runner.FetchCooldownDefault.String(), MaxWorkers: runner.MaxWorkersDefault,
		GroupLanes: runner.GroupLanesDefault, GroupMaxBatch: runner.GroupMaxBatchDefault,
	}}}
	if err := b.open(ctx); err != nil {
		return nil, err
	}
	defer b.close()
	b.report.Settings.Server = b.serverVersion

	steps := []struct {
		section string
		run     func(context.Context) error
	}{
		{"ceiling", b.ceiling},
		{"river", b.bareRiver},
		{"product", b.product},
		{"dedupe", b.dedupe},
		{"http", b.http},
		{"growth", b.growth},
	}
	for _, s := range steps {
		if !c.runs(s.section) || (s.section == "growth" && c.Retained < 0) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		b.logf("== %s", s.section)
		if err := s.run(ctx); err != nil {
			return nil, fmt.Errorf("bench: %s: %w", s.section, err)
		}
	}
	b.report.finish()
	b.report.Elapsed = time.Since(b.report.Started).Round(time.Second).String()
	return b.report, nil
}

// bench is one run.
type bench struct {
	cfg    *Config
	report *Report

	serverVersion string
	template      string
	dbCounter     int
}

func (b *bench) logf(format string, args ...any) {
	if b.cfg.Progress != nil {
		fmt.Fprintf(b.cfg.Progress, "bench: "+format+"\n", args...)
	}
}
