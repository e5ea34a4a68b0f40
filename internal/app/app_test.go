package app_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/internal/app"
	"github.com/pgonce/pgonce/internal/problem"
	"github.com/pgonce/pgonce/internal/smtpsink"
	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/mailer"
	"github.com/pgonce/pgonce/runner"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

const (
	tokenA    = "token-of-client-a-0123"
	tokenB    = "token-of-client-b-0123"
	adminPass = "operator-password-0123"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type fixture struct {
	app  *app.App
	db   *testdb.DB
	url  string
	sink *smtpsink.Sink
}

func setup(t *testing.T) *fixture {
	t.Helper()
	return setupOn(t, testdb.New(t, &testdb.Opts{MaxConns: 30}), true)
}

// setupOn starts an app on db, with the "items" sync source or without any.
func setupOn(t *testing.T, db *testdb.DB, withSource bool) *fixture {
	t.Helper()
	ctx := context.Background()
	sink, err := smtpsink.Start()
	require.NoError(t, err)
	t.Cleanup(func() { _ = sink.Close() })
	m, err := mailer.NewSMTP(sink.URL())
	require.NoError(t, err)
	gw := gateway.NewServer()
	hs := httptest.NewServer(gw)
	t.Cleanup(func() { gw.Close(); hs.Close() })
	gwClient, err := gateway.NewClient(hs.URL, nil)
	require.NoError(t, err)
	src := testdb.New(t, &testdb.Opts{Empty: true})
	ddl, err := datasync.TrackingSQL("items")
	require.NoError(t, err)
	_, err = src.Pool.Exec(ctx, `CREATE TABLE items (id int PRIMARY KEY, name text);`+ddl+`INSERT INTO items VALUES (1, 'one');`)
	require.NoError(t, err)
	pg, err := datasync.NewPostgresSource(src.Pool, "items")
	require.NoError(t, err)
	sources := map[string]datasync.Source{"items": pg}
	if !withSource {
		sources = nil
	}

	a, err := app.New(&app.Options{
		Pool: db.Pool, Mailer: m, Gateway: gwClient, Logger: quiet,
		Tokens:    map[string]string{tokenA: "client-a", tokenB: "client-b"},
		AdminUser: "ops", AdminPassword: adminPass,
		Sources: sources,
		Runner:  runner.Config{FetchPollInterval: 100 * time.Millisecond},
	})
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx, "127.0.0.1:0"))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Stop(ctx)
	})
	return &fixture{app: a, db: db, url: a.URL(), sink: sink}
}

type credential func(*http.Request)

func bearer(token string) credential {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }
}

func basic(user, pass string) credential {
	return func(r *http.Request) { r.SetBasicAuth(user, pass) }
}

func (f *fixture) do(t *testing.T, method, path, body string, cred credential, headers ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.url+path, strings.NewReader(body))
	require.NoError(t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if cred != nil {
		cred(req)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp, string(raw)
}

// Every protected route refuses missing and wrong credentials, and each
// kind of credential opens only its own routes; health endpoints are open
// and say nothing.
func TestAuth_EveryRoute(t *testing.T) {
	t.Parallel()
	f := setup(t)
	routes := []struct {
		method, path, body string
		admin              bool
	}{
		{"POST", "/api/users", `{"email":"x@example.com"}`, false},
		{"POST", "/api/payments", `{"order_id":"o","amount":1,"currency":"EUR"}`, false},
		{"GET", "/api/payments/1", "", false},
		{"POST", "/api/sync/items", "", false},
		{"GET", "/api/sync/items", "", false},
		{"GET", "/api/users/1", "", true},
		{"GET", "/api/jobs/1", "", true},
		{"POST", "/api/jobs/1/retry", "", true},
		{"GET", "/metrics", "", true},
		{"GET", "/riverui/", "", true},
		{"GET", "/riverui/api/jobs?state=completed", "", true},
	}
	wrongs := map[string]credential{
		"no credentials":    nil,
		"unknown token":     bearer("not-a-token-0123456789"),
		"wrong password":    basic("ops", "wrong-password-0123"),
		"token as password": basic("ops", tokenA),
	}
	for _, rt := range routes {
		for name, cred := range wrongs {
			resp, body := f.do(t, rt.method, rt.path, rt.body, cred, "Idempotency-Key", "k-auth")
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s %s with %s: %s", rt.method, rt.path, name, body)
			require.Equal(t, problem.ContentType, resp.Header.Get("Content-Type"))
		}
		// The other kind of credential does not open it either.
		other := basic("ops", adminPass)
		if rt.admin {
			other = bearer(tokenA)
		}
		resp, _ := f.do(t, rt.method, rt.path, rt.body, other, "Idempotency-Key", "k-auth")
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s %s with the other kind of credential", rt.method, rt.path)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, body := f.do(t, "GET", path, "", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "ok\n", body)
	}
	var users int
	require.NoError(t, f.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM users`).Scan(&users))
	require.Zero(t, users, "no refused request wrote anything")

	// One client cannot read another's key or payment.
	resp, body := f.do(t, "POST", "/api/payments", `{"order_id":"o-1","amount":100,"currency":"EUR"}`, bearer(tokenA), "Idempotency-Key", "shared-key")
	require.Equal(t, http.StatusAccepted, resp.StatusCode, body)
	var created struct {
		Payment struct{ ID int64 } `json:"payment"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &created))
	resp, _ = f.do(t, "GET", "/api/payments/"+strconv.FormatInt(created.Payment.ID, 10), "", bearer(tokenB))
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, bodyB := f.do(t, "POST", "/api/payments", `{"order_id":"o-1","amount":100,"currency":"EUR"}`, bearer(tokenB), "Idempotency-Key", "shared-key")
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	require.Empty(t, resp.Header.Get("Idempotent-Replayed"), "client b's key is its own, not a replay of a's")
	require.NotEqual(t, body, bodyB)
}

