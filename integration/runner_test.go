package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/internal/smtpsink"
	"github.com/pgonce/pgonce/internal/testdb"
)

const token = "integration-token-0123456789"

func env(db *testdb.DB, sink *smtpsink.Sink, gw *testGateway, extra ...string) []string {
	return append([]string{
		"DATABASE_URL=" + db.URL,
		"SMTP_URL=" + sink.URL(),
		"GATEWAY_URL=" + gw.URL,
		"API_TOKENS=tester:" + token,
	}, extra...)
}

// testGateway is the reference gateway with a hook that runs once a charge
// is decided and before its answer is written.
type testGateway struct {
	*gateway.Server
	URL          string
	beforeAnswer atomic.Pointer[func()]
}

func newGateway(t *testing.T) *testGateway {
	t.Helper()
	g := &testGateway{Server: gateway.NewServer()}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.ServeHTTP(&hookWriter{ResponseWriter: w, g: g, r: r}, r)
	}))
	t.Cleanup(func() { g.Close(); hs.Close() })
	g.URL = hs.URL
	return g
}

type hookWriter struct {
	http.ResponseWriter
	g    *testGateway
	r    *http.Request
	done bool
}

func (h *hookWriter) WriteHeader(status int) {
	if fn := h.g.beforeAnswer.Load(); fn != nil && !h.done && h.r.Method == http.MethodPost {
		h.done = true
		(*fn)()
	}
	h.ResponseWriter.WriteHeader(status)
}

func newSink(t *testing.T) *smtpsink.Sink {
	t.Helper()
	sink, err := smtpsink.Start()
	require.NoError(t, err)
	t.Cleanup(func() { _ = sink.Close() })
	return sink
}

// The binary end to end: signups (with duplicates) over HTTP, welcome emails
// over SMTP, and a graceful stop on SIGTERM.
func TestServe_Signups(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, &testdb.Opts{Empty: true}) // serve migrates it
	sink := newSink(t)
	p := serve(t, env(db, sink, newGateway(t)))

	const users = 50
	var wg sync.WaitGroup
	statuses := make(chan int, users*2)
	for i := range users {
		for range 2 { // every user submits twice, at once
			wg.Add(1)
			go func() {
				defer wg.Done()
				status, _ := postJSON(t, p.URL+"/api/users", token, fmt.Sprintf(`{"email":"u%d@example.com"}`, i))
				statuses <- status
			}()
		}
	}
	wg.Wait()
	close(statuses)
	byStatus := map[int]int{}
	for s := range statuses {
		byStatus[s]++
	}
	require.Equal(t, map[int]int{http.StatusCreated: users, http.StatusOK: users}, byStatus)

	require.NoError(t, sink.WaitFor(context.Background(), users))
	waitFor(t, 20*time.Second, "jobs completed", func() bool {
		return count(t, db, `SELECT count(*) FROM river_job WHERE kind = 'welcome_email' AND state = 'completed'`) == users
	})
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, p.wait(t, 15*time.Second))

	require.Equal(t, users, count(t, db, `SELECT count(*) FROM email_log WHERE status = 'sent'`))
	st := sink.Stats()
	require.Equal(t, users, st.Messages)
	require.Equal(t, users, st.DistinctMessageIDs)
	require.Zero(t, count(t, db, `SELECT count(*) FROM river_job WHERE state = 'running'`))
}

// SC-9: the worker process is killed with SIGKILL after the welcome email
// went out over SMTP but before its transaction committed (variant: just
// before the send). A new process retries and completes the job: one
// email_log row, at most two deliveries with one Message-ID, the in-doubt
// send visible.
func TestServe_SC9_KilledAroundTheSend(t *testing.T) {
	t.Parallel()
	for _, afterSend := range []bool{true, false} {
		name := map[bool]string{true: "killed_after_send", false: "killed_before_send"}[afterSend]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testKilledAroundSend(t, afterSend)
		})
	}
}

