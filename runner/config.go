package runner

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"strconv"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// Defaults for Config. River's own defaults (FetchCooldown 100 ms, and
// pgxpool's MaxConns of max(4, NumCPU)) cap a worker that commits its effect
// and completion in one transaction near 1,000 jobs/s: a queue fetches at
// most MaxWorkers jobs per FetchCooldown, and every job needs a connection
// for its transaction. These defaults lift both limits.
const (
	// FetchCooldownDefault is the minimum time between two fetches of a
	// queue: 10 ms lets a queue of 100 workers take up to 10,000 jobs/s.
	FetchCooldownDefault = 10 * time.Millisecond

	// FetchPollIntervalDefault is how often a queue looks for jobs when no
	// insert notification arrived.
	FetchPollIntervalDefault = time.Second

	// MaxWorkersDefault is the number of jobs a queue works at once.
	MaxWorkersDefault = 100

	// JobTimeoutDefault is how long a job may run before its context is
	// cancelled.
	JobTimeoutDefault = time.Minute

	// RescueStuckJobsAfterDefault is added to JobTimeout to decide when a job
	// left running by a dead process goes back to the queue. River's default
	// is an hour; a process killed with SIGKILL would hold its jobs that long.
	RescueStuckJobsAfterDefault = time.Minute

	// MaxAttemptsDefault is the number of attempts before a job is discarded.
	MaxAttemptsDefault = 25

	// ShutdownTimeoutDefault is Stop's budget when its context has no deadline.
	ShutdownTimeoutDefault = 10 * time.Second

	// CompletedJobRetentionPeriodDefault is how long completed jobs stay in
	// river_job. While they stay, a unique job's duplicate is reported with
	// the completed job's id.
	CompletedJobRetentionPeriodDefault = 24 * time.Hour

	// PoolMaxConnsDefault is the MaxConns NewPool sets: enough for many
	// transactional workers at once (the commit rate of PostgreSQL on small
	// machines keeps rising up to about 32 clients).
	PoolMaxConnsDefault = 32
)

// Config configures a Runner. The zero value of every field means its
// default. Pass nil to New for all defaults.
type Config struct {
	// Queues to work, with the number of jobs each works at once. Jobs go to
	// river.QueueDefault unless their InsertOpts name another queue.
	//
	// Defaults to {river.QueueDefault: {MaxWorkers: MaxWorkersDefault}}.
	Queues map[string]river.QueueConfig

	// Workers holds the worker of every job kind this runner works. Required
	// unless InsertOnly.
	Workers *river.Workers

	// Groups are the group commits (NewGroup) that this runner's workers
	// pass to WorkTx. When jobs still run after the shutdown budget, Stop
	// aborts the groups' open transactions (Group.Abort) before it puts those
	// jobs back in the queue: a job's row stays locked by its group
	// transaction until that transaction ends.
	Groups []*Group

	// InsertOnly makes a runner that enqueues but works nothing (an API
	// process, a script). Start and Stop are then no-ops.
	InsertOnly bool

	// FetchCooldown is the minimum time between fetches of a queue.
	//
	// Defaults to FetchCooldownDefault (10 ms).
	FetchCooldown time.Duration

	// FetchPollInterval is how often a queue polls when no insert
	// notification arrived.
	//
	// Defaults to FetchPollIntervalDefault (1 s).
	FetchPollInterval time.Duration

	// JobTimeout is how long a job may run before its context is cancelled.
	// Use -1 for no timeout.
	//
	// Defaults to JobTimeoutDefault (1 min).
	JobTimeout time.Duration

	// RescueStuckJobsAfter is how long a job may stay running before River
	// assumes its process died and makes it available again. Must exceed
	// JobTimeout. Workers must tolerate the rescued job running again (WorkTx
	// with a row lock makes that safe).
	//
	// Defaults to JobTimeout + RescueStuckJobsAfterDefault (1 min), so 2 min
	// with the default JobTimeout.
	RescueStuckJobsAfter time.Duration

	// MaxAttempts is the number of attempts before a job is discarded, unless
	// its InsertOpts say otherwise.
	//
	// Defaults to MaxAttemptsDefault (25).
	MaxAttempts int

	// RetryPolicy decides when a failed job runs again.
	//
	// Defaults to &Backoff{} (1 s doubling to at most 1 h, with jitter).
	RetryPolicy river.ClientRetryPolicy

	// ShutdownTimeout is the budget of Stop when its context has no deadline:
	// first running jobs may finish, then their contexts are cancelled, and
	// jobs still running at the end go back to the queue without using up an
	// attempt.
	//
	// Defaults to ShutdownTimeoutDefault (10 s).
	ShutdownTimeout time.Duration

	// CompletedJobRetentionPeriod is how long completed jobs are kept.
	//
	// Defaults to CompletedJobRetentionPeriodDefault (24 h).
	CompletedJobRetentionPeriod time.Duration

	// PeriodicJobs are enqueued on a schedule by the leader among the runners.
	PeriodicJobs []*river.PeriodicJob

	// Middleware and Hooks are passed to River after the runner's own.
	Middleware []rivertype.Middleware
	Hooks      []rivertype.Hook

	// ErrorHandler is told about job errors and panics.
	ErrorHandler river.ErrorHandler

	// Logger receives the runner's and River's logs.
	//
	// Defaults to slog.Default().
	Logger *slog.Logger

	// Schema holds River's tables. Empty means the connection's search_path.
	Schema string

	// Clock replaces the application clock River reads (tests use it to
	// simulate a server whose clock is off). Nil is the system clock.
	Clock rivertype.TimeGenerator

	// ID names this runner among the others sharing the database; it must
	// be unique per process. Shutdown uses it to find its own running jobs.
	//
	// Defaults to host name, process id and start time.
	ID string
}