var sampleLine = regexp.MustCompile(`^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$`)

// scrape returns the value of every sample, keyed by name{labels}.
func (f *fixture) scrape(t *testing.T) map[string]float64 {
	t.Helper()
	resp, body := f.do(t, "GET", "/metrics", "", basic("ops", adminPass))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		m := sampleLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		require.NoError(t, err)
		out[m[1]+m[2]] = v
	}
	return out
}

// Counters move as jobs and requests happen.
func TestMetrics_MoveWithTheWork(t *testing.T) {
	t.Parallel()
	f := setup(t)
	before := f.scrape(t)

	for i := range 3 {
		resp, body := f.do(t, "POST", "/api/users", fmt.Sprintf(`{"email":"m%d@example.com"}`, i), bearer(tokenA))
		require.Equal(t, http.StatusCreated, resp.StatusCode, body)
	}
	resp, _ := f.do(t, "POST", "/api/users", `{"email":"m0@example.com"}`, bearer(tokenA))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	pay := `{"order_id":"o-1","amount":100,"currency":"EUR"}`
	resp, _ = f.do(t, "POST", "/api/payments", pay, bearer(tokenA), "Idempotency-Key", "k1")
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	resp, _ = f.do(t, "POST", "/api/payments", pay, bearer(tokenA), "Idempotency-Key", "k1")
	require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
	resp, _ = f.do(t, "POST", "/api/payments", `{"order_id":"o-1","amount":101,"currency":"EUR"}`, bearer(tokenA), "Idempotency-Key", "k1")
	require.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode)
	resp, _ = f.do(t, "POST", "/api/sync/items", "", bearer(tokenA))
	require.Equal(t, http.StatusAccepted, resp.StatusCode)

	var after map[string]float64
	require.Eventually(t, func() bool {
		after = f.scrape(t)
		return after[`pgonce_jobs_worked_total{kind="welcome_email",outcome="completed"}`] >= 3 &&
			after[`pgonce_jobs_worked_total{kind="process_payment",outcome="completed"}`] >= 1 &&
			after[`pgonce_jobs_worked_total{kind="sync_data",outcome="completed"}`] >= 1
	}, 15*time.Second, 100*time.Millisecond)

	moved := func(series string, by float64) {
		t.Helper()
		require.GreaterOrEqual(t, after[series]-before[series], by, series)
	}
	moved(`pgonce_jobs_inserted_total{kind="welcome_email"}`, 3)
	moved(`pgonce_jobs_duplicate_total{kind="welcome_email"}`, 1)
	moved(`pgonce_jobs_inserted_total{kind="process_payment"}`, 1)
	moved(`pgonce_job_work_seconds_count{kind="welcome_email",outcome="completed"}`, 3)
	moved(`pgonce_http_requests_total{method="POST",route="POST /api/users",status="201"}`, 3)
	moved(`pgonce_http_requests_total{method="POST",route="POST /api/users",status="200"}`, 1)
	moved(`pgonce_http_requests_total{method="POST",route="POST /api/payments",status="422"}`, 1)
	moved(`pgonce_idempotency_total{decision="stored"}`, 1)
	moved(`pgonce_idempotency_total{decision="replayed"}`, 1)
	moved(`pgonce_idempotency_total{decision="mismatch"}`, 1)
	require.Contains(t, after, `pgonce_queue_jobs{queue="email",state="available"}`)
	require.Contains(t, after, `pgonce_queue_oldest_available_seconds{queue="email"}`)
	require.Zero(t, after["pgonce_queue_scrape_error"])
}

