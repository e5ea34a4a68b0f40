package integration

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/internal/pgembed"
)

// retryPost posts until it gets an answer that is not a 5xx or a lost
// connection, as a client retrying through an outage does; the same key
// (payments) or the same address (signups) makes the retry safe.
func retryPost(ctx context.Context, t *testing.T, url, body, key string) int {
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, stringsReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 500 && resp.StatusCode != http.StatusConflict {
				return resp.StatusCode
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0
}

// The runner survives PostgreSQL restarting mid-run (a fast shutdown cuts
// every session) and being down for a while: requests meanwhile get 503 and
// readiness turns false, the clients' retries go through once it is back,
// every job finishes, and no effect happens twice.
func TestServe_SurvivesPostgresRestart(t *testing.T) {
	t.Parallel()
	binDir, err := pgembed.FindBinaries()
	if err != nil {
		t.Skip("needs the PostgreSQL server binaries to restart a server of its own: ", err)
	}
	ctx := context.Background()
	srv, err := pgembed.StartLocal(ctx, binDir, &pgembed.Options{Settings: map[string]string{"fsync": "off"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })

	sink := newSink(t)
	gw := newGateway(t)
	p := serve(t, []string{
		"DATABASE_URL=" + srv.URL, "SMTP_URL=" + sink.URL(), "GATEWAY_URL=" + gw.URL, "API_TOKENS=tester:" + token,
		"RETRY_MIN=100ms", "RETRY_MAX=1s", "JOB_TIMEOUT=5s", "RESCUE_AFTER=8s", "EMAIL_LEASE=5s",
	})

	const users, payments = 60, 60
	loadCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	statuses := make(chan int, users+payments)
	for i := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * 100 * time.Millisecond)
			statuses <- retryPost(loadCtx, t, p.URL+"/api/users", fmt.Sprintf(`{"email":"out%d@example.com"}`, i), "")
		}()
	}
	for i := range payments {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * 100 * time.Millisecond)
			statuses <- retryPost(loadCtx, t, p.URL+"/api/payments",
				fmt.Sprintf(`{"order_id":"order-%d","amount":%d,"currency":"EUR"}`, i, 100+i), fmt.Sprintf("key-%d", i))
		}()
	}

	// A restart a second into the load, then an outage of two seconds.
	time.Sleep(1500 * time.Millisecond)
	require.NoError(t, srv.Restart(ctx))
	time.Sleep(1500 * time.Millisecond)
	require.NoError(t, srv.Down(ctx))
	waitFor(t, 10*time.Second, "readiness to turn false", func() bool {
		resp, err := http.Get(p.URL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	time.Sleep(2 * time.Second)
	require.NoError(t, srv.Up(ctx))
	waitFor(t, 30*time.Second, "readiness to come back", func() bool {
		resp, err := http.Get(p.URL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	wg.Wait()
	close(statuses)
	for s := range statuses {
		require.Contains(t, []int{http.StatusOK, http.StatusCreated, http.StatusAccepted}, s)
	}

	pool, err := pgxpool.New(ctx, srv.URL)
	require.NoError(t, err)
	defer pool.Close()
	q := func(sql string) int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, sql).Scan(&n))
		return n
	}
	waitFor(t, 90*time.Second, "every job finished", func() bool {
		var unfinished int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind IN ('welcome_email', 'process_payment')
			AND state NOT IN ('completed', 'discarded', 'cancelled')`).Scan(&unfinished)
		return err == nil && unfinished == 0 &&
			q(`SELECT count(*) FROM river_job WHERE kind IN ('welcome_email', 'process_payment')`) == users+payments
	})
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, p.wait(t, 20*time.Second))

	require.Zero(t, q(`SELECT count(*) FROM river_job WHERE state IN ('discarded', 'cancelled')`), "no job lost")
	require.Equal(t, users, q(`SELECT count(*) FROM users`))
	require.Equal(t, users, q(`SELECT count(*) FROM email_log WHERE status = 'sent'`))
	require.Equal(t, payments, q(`SELECT count(*) FROM payments`))
	require.Equal(t, payments, q(`SELECT count(*) FROM payments WHERE status = 'completed'`))

	st := sink.Stats()
	for id, n := range st.PerMessageID {
		if n > 1 {
			rows, _ := pool.Query(ctx, `SELECT a.*, l.status, l.in_doubt, l.attempts FROM email_attempts a JOIN email_log l ON l.id = a.email_log_id WHERE l.message_id = $1 ORDER BY a.id`, id)
			for rows.Next() {
				v, _ := rows.Values()
				t.Logf("duplicate %s: %v", id, v)
			}
			rows.Close()
			rows, _ = pool.Query(ctx, `SELECT j.id, j.state, j.attempt, j.errors, j.metadata FROM river_job j JOIN email_log l ON l.job_id = j.id WHERE l.message_id = $1`, id)
			for rows.Next() {
				v, _ := rows.Values()
				t.Logf("job: %v", v)
			}
			rows.Close()
		}
	}
	require.Equal(t, users, st.DistinctMessageIDs)
	inDoubt := q(`SELECT count(*) FROM email_log WHERE in_doubt`)
	require.LessOrEqual(t, st.Duplicates, inDoubt, "a second copy only where the email is marked in doubt")
	perKey := map[string]int{}
	for _, c := range gw.Ledger() {
		perKey[c.IdempotencyKey]++
	}
	require.Len(t, perKey, payments)
	for key, n := range perKey {
		require.Equal(t, 1, n, "one charge for %s", key)
	}
}
