// Package chaos is the run that tries to break the runner's guarantees: it
// starts several runner processes on one PostgreSQL, drives them with the
// demo's workloads at once, and meanwhile SIGKILLs and SIGTERMs runners,
// restarts PostgreSQL and switches gateway and SMTP faults on and off. Then
// it drains, and audits from the database, the gateway's ledger and the SMTP
// sink that every accepted request had its effect exactly once.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/internal/demo"
	"github.com/pgonce/pgonce/internal/pgembed"
	"github.com/pgonce/pgonce/internal/progress"
	"github.com/pgonce/pgonce/internal/smtpsink"
	"github.com/pgonce/pgonce/schema"
)

// Config sizes a chaos run.
type Config struct {
	// Binary is the runner binary to start (usually os.Executable()).
	Binary string
	// Runners running at once. Defaults to 4.
	Runners int
	// Duration of the load and the chaos. Defaults to 60 s.
	Duration time.Duration
	// KillEvery is the pause between two stops of a runner (SIGKILL, or
	// SIGTERM one time in three). Defaults to 3 s.
	KillEvery time.Duration
	// PostgresRestarts during the run. Defaults to 2.
	PostgresRestarts int
	// Users and Payments of the workloads. Default to 1,000 each.
	Users, Payments int
	// Seed makes the run repeatable (in what it asks for, not in timing).
	Seed uint64
	// LogDir receives each runner's log. Defaults to a temporary directory.
	LogDir string

	Progress io.Writer
	Logger   *slog.Logger
}

