// Package metrics exposes the runner's Prometheus metrics: jobs inserted,
// reported duplicate and finished per kind (River middleware), work
// durations, queue depth and the age of the oldest available job (read from
// the ops_queues view at scrape time), HTTP requests by route and status,
// and the Idempotency-Key layer's decisions.
//
//	m := metrics.New(pool)
//	cfg.Middleware = append(cfg.Middleware, m.RiverMiddleware()...)
//	handler = m.HTTP(handler)
//	mux.Handle("GET /metrics", m.Handler())
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/pgonce/pgonce/idempotency"
	"github.com/pgonce/pgonce/runner"
)

// Metrics holds the collectors, in a registry of their own.
type Metrics struct {
	Registry *prometheus.Registry

	jobsInserted   *prometheus.CounterVec
	jobsDuplicate  *prometheus.CounterVec
	jobsFinished   *prometheus.CounterVec
	workDuration   *prometheus.HistogramVec
	httpRequests   *prometheus.CounterVec
	httpDuration   *prometheus.HistogramVec
	idempotencyFns []func() idempotency.Stats
}

// New makes the metrics; queue depth is read through pool at each scrape.
func New(pool *pgxpool.Pool, logger *slog.Logger) *Metrics {
	if logger == nil {
		logger = slog.Default()
	}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		jobsInserted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgonce_jobs_inserted_total", Help: "Jobs inserted, by kind.",
		}, []string{"kind"}),
		jobsDuplicate: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgonce_jobs_duplicate_total", Help: "Enqueues reported as duplicates of an existing job, by kind.",
		}, []string{"kind"}),
		jobsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgonce_jobs_worked_total",
			Help: "Job attempts by kind and outcome: completed, failed (will retry), discarded (no attempts left), cancelled, snoozed.",
		}, []string{"kind", "outcome"}),
		workDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pgonce_job_work_seconds", Help: "Duration of job attempts, by kind and outcome.",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"kind", "outcome"}),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgonce_http_requests_total", Help: "HTTP requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pgonce_http_request_seconds", Help: "HTTP request duration by route.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route"}),
	}
	m.Registry.MustRegister(m.jobsInserted, m.jobsDuplicate, m.jobsFinished, m.workDuration, m.httpRequests, m.httpDuration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&queueCollector{pool: pool, logger: logger},
		&idempotencyCollector{m: m})
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}

// WatchIdempotency adds a layer's counters (pgonce_idempotency_total).
func (m *Metrics) WatchIdempotency(stats func() idempotency.Stats) {
	m.idempotencyFns = append(m.idempotencyFns, stats)
}

// WatchGroup adds a group commit's counters (pgonce_group_*).
func (m *Metrics) WatchGroup(stats func() runner.GroupStats) {
	counter := func(name, help string, v func(runner.GroupStats) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v(stats())) })
	}
	m.Registry.MustRegister(
		counter("pgonce_group_commits_total", "Group transactions committed (each carries one or more jobs' transactions).",
			func(s runner.GroupStats) int64 { return s.Commits }),
		counter("pgonce_group_jobs_total", "Jobs' transactions committed by group commits.",
			func(s runner.GroupStats) int64 { return s.Jobs }),
		counter("pgonce_group_rolled_back_total", "Jobs' transactions rolled back to their savepoint, the rest of their group untouched.",
			func(s runner.GroupStats) int64 { return s.RolledBack }),
		counter("pgonce_group_failed_total", "Group transactions that failed to commit (their jobs are retried).",
			func(s runner.GroupStats) int64 { return s.Failed }),
		counter("pgonce_group_out_of_group_total", "Jobs run in a transaction of their own: their lane stayed busy, or a lock wait timed out in the group.",
			func(s runner.GroupStats) int64 { return s.OutOfGroup }),
	)
}

// RiverMiddleware counts inserts, duplicates and attempts and times work.
func (m *Metrics) RiverMiddleware() []rivertype.Middleware {
	return []rivertype.Middleware{&riverMiddleware{m: m}}
}

type riverMiddleware struct {
	river.MiddlewareDefaults
	m *Metrics
}

func (rm *riverMiddleware) InsertMany(ctx context.Context, params []*rivertype.JobInsertParams, doInner func(context.Context) ([]*rivertype.JobInsertResult, error)) ([]*rivertype.JobInsertResult, error) {
	res, err := doInner(ctx)
	if err == nil {
		for _, r := range res {
			if r.UniqueSkippedAsDuplicate {
				rm.m.jobsDuplicate.WithLabelValues(r.Job.Kind).Inc()
			} else {
				rm.m.jobsInserted.WithLabelValues(r.Job.Kind).Inc()
			}
		}
	}
	return res, err
}