// withDefaults returns a copy of c with every zero field set to its default.
func (c *Config) withDefaults() *Config {
	out := &Config{}
	if c != nil {
		*out = *c
	}
	if out.Queues == nil && !out.InsertOnly {
		out.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: MaxWorkersDefault}}
	} else {
		out.Queues = maps.Clone(out.Queues)
	}
	if out.FetchCooldown == 0 {
		out.FetchCooldown = FetchCooldownDefault
	}
	if out.FetchPollInterval == 0 {
		out.FetchPollInterval = FetchPollIntervalDefault
	}
	if out.JobTimeout == 0 {
		out.JobTimeout = JobTimeoutDefault
	}
	if out.RescueStuckJobsAfter == 0 {
		out.RescueStuckJobsAfter = max(out.JobTimeout, 0) + RescueStuckJobsAfterDefault
	}
	if out.MaxAttempts == 0 {
		out.MaxAttempts = MaxAttemptsDefault
	}
	if out.RetryPolicy == nil {
		out.RetryPolicy = &Backoff{}
	}
	if out.ShutdownTimeout == 0 {
		out.ShutdownTimeout = ShutdownTimeoutDefault
	}
	if out.CompletedJobRetentionPeriod == 0 {
		out.CompletedJobRetentionPeriod = CompletedJobRetentionPeriodDefault
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.ID == "" {
		host, _ := os.Hostname()
		out.ID = host + "-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixMilli(), 36)
	}
	return out
}

func (c *Config) validate() error {
	var errs []error
	if !c.InsertOnly {
		if c.Workers == nil {
			errs = append(errs, errors.New("a runner that works jobs needs Workers (or set InsertOnly)"))
		}
		if len(c.Queues) == 0 {
			errs = append(errs, errors.New("a runner that works jobs needs at least one queue (or set InsertOnly)"))
		}
		for name, q := range c.Queues {
			if q.MaxWorkers < 1 {
				errs = append(errs, fmt.Errorf("queue %q: MaxWorkers must be at least 1, got %d", name, q.MaxWorkers))
			}
		}
	}
	if c.FetchCooldown < time.Millisecond {
		errs = append(errs, fmt.Errorf("FetchCooldown must be at least 1ms, got %s", c.FetchCooldown))
	}
	if c.FetchPollInterval < c.FetchCooldown {
		errs = append(errs, fmt.Errorf("FetchPollInterval (%s) must be at least FetchCooldown (%s)", c.FetchPollInterval, c.FetchCooldown))
	}
	if c.JobTimeout < -1 {
		errs = append(errs, fmt.Errorf("JobTimeout must be positive or -1, got %s", c.JobTimeout))
	}
	if c.JobTimeout > 0 && c.RescueStuckJobsAfter <= c.JobTimeout {
		errs = append(errs, fmt.Errorf("RescueStuckJobsAfter (%s) must exceed JobTimeout (%s)", c.RescueStuckJobsAfter, c.JobTimeout))
	}
	if c.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("MaxAttempts must be at least 1, got %d", c.MaxAttempts))
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, fmt.Errorf("ShutdownTimeout must be positive, got %s", c.ShutdownTimeout))
	}
	if c.CompletedJobRetentionPeriod < 0 {
		errs = append(errs, fmt.Errorf("CompletedJobRetentionPeriod must be positive, got %s", c.CompletedJobRetentionPeriod))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}