func (c *Config) defaults() {
	if c.Runners <= 0 {
		c.Runners = 4
	}
	if c.Duration <= 0 {
		c.Duration = 60 * time.Second
	}
	if c.KillEvery <= 0 {
		c.KillEvery = 3 * time.Second
	}
	if c.PostgresRestarts < 0 {
		c.PostgresRestarts = 0
	}
	if c.Users <= 0 {
		c.Users = 1000
	}
	if c.Payments <= 0 {
		c.Payments = 1000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

const token = "chaos-client-token-0123456789"

// proc is one runner process.
type proc struct {
	id   string
	url  string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// fleet is the runner processes and the URLs clients may use.
type fleet struct {
	cfg  *Config
	env  []string
	mu   sync.Mutex
	live map[string]*proc
	next int
	rng  *rand.Rand
	// urls of live runners, for the clients.
	urls []string
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// start starts a runner process and waits until it is ready.
func (f *fleet) start(ctx context.Context) (*proc, error) {
	f.mu.Lock()
	f.next++
	id := fmt.Sprintf("chaos-runner-%02d", f.next)
	f.mu.Unlock()
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(f.cfg.LogDir, id+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(f.cfg.Binary, "serve")
	cmd.Env = append(append([]string{}, f.env...), "LISTEN_ADDR="+addr, "RUNNER_ID="+id)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", id, err)
	}
	p := &proc{id: id, url: "http://" + addr, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(p.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited while starting: %w (log: %s)", id, p.err, logFile.Name())
		case <-ctx.Done():
			return nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return nil, fmt.Errorf("%s not ready after 60 s (log: %s)", id, logFile.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.mu.Lock()
	f.live[id] = p
	f.refreshURLs()
	f.mu.Unlock()
	return p, nil
}

func (f *fleet) refreshURLs() {
	f.urls = f.urls[:0]
	for _, p := range f.live {
		f.urls = append(f.urls, p.url)
	}
}

// target picks a live runner for a client's request.
func (f *fleet) target() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.urls) == 0 {
		return "http://127.0.0.1:1" // nothing live: the request fails and is retried
	}
	return f.urls[f.rng.IntN(len(f.urls))]
}

// pick removes a random live runner from the clients' targets and returns it.
func (f *fleet) pick() *proc {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.live {
		delete(f.live, p.id)
		f.refreshURLs()
		return p
	}
	return nil
}

// stopAll stops every live runner with SIGTERM and returns the ones that
// did not exit cleanly.
func (f *fleet) stopAll(timeout time.Duration) []string {
	f.mu.Lock()
	procs := make([]*proc, 0, len(f.live))
	for _, p := range f.live {
		procs = append(procs, p)
	}
	f.live = map[string]*proc{}
	f.refreshURLs()
	f.mu.Unlock()
	var bad []string
	for _, p := range procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		select {
		case <-p.done:
			if p.err != nil {
				bad = append(bad, fmt.Sprintf("%s: %v", p.id, p.err))
			}
		case <-time.After(timeout):
			_ = p.cmd.Process.Kill()
			<-p.done
			bad = append(bad, p.id+": did not stop within "+timeout.String())
		}
	}
	return bad
}

// Report is what a chaos run did and found.
type Report struct {
	Audit      *demo.Audit
	Violations int
	LogDir     string
}

// Run runs the chaos and audits it.
func Run(ctx context.Context, cfg *Config) (*Report, error) {
	cfg.defaults()
	started := time.Now()
	if cfg.LogDir == "" {
		dir, err := os.MkdirTemp("", "pgonce-chaos-")
		if err != nil {
			return nil, err
		}
		cfg.LogDir = dir
	}
	logf := func(format string, a ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "chaos: "+format+"\n", a...)
		}
	}

	// One PostgreSQL of its own, so that it can be restarted.
	binDir, err := pgembed.FindBinaries()
	if err != nil {
		return nil, fmt.Errorf("the chaos run restarts PostgreSQL, so it starts its own from the installed binaries: %w", err)
	}
	srv, err := pgembed.StartLocal(ctx, binDir, &pgembed.Options{Settings: map[string]string{"max_connections": "400"}})
	if err != nil {
		return nil, err
	}
	defer srv.Stop(context.Background()) //nolint:errcheck
	admin, err := pgx.Connect(ctx, srv.URL)
	if err != nil {
		return nil, err
	}
	for _, name := range []string{"chaos", "chaos_source"} {
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
			admin.Close(ctx)
			return nil, err
		}
	}
	admin.Close(ctx)
	dbURL, sourceURL := withDB(srv.URL, "chaos"), withDB(srv.URL, "chaos_source")
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	if _, err := schema.UpPool(ctx, pool); err != nil {
		return nil, err
	}
	sourcePool, err := pgxpool.New(ctx, sourceURL)
	if err != nil {
		return nil, err
	}
	defer sourcePool.Close()
	if err := demo.SetupSourceTable(ctx, sourcePool); err != nil {
		return nil, err
	}
	src, err := datasync.NewPostgresSource(sourcePool, demo.SourceTable)
	if err != nil {
		return nil, err
	}

	// The SMTP server and the payment gateway every runner talks to.
	sink, err := smtpsink.Start()
	if err != nil {
		return nil, err
	}
	defer sink.Close()
	gw := gateway.NewServer()
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	gwHTTP := &http.Server{Handler: gw, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = gwHTTP.Serve(gl) }()
	defer func() { gw.Close(); _ = gwHTTP.Close() }()

	fl := &fleet{cfg: cfg, live: map[string]*proc{}, rng: rand.New(rand.NewPCG(cfg.Seed, 5)), env: []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir(),
		"DATABASE_URL=" + dbURL, "MIGRATE=false",
		"SMTP_URL=" + sink.URL(), "GATEWAY_URL=http://" + gl.Addr().String(), "GATEWAY_TIMEOUT=1s",
		"API_TOKENS=chaos:" + token,
		"SYNC_SOURCES=demo=" + sourceURL + sep(sourceURL) + "sync_table=" + demo.SourceTable, "SYNC_PAGE_SIZE=200",
		"JOB_TIMEOUT=5s", "RESCUE_AFTER=10s", "EMAIL_LEASE=5s", "RETRY_MIN=100ms", "RETRY_MAX=2s",
		"SHUTDOWN_TIMEOUT=5s", "LOG_FORMAT=json", "LOG_LEVEL=info",
		"EMAIL_WORKERS=20", "PAYMENT_WORKERS=20", "SYNC_WORKERS=4", "DEFAULT_WORKERS=5",
	}}
	logf("PostgreSQL at %s, logs in %s; starting %d runners", srv.URL, cfg.LogDir, cfg.Runners)
	for range cfg.Runners {
		if _, err := fl.start(ctx); err != nil {
			return nil, err
		}
	}
	defer fl.stopAll(10 * time.Second)

	// The workloads, all at once, through whichever runners are up.
	runID := "chaos"
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	signups := &demo.Signups{Targets: fl.target, Token: token, RunID: runID, Users: cfg.Users, Concurrency: 16,
		Spread: cfg.Duration * 8 / 10, RetryFor: 5 * time.Minute, Client: client, Seed: cfg.Seed}
	payments := &demo.Payments{Targets: fl.target, Clients: []demo.Client{{Principal: "chaos", Token: token}}, RunID: runID,
		Payments: cfg.Payments, Concurrency: 16, Spread: cfg.Duration * 8 / 10, Client: client, Seed: cfg.Seed, ExpectOutages: true}
	syncs := &demo.Sync{Targets: fl.target, Token: token, Name: "demo", Source: sourcePool, Dest: pool, Src: src,
		Bulk: 5000, Duration: cfg.Duration, Writers: 2, ExternalWorkers: true, Client: client, Logger: cfg.Logger}

	var (
		wg                    sync.WaitGroup
		signupRes             *demo.SignupResult
		payRes                *demo.PaymentsResult
		syncRes               *demo.SyncResult
		signupErr, payErr     error
		syncErr               error
		loadDone              = make(chan struct{})
		chaosStats            stats
		chaosCtx, stopChaos   = context.WithCancel(ctx)
		chaosDone             = make(chan struct{})
		toggles, restartsDone int
	)
	wg.Add(3)
	go func() { defer wg.Done(); signupRes, signupErr = signups.Run(ctx) }()
	go func() { defer wg.Done(); payRes, payErr = payments.Run(ctx) }()
	go func() { defer wg.Done(); syncRes, syncErr = syncs.Run(ctx) }()
	go func() { wg.Wait(); close(loadDone) }()

	// The chaos.
	go func() {
		defer close(chaosDone)
		rng := rand.New(rand.NewPCG(cfg.Seed, 17))
		bar := progress.New(cfg.Progress, int64(cfg.Duration/time.Second), "chaos")
		defer bar.Finish()
		kill := time.NewTicker(cfg.KillEvery)
		defer kill.Stop()
		faults := time.NewTicker(5 * time.Second)
		defer faults.Stop()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var restartAt []time.Duration
		// Spread over the run: with 2, at a third and two thirds; every
		// one of them within it.
		for i := range cfg.PostgresRestarts {
			restartAt = append(restartAt, cfg.Duration*time.Duration(i+1)/time.Duration(cfg.PostgresRestarts+1))
		}
		faultsOn := false
		for {
			select {
			case <-chaosCtx.Done():
				return
			case <-tick.C:
				elapsed := time.Since(started)
				bar.Set(int64(elapsed / time.Second))
				if len(restartAt) > 0 && elapsed >= restartAt[0] {
					restartAt = restartAt[1:]
					if err := srv.Restart(ctx); err != nil {
						cfg.Logger.Error("chaos: restarting PostgreSQL", "error", err)
					} else {
						restartsDone++
					}
				}
			case <-faults.C:
				faultsOn = !faultsOn
				toggles++
				if faultsOn {
					gw.SetFaults(gateway.Faults{ServerError: 0.05, TimeoutAfterCharge: 0.05, Decline: 0.02, RateLimit: 0.02})
					sink.SetFaultRate(0.1, smtpsink.FaultTempReject, smtpsink.FaultTempReject, smtpsink.FaultDropAfterData, smtpsink.FaultDropAfterAccept)
				} else {
					gw.SetFaults(gateway.Faults{})
					sink.SetFaultRate(0)
				}
			case <-kill.C:
				victim := fl.pick()
				if victim == nil {
					continue
				}
				if rng.IntN(3) == 0 {
					_ = victim.cmd.Process.Signal(syscall.SIGTERM)
					select {
					case <-victim.done:
					case <-time.After(15 * time.Second):
						_ = victim.cmd.Process.Kill()
						<-victim.done
					}
					chaosStats.terms++
					if victim.err != nil {
						chaosStats.badTerms = append(chaosStats.badTerms, fmt.Sprintf("%s: %v", victim.id, victim.err))
					}
				} else {
					_ = victim.cmd.Process.Kill()
					<-victim.done
					chaosStats.kills++
					chaosStats.inFlight(ctx, pool, victim.id)
				}
				if _, err := fl.start(ctx); err != nil {
					cfg.Logger.Error("chaos: starting a replacement", "error", err)
				} else {
					chaosStats.replacements++
				}
			}
			if time.Since(started) > cfg.Duration {
				return
			}
		}
	}()
	<-chaosDone
	stopChaos()
	gw.SetFaults(gateway.Faults{})
	sink.SetFaultRate(0)
	logf("chaos over after %s; waiting for the clients", time.Since(started).Round(time.Second))
	<-loadDone
	for _, err := range []error{signupErr, payErr, syncErr} {
		if err != nil {
			return nil, fmt.Errorf("workload: %w", err)
		}
	}

	// Drain: every job reaches a final state.
	logf("draining")
	drainErr := drain(ctx, pool, cfg.Progress)
	badStops := fl.stopAll(20 * time.Second)

	audit, violations, err := auditRun(ctx, &auditInput{
		pool: pool, sink: sink, gw: gw, signups: signups, signupRes: signupRes, payments: payments, payRes: payRes,
		syncs: syncs, syncRes: syncRes, stats: &chaosStats, badStops: append(chaosStats.badTerms, badStops...),
		drainErr: drainErr, restarts: restartsDone, toggles: toggles, elapsed: time.Since(started), cfg: cfg,
	})
	if err != nil {
		return nil, err
	}
	return &Report{Audit: audit, Violations: violations, LogDir: cfg.LogDir}, nil
}