func testKilledAroundSend(t *testing.T, afterSend bool) {
	db := testdb.New(t, nil)
	sink := newSink(t)
	fast := []string{"JOB_TIMEOUT=2s", "RESCUE_AFTER=3s", "RETRY_MIN=100ms", "RETRY_MAX=500ms", "EMAIL_LEASE=3s"}
	gw := newGateway(t)
	first := serve(t, env(db, sink, gw, fast...))

	var once sync.Once
	killFirst := func() { once.Do(first.kill) }
	if afterSend {
		// The sink holds the message; the worker waits for its answer and
		// dies before it arrives.
		sink.SetHooks(smtpsink.Hooks{AfterRecord: func(smtpsink.Message) { killFirst() }})
	} else {
		sink.SetHooks(smtpsink.Hooks{BeforeMail: killFirst})
	}
	status, body := postJSON(t, first.URL+"/api/users", token, `{"email":"sc9@example.com"}`)
	require.Equal(t, http.StatusCreated, status, body)
	require.Equal(t, -int(syscall.SIGKILL), first.wait(t, 20*time.Second))
	sink.SetHooks(smtpsink.Hooks{})
	require.Equal(t, 1, count(t, db, `SELECT count(*) FROM river_job WHERE kind = 'welcome_email' AND state = 'running'`), "the killed process left its job running")
	require.Equal(t, 1, count(t, db, `SELECT count(*) FROM email_attempts WHERE outcome IS NULL`), "the attempt is on record without an outcome")

	second := serve(t, env(db, sink, gw, fast...))
	t.Cleanup(func() {
		if t.Failed() {
			for _, q := range []string{`SELECT id, kind, state, attempt, errors, metadata FROM river_job`,
				`SELECT id, status, lease_until, lease_attempt_id, now() FROM email_log`, `SELECT * FROM email_attempts`} {
				rows, _ := db.Pool.Query(context.Background(), q)
				for rows.Next() {
					v, _ := rows.Values()
					t.Logf("%v", v)
				}
				rows.Close()
			}
		}
	})
	waitFor(t, 60*time.Second, "the job to be rescued and completed", func() bool {
		return count(t, db, `SELECT count(*) FROM river_job WHERE kind = 'welcome_email' AND state = 'completed'`) == 1
	})
	require.NoError(t, second.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, second.wait(t, 15*time.Second))

	require.Equal(t, 1, count(t, db, `SELECT count(*) FROM email_log`))
	require.Equal(t, 1, count(t, db, `SELECT count(*) FROM email_log WHERE status = 'sent' AND in_doubt`),
		"the retry followed an attempt without an outcome, so the email is marked in doubt")
	require.Equal(t, 1, count(t, db, `SELECT count(*) FROM email_attempts WHERE outcome = 'unknown'`))
	st := sink.Stats()
	require.Equal(t, 1, st.DistinctMessageIDs)
	if afterSend {
		require.Equal(t, 2, st.Messages, "delivered by the killed attempt and by the retry")
	} else {
		require.Equal(t, 1, st.Messages, "only the retry delivered")
	}
	var messageID string
	require.NoError(t, db.Pool.QueryRow(context.Background(), `SELECT message_id FROM email_log`).Scan(&messageID))
	for id := range st.PerMessageID {
		require.Equal(t, messageID, id)
	}
}

