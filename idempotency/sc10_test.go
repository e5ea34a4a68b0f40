package idempotency_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/idempotency"
	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/payment"
	"github.com/pgonce/pgonce/runner"
)

// SC-10: the payment handler takes 500 ms.
// (a) Two POSTs with the same key and body, 5 ms apart: one 2xx and one 409,
// and a later retry replays the 2xx byte for byte.
// (b) Same key, different amount, 5 ms apart: one 2xx and one 409 or 422.
// (c) (b) again after the first finished: 422.
// Always exactly one payment and one gateway charge.
func TestSC10_SlowPaymentHandler(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	ctx := context.Background()

	gw := gateway.NewServer()
	gwSrv := httptest.NewServer(gw)
	t.Cleanup(func() { gw.Close(); gwSrv.Close() })
	gwClient, err := gateway.NewClient(gwSrv.URL, nil)
	require.NoError(t, err)

	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.ProcessPaymentWorker{Pool: db.Pool, Gateway: gwClient})
	r, err := runner.New(db.Pool, &runner.Config{Workers: workers, Queues: jobs.Queues(nil), Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() { _ = r.Stop(context.Background()) })

	layer, err := idempotency.New(&idempotency.Config{DB: db.Pool, Logger: quiet,
		Principal: func(*http.Request) (string, error) { return "shop", nil }})
	require.NoError(t, err)
	slow := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var body struct {
			Order  string `json:"order_id"`
			Amount int64  `json:"amount"`
		}
		if err := json.NewDecoder(req.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		res, err := jobs.SubmitPayment(req.Context(), r, idempotency.Tx(req.Context()), &payment.Request{
			ClientID: "shop", IdempotencyKey: idempotency.Key(req.Context()), OrderID: body.Order,
			AmountMinor: body.Amount, Currency: "EUR",
		}, 0)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
			return
		}
		time.Sleep(500 * time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"payment_id":%d,"job_id":%d}`, res.Payment.ID, res.Job.JobID)
	})
	srv := httptest.NewServer(layer.Middleware(slow))
	t.Cleanup(srv.Close)

	post := func(key string, amount int64) answer {
		req, err := http.NewRequest("POST", srv.URL+"/api/payments", strings.NewReader(fmt.Sprintf(`{"order_id":"order-%s","amount":%d}`, key, amount)))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return answer{status: resp.StatusCode, header: resp.Header, body: string(raw)}
	}
	twoAtOnce := func(key string, first, second int64) (answer, answer) {
		var a, b answer
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); a = post(key, first) }()
		time.Sleep(5 * time.Millisecond)
		go func() { defer wg.Done(); b = post(key, second) }()
		wg.Wait()
		return a, b
	}

	// Which of two requests 5 ms apart reaches the database first is up to
	// the scheduler on a loaded machine: the assertions hold for either.
	winner := func(x, y answer) (won, lost answer, first bool) {
		if x.status == http.StatusAccepted {
			return x, y, true
		}
		return y, x, false
	}

	// (a)
	won, lost, _ := winner(twoAtOnce("key-a", 1999, 1999))
	require.Equal(t, http.StatusAccepted, won.status, won.body)
	requireProblem(t, lost, http.StatusConflict, "idempotency-key-in-use")
	later := post("key-a", 1999)
	require.Equal(t, won.status, later.status)
	require.Equal(t, won.body, later.body, "byte for byte")
	require.Equal(t, "true", later.header.Get(idempotency.ReplayedHeader))

	// (b)
	won, lost, firstWon := winner(twoAtOnce("key-b", 1999, 2999))
	require.Equal(t, http.StatusAccepted, won.status, won.body)
	require.Contains(t, []int{http.StatusConflict, http.StatusUnprocessableEntity}, lost.status, lost.body)

	// (c): the losing request again, now that the first finished.
	losingAmount := int64(2999)
	if !firstWon {
		losingAmount = 1999
	}
	requireProblem(t, post("key-b", losingAmount), http.StatusUnprocessableEntity, "idempotency-key-reused")

	// Exactly one payment and one gateway charge per key.
	require.Eventually(t, func() bool {
		var done int
		_ = db.Pool.QueryRow(ctx, `SELECT count(*) FROM payments WHERE status = 'completed'`).Scan(&done)
		return done == 2
	}, 15*time.Second, 20*time.Millisecond)
	var payments int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM payments`).Scan(&payments))
	require.Equal(t, 2, payments)
	perKey := map[string]int{}
	for _, ch := range gw.Ledger() {
		perKey[ch.IdempotencyKey]++
	}
	require.Equal(t, map[string]int{payment.GatewayKey("shop", "key-a"): 1, payment.GatewayKey("shop", "key-b"): 1}, perKey)
}