// stats counts the chaos done.
type stats struct {
	kills, terms, replacements int
	badTerms                   []string
	// At each SIGKILL, what the killed runner had in flight.
	jobsInFlight, sendsInFlight, chargesInFlight, syncsInFlight int
}

// inFlight records what a SIGKILLed runner was doing when it died: the jobs
// it was running, and among them the ones inside their critical section (a
// claimed email whose send was not recorded, a payment whose gateway call
// was not recorded).
func (s *stats) inFlight(ctx context.Context, pool *pgxpool.Pool, id string) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var jobs, sends, charges, syncs int
	err := pool.QueryRow(qctx, `
		WITH j AS (SELECT * FROM river_job WHERE state = 'running' AND attempted_by[array_upper(attempted_by, 1)] = $1)
		SELECT (SELECT count(*) FROM j),
		       (SELECT count(*) FROM email_log l JOIN email_attempts a ON a.id = l.lease_attempt_id
		        WHERE a.outcome IS NULL AND a.job_id IN (SELECT id FROM j)),
		       (SELECT count(*) FROM payments p WHERE p.status = 'processing' AND p.job_id IN (SELECT id FROM j WHERE kind = 'process_payment')),
		       (SELECT count(*) FROM j WHERE kind = 'sync_data')`, id).Scan(&jobs, &sends, &charges, &syncs)
	if err != nil {
		return // the database may be restarting; the count is a lower bound
	}
	s.jobsInFlight += jobs
	s.sendsInFlight += sends
	s.chargesInFlight += charges
	s.syncsInFlight += syncs
}

// drain waits until no job of the workloads is left to run.
func drain(ctx context.Context, pool *pgxpool.Pool, w io.Writer) error {
	deadline := time.Now().Add(5 * time.Minute)
	var total int64
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM river_job`).Scan(&total)
	bar := progress.New(w, total, "draining")
	defer bar.Finish()
	for time.Now().Before(deadline) {
		var open, all int64
		err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state NOT IN ('completed', 'discarded', 'cancelled')), count(*)
			FROM river_job WHERE kind <> 'idempotency_purge'`).Scan(&open, &all)
		if err == nil {
			bar.Set(all - open)
			if open == 0 {
				return nil
			}
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return errors.New("jobs still unfinished 5 minutes after the load")
}

func withDB(u, name string) string {
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		return u
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name)
}

func sep(u string) string {
	for _, c := range u {
		if c == '?' {
			return "&"
		}
	}
	return "?"
}