// The worker process is killed (SIGKILL) after the gateway made the charge
// and before the worker received the answer and committed. The next process
// retries with the same gateway key: one charge, the payment completed.
func TestServe_KilledBetweenChargeAndCommit(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	sink := newSink(t)
	gw := newGateway(t)
	fast := []string{"JOB_TIMEOUT=2s", "RESCUE_AFTER=3s", "RETRY_MIN=100ms", "RETRY_MAX=500ms"}
	first := serve(t, env(db, sink, gw, fast...))
	var once sync.Once
	kill := func() { once.Do(first.kill) }
	gw.beforeAnswer.Store(&kill)

	status, body := postPayment(t, first.URL, "pay-1", `{"order_id":"order-1","amount":2500,"currency":"EUR"}`)
	require.Equal(t, http.StatusAccepted, status, body)
	require.Equal(t, -int(syscall.SIGKILL), first.wait(t, 20*time.Second))
	gw.beforeAnswer.Store(nil)
	require.Len(t, gw.Ledger(), 1, "the charge was made")
	require.Equal(t, 1, count(t, db, `SELECT count(*) FROM payments WHERE status = 'processing' AND attempts = 1 AND charge_id IS NULL`),
		"but not recorded: the payment shows a call under way")

	second := serve(t, env(db, sink, gw, fast...))
	waitFor(t, 60*time.Second, "the payment to complete", func() bool {
		return count(t, db, `SELECT count(*) FROM payments WHERE status = 'completed'`) == 1
	})
	require.NoError(t, second.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, second.wait(t, 15*time.Second))
	require.Len(t, gw.Ledger(), 1, "one charge")
	require.Equal(t, 1, gw.Stats().Replays, "the retry got the first charge back")
	var chargeID string
	require.NoError(t, db.Pool.QueryRow(context.Background(), `SELECT charge_id FROM payments`).Scan(&chargeID))
	require.Equal(t, gw.Ledger()[0].ID, chargeID)
}

func postPayment(t *testing.T, baseURL, key, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, baseURL+"/api/payments", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw)
}

// runner demo against a database, as `make run` does on the embedded one.
func TestDemo(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, &testdb.Opts{Empty: true})
	p := start(t, []string{"DEMO_DATABASE_URL=" + db.URL}, "demo", "--users", "300", "--payments", "300",
		"--smtp-fault-rate", "0.05", "--smtp-drop-rate", "0.02", "--retry-min", "50ms",
		"--sync-duration", "3s", "--sync-bulk", "2000")
	code := p.wait(t, 2*time.Minute)
	require.Equal(t, 0, code, p.out.String())
	require.Contains(t, p.out.String(), "every invariant holds")
	require.Contains(t, p.out.String(), "distinct Message-IDs")
	require.Contains(t, p.out.String(), "orders charged twice")
	require.Contains(t, p.out.String(), "rows missing at the destination")

	// runner inspect, on the database the demo left behind.
	inspect := func(args ...string) string {
		p := start(t, []string{"DATABASE_URL=" + db.URL}, append([]string{"inspect"}, args...)...)
		require.Equal(t, 0, p.wait(t, time.Minute), p.out.String())
		return p.out.String()
	}
	summary := inspect()
	for _, want := range []string{"Queues", "welcome_email", "process_payment", "sync_data", "completed", "Data sync", "demo"} {
		require.Contains(t, summary, want)
	}
	var sum map[string]any
	require.NoError(t, json.Unmarshal([]byte(inspect("--json")), &sum))
	require.NotEmpty(t, sum["queues"])
	require.NotEmpty(t, sum["duplicates"], "the demo's duplicates were counted")

	var jobID int64
	var key, client string
	require.NoError(t, db.Pool.QueryRow(context.Background(),
		`SELECT job_id, idempotency_key, client_id FROM payments WHERE status = 'completed' LIMIT 1`).Scan(&jobID, &key, &client))
	story := inspect("job", fmt.Sprint(jobID))
	for _, want := range []string{"Job", "process_payment", "Payment", "completed", key} {
		require.Contains(t, story, want)
	}
	story = inspect("key", key, "--client", client)
	for _, want := range []string{"Stored answers", "POST /api/payments", "202", "Payment", "Job"} {
		require.Contains(t, story, want)
	}
	var emailJob int64
	require.NoError(t, db.Pool.QueryRow(context.Background(), `SELECT job_id FROM email_log WHERE status = 'sent' LIMIT 1`).Scan(&emailJob))
	story = inspect("job", fmt.Sprint(emailJob))
	for _, want := range []string{"welcome_email", "Email", "Message-ID", "delivered"} {
		require.Contains(t, story, want)
	}
	p = start(t, []string{"DATABASE_URL=" + db.URL}, "inspect", "job", "99999999")
	require.Equal(t, 1, p.wait(t, time.Minute))
	require.Contains(t, p.out.String(), "not found")
}