// A request's id reaches the jobs it enqueued.
func TestRequestID_IntoJobs(t *testing.T) {
	t.Parallel()
	f := setup(t)
	resp, _ := f.do(t, "POST", "/api/users", `{"email":"rid@example.com"}`, bearer(tokenA), "X-Request-Id", "req-12345")
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, "req-12345", resp.Header.Get("X-Request-Id"))
	var rid string
	require.NoError(t, f.db.Pool.QueryRow(context.Background(),
		`SELECT metadata->>'request_id' FROM river_job WHERE kind = 'welcome_email'`).Scan(&rid))
	require.Equal(t, "req-12345", rid)
}

// A runner without sync sources leaves sync jobs to the runners that have
// them: it does not take them and burn their attempts.
func TestSyncQueue_OnlyWhereSourcesAre(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testdb.New(t, &testdb.Opts{MaxConns: 40})
	plain := setupOn(t, db, false)

	// Another process enqueues a sync (as `runner sync items` does).
	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.SyncWorker{})
	enqueuer, err := runner.New(db.Pool, &runner.Config{Workers: workers, Logger: quiet})
	require.NoError(t, err)
	var syncJob int64
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		res, err := jobs.EnqueueSync(ctx, enqueuer, tx, "items", jobs.SyncTrigger{By: "test"}, nil)
		if err == nil {
			syncJob = res.JobID
		}
		return err
	}))
	// Enqueued after the sync: once this email is sent, the runner has been
	// fetching all along.
	resp, _ := plain.do(t, "POST", "/api/users", `{"email":"fetching@example.com"}`, bearer(tokenA))
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Eventually(t, func() bool { return len(plain.sink.Messages()) == 1 }, 20*time.Second, 20*time.Millisecond)
	var state string
	var attempt int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT state, attempt FROM river_job WHERE id = $1`, syncJob).Scan(&state, &attempt))
	require.Equal(t, "available", state)
	require.Zero(t, attempt)

	// A runner with the source works it, on its first attempt.
	setupOn(t, db, true)
	require.Eventually(t, func() bool {
		_ = db.Pool.QueryRow(ctx, `SELECT state, attempt FROM river_job WHERE id = $1`, syncJob).Scan(&state, &attempt)
		return state == "completed"
	}, 30*time.Second, 20*time.Millisecond)
	require.Equal(t, 1, attempt)
}

// The River UI, in a real browser (Debian's chromium, headless), loads
// through the binary's server behind the operator credentials and lists
// jobs.
func TestRiverUI_InABrowser(t *testing.T) {
	t.Parallel()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
	}
	f := setup(t)
	resp, body := f.do(t, "POST", "/api/users", `{"email":"ui@example.com"}`, bearer(tokenA))
	require.Equal(t, http.StatusCreated, resp.StatusCode, body)
	require.Eventually(t, func() bool {
		var n int
		_ = f.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM river_job WHERE state = 'completed' AND kind = 'welcome_email'`).Scan(&n)
		return n == 1
	}, 10*time.Second, 50*time.Millisecond)

	// Without credentials the page is refused.
	resp, _ = f.do(t, "GET", "/riverui/jobs", "", nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	defer cancelTimeout()

	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("ops:"+adminPass))
	err = chromedp.Do(ctx,
		chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
			_, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
				Headers: network.Headers{"Authorization": auth},
			})
			return err
		}),
		chromedp.Navigate(f.url+"/riverui/jobs?state=completed"),
		// The page is a JavaScript application: the job appears once it has
		// called the River UI API through the same server.
		chromedp.WaitVisible(chromedp.Search(`//*[contains(text(), "welcome_email")]`)),
	)
	require.NoError(t, err)
	text, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	require.NoError(t, err)
	require.Contains(t, text, "welcome_email")
}