func (rm *riverMiddleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	start := time.Now()
	err := doInner(ctx)
	outcome := Outcome(job, err)
	rm.m.jobsFinished.WithLabelValues(job.Kind, outcome).Inc()
	rm.m.workDuration.WithLabelValues(job.Kind, outcome).Observe(time.Since(start).Seconds())
	return err
}

// Outcome names what an attempt's error means for the job.
func Outcome(job *rivertype.JobRow, err error) string {
	var snooze *rivertype.JobSnoozeError
	var cancel *rivertype.JobCancelError
	switch {
	case err == nil:
		return "completed"
	case errors.As(err, &snooze):
		return "snoozed"
	case errors.As(err, &cancel):
		return "cancelled"
	case job.Attempt >= job.MaxAttempts:
		return "discarded"
	}
	return "failed"
}

// HTTP counts and times requests by route (the mux pattern that served it).
func (m *Metrics) HTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		m.httpRequests.WithLabelValues(route, r.Method, strconv.Itoa(rec.status)).Inc()
		m.httpDuration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

type statusWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (s *statusWriter) WriteHeader(code int) {
	if !s.wroteHeader {
		s.status, s.wroteHeader = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// queueCollector reads ops_queues at scrape time.
type queueCollector struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
}

var (
	queueJobsDesc = prometheus.NewDesc("pgonce_queue_jobs", "Jobs in a queue by state (available, running, waiting: retryable or scheduled).",
		[]string{"queue", "state"}, nil)
	queueOldestDesc = prometheus.NewDesc("pgonce_queue_oldest_available_seconds",
		"Age of the oldest available job of a queue: how far behind its workers are.", []string{"queue"}, nil)
	scrapeErrorDesc = prometheus.NewDesc("pgonce_queue_scrape_error", "1 when the queue metrics could not be read from the database.", nil, nil)
)

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueJobsDesc
	ch <- queueOldestDesc
	ch <- scrapeErrorDesc
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	rows, err := c.pool.Query(ctx, `
		SELECT queue, available, running, waiting, coalesce(extract(epoch FROM oldest_available_age), 0)::float8
		FROM ops_queues`)
	if err != nil {
		c.logger.Warn("metrics: reading queues failed", "error", err)
		ch <- prometheus.MustNewConstMetric(scrapeErrorDesc, prometheus.GaugeValue, 1)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var queue string
		var available, running, waiting int64
		var oldest float64
		if err := rows.Scan(&queue, &available, &running, &waiting, &oldest); err != nil {
			ch <- prometheus.MustNewConstMetric(scrapeErrorDesc, prometheus.GaugeValue, 1)
			return
		}
		ch <- prometheus.MustNewConstMetric(queueJobsDesc, prometheus.GaugeValue, float64(available), queue, "available")
		ch <- prometheus.MustNewConstMetric(queueJobsDesc, prometheus.GaugeValue, float64(running), queue, "running")
		ch <- prometheus.MustNewConstMetric(queueJobsDesc, prometheus.GaugeValue, float64(waiting), queue, "waiting")
		ch <- prometheus.MustNewConstMetric(queueOldestDesc, prometheus.GaugeValue, oldest, queue)
	}
	failed := 0.0
	if rows.Err() != nil {
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(scrapeErrorDesc, prometheus.GaugeValue, failed)
}

// idempotencyCollector reports the layers' counters.
type idempotencyCollector struct{ m *Metrics }

var idempotencyDesc = prometheus.NewDesc("pgonce_idempotency_total",
	"Idempotency-Key decisions: stored (first answer kept), replayed, in_flight (409), mismatch (422), not_stored (an error answer).",
	[]string{"decision"}, nil)

func (c *idempotencyCollector) Describe(ch chan<- *prometheus.Desc) { ch <- idempotencyDesc }

func (c *idempotencyCollector) Collect(ch chan<- prometheus.Metric) {
	var total idempotency.Stats
	for _, fn := range c.m.idempotencyFns {
		s := fn()
		total.Stored += s.Stored
		total.Replays += s.Replays
		total.InFlight += s.InFlight
		total.Mismatches += s.Mismatches
		total.NotStored += s.NotStored
	}
	for decision, v := range map[string]int64{
		"stored": total.Stored, "replayed": total.Replays, "in_flight": total.InFlight,
		"mismatch": total.Mismatches, "not_stored": total.NotStored,
	} {
		ch <- prometheus.MustNewConstMetric(idempotencyDesc, prometheus.CounterValue, float64(v), decision)
	}
}