// runner demo with nothing configured starts its own PostgreSQL and removes
// it at exit.
func TestDemo_EmbeddedDatabase(t *testing.T) {
	t.Parallel()
	p := start(t, nil, "demo", "--users", "100", "--payments", "100", "--sync-duration", "2s", "--sync-bulk", "1000")
	require.Equal(t, 0, p.wait(t, 2*time.Minute), p.out.String())
	require.Contains(t, p.out.String(), "starting a throwaway PostgreSQL")
	require.Contains(t, p.out.String(), "every invariant holds")
}

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, &testdb.Opts{Empty: true})
	e := []string{"DATABASE_URL=" + db.URL}
	run := func(args ...string) (int, string) {
		p := start(t, e, args...)
		code := p.wait(t, time.Minute)
		return code, p.out.String()
	}
	code, out := run("migrate", "status")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "pending")
	code, out = run("migrate", "up")
	require.Equal(t, 0, code, out)
	code, out = run("migrate", "status")
	require.Equal(t, 0, code, out)
	require.NotContains(t, out, "pending")
	require.Contains(t, out, "River schema v8")
	code, out = run("migrate", "down", "--to", "0")
	require.Equal(t, 0, code, out)
	require.Zero(t, count(t, db, `SELECT count(*) FROM information_schema.tables WHERE table_name IN ('river_job', 'users')`))
	code, out = run("migrate", "sideways")
	require.Equal(t, 2, code, out)
}

// serve refuses to start without its configuration, saying what is missing.
func TestServe_RequiresConfig(t *testing.T) {
	t.Parallel()
	p := start(t, nil, "serve")
	require.Equal(t, 2, p.wait(t, 30*time.Second))
	require.Contains(t, p.out.String(), "DATABASE_URL")
	require.Contains(t, p.out.String(), "API_TOKENS")
	require.Contains(t, p.out.String(), "GATEWAY_URL")

	p = start(t, []string{"DATABASE_URL=postgres://x", "SMTP_URL=smtp://x", "GATEWAY_URL=http://x", "API_TOKENS=short:abc"}, "serve")
	require.Equal(t, 2, p.wait(t, 30*time.Second))
	require.Contains(t, p.out.String(), "shorter than 16")
}

// runner sync SOURCE syncs a table of another database into data_records,
// with a summary.
func TestSyncCommand(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := testdb.New(t, &testdb.Opts{Empty: true})
	ddl, err := datasync.TrackingSQL("items")
	require.NoError(t, err)
	_, err = src.Pool.Exec(ctx, `CREATE TABLE items (id bigint PRIMARY KEY, name text);`+ddl+
		`INSERT INTO items (id, name) SELECT g, 'n' || g FROM generate_series(1, 1234) g;`)
	require.NoError(t, err)
	db := testdb.New(t, nil)
	env := []string{"DATABASE_URL=" + db.URL, "SYNC_SOURCES=items=" + src.URL + "&sync_table=items"}
	if !strings.Contains(src.URL, "?") {
		env[1] = "SYNC_SOURCES=items=" + src.URL + "?sync_table=items"
	}
	p := start(t, env, "sync", "items", "--page-size", "100")
	require.Equal(t, 0, p.wait(t, time.Minute), p.out.String())
	require.Contains(t, p.out.String(), "rows written (new or newer)")
	require.Contains(t, p.out.String(), "1234")
	require.Equal(t, 1234, count(t, db, `SELECT count(*) FROM data_records WHERE source = 'items'`))

	// Nothing new: a second sync writes nothing.
	p = start(t, env, "sync", "items")
	require.Equal(t, 0, p.wait(t, time.Minute), p.out.String())
	require.Equal(t, 1234, count(t, db, `SELECT rows_applied::int FROM sync_cursors WHERE source = 'items'`))

	p = start(t, env, "sync", "nope")
	require.Equal(t, 2, p.wait(t, time.Minute))
	require.Contains(t, p.out.String(), "no source")
}
