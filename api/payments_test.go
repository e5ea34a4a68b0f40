package api_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/api"
	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/idempotency"
	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/payment"
	"github.com/pgonce/pgonce/runner"
)

const tokenB = "test-token-b-0123456789"

type payFixture struct {
	*fixture
	gw *gateway.Server
}

// setupPayments serves the API with two clients and works payments against
// a reference gateway.
func setupPayments(t *testing.T) *payFixture {
	t.Helper()
	db := testdb.New(t, nil)
	gw := gateway.NewServer()
	hs := httptest.NewServer(gw)
	t.Cleanup(func() { gw.Close(); hs.Close() })
	client, err := gateway.NewClient(hs.URL, nil)
	require.NoError(t, err)
	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.ProcessPaymentWorker{Pool: db.Pool, Gateway: client})
	r, err := runner.New(db.Pool, &runner.Config{Workers: workers, Queues: jobs.Queues(nil), Logger: quiet,
		RetryPolicy: &runner.Backoff{Min: 10 * time.Millisecond, Max: 20 * time.Millisecond}})
	require.NoError(t, err)
	require.NoError(t, r.Start(context.Background()))
	t.Cleanup(func() { _ = r.Stop(context.Background()) })
	s, err := api.New(&api.Config{Pool: db.Pool, Runner: r, Logger: quiet, MaxBodyBytes: 4096,
		Tokens: map[string]string{token: "client-a", tokenB: "client-b"}, AdminUser: "ops", AdminPassword: adminPassword})
	require.NoError(t, err)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return &payFixture{fixture: &fixture{pool: db.Pool, srv: srv, r: r}, gw: gw}
}

func (f *payFixture) pay(t *testing.T, tok, key, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("POST", f.srv.URL+"/api/payments", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, raw
}

func (f *payFixture) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, f.pool.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

func (f *payFixture) charges() int {
	n := 0
	for _, c := range f.gw.Ledger() {
		if c.Status == gateway.StatusSucceeded {
			n++
		}
	}
	return n
}

func (f *payFixture) waitCompleted(t *testing.T, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		return f.count(t, `SELECT count(*) FROM payments WHERE status = 'completed'`) == n
	}, 15*time.Second, 20*time.Millisecond)
}

const order1 = `{"order_id":"order-1","amount":1999,"currency":"EUR"}`

func TestCreatePayment(t *testing.T) {
	t.Parallel()
	f := setupPayments(t)
	resp, raw := f.pay(t, token, "k1", order1)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, string(raw))
	var out api.PaymentResponse
	require.NoError(t, json.Unmarshal(raw, &out))
	require.Equal(t, payment.StatusPending, out.Payment.Status)
	require.EqualValues(t, 1999, out.Payment.AmountMinor)
	require.NotNil(t, out.Job)
	require.False(t, out.Job.Duplicate)
	require.Equal(t, "/api/payments/"+itoa(out.Payment.ID), resp.Header.Get("Location"))
	require.NotContains(t, string(raw), "gateway_key", "internal keys are not exposed")

	// The retry (key order and whitespace differ) replays byte for byte.
	resp2, raw2 := f.pay(t, token, "k1", ` {"currency":"EUR", "amount":1999, "order_id":"order-1"} `)
	require.Equal(t, http.StatusAccepted, resp2.StatusCode)
	require.Equal(t, string(raw), string(raw2))
	require.Equal(t, "true", resp2.Header.Get(idempotency.ReplayedHeader))
	require.Equal(t, resp.Header.Get("Location"), resp2.Header.Get("Location"))

	f.waitCompleted(t, 1)
	resp3, raw3 := f.do(t, "GET", "/api/payments/"+itoa(out.Payment.ID), "", "")
	require.Equal(t, http.StatusOK, resp3.StatusCode)
	require.Contains(t, string(raw3), `"status":"completed"`)
	require.Equal(t, 1, f.charges())

	// Another client can neither read it nor collide with its key.
	req, _ := http.NewRequest("GET", f.srv.URL+"/api/payments/"+itoa(out.Payment.ID), nil)
	req.Header.Set("Authorization", "Bearer "+tokenB)
	resp4, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp4.Body.Close()
	require.Equal(t, http.StatusNotFound, resp4.StatusCode)
	resp5, raw5 := f.pay(t, tokenB, "k1", order1)
	require.Equal(t, http.StatusAccepted, resp5.StatusCode, string(raw5))
	require.Empty(t, resp5.Header.Get(idempotency.ReplayedHeader))
	f.waitCompleted(t, 2)
	require.Equal(t, 2, f.charges())

	// A whole number written another way is that number (as the
	// idempotency layer's canonical form says).
	resp6, raw6 := f.pay(t, token, "k-exp", `{"order_id":"order-exp","amount":1.999e3,"currency":"EUR"}`)
	require.Equal(t, http.StatusAccepted, resp6.StatusCode, string(raw6))
	require.Contains(t, string(raw6), `"amount":1999`)
	resp7, raw7 := f.pay(t, token, "k-exp", `{"order_id":"order-exp","amount":1999,"currency":"EUR"}`)
	require.Equal(t, "true", resp7.Header.Get(idempotency.ReplayedHeader))
	require.Equal(t, string(raw6), string(raw7))
}

// Bad input: a 4xx problem, nothing written, nothing charged.
func TestCreatePayment_BadInput(t *testing.T) {
	t.Parallel()
	f := setupPayments(t)
	tests := []struct {
		name, key, body string
		status          int
		slug            string
	}{
		{"no key", "", order1, 400, "idempotency-key-missing"},
		{"key too long", strings.Repeat("k", 256), order1, 400, "idempotency-key-invalid"},
		{"key not ASCII", "clé", order1, 400, "idempotency-key-invalid"},
		{"malformed JSON", "k", `{"order_id":`, 400, "invalid-json"},
		{"ambiguous member names", "k", `{"order_id":"o","amount":1,"Amount":2,"currency":"EUR"}`, 400, "invalid-json"},
		{"unknown field", "k", `{"order_id":"o","amount":1,"currency":"EUR","card":"4242"}`, 400, "invalid-json"},
		{"amount with a fraction", "k", `{"order_id":"o","amount":19.99,"currency":"EUR"}`, 422, "invalid-payment"},
		{"amount as a boolean", "k", `{"order_id":"o","amount":true,"currency":"EUR"}`, 422, "invalid-payment"},
		{"amount with 60,000 digits", "k", `{"order_id":"o","amount":` + strings.Repeat("9", 60000) + `,"currency":"EUR"}`, 413, "body-too-large"},
		{"NUL in description", "k", `{"order_id":"o","amount":1,"currency":"EUR","description":"x\u0000y"}`, 422, "invalid-payment"},
		{"amount as a string", "k", `{"order_id":"o","amount":"1999","currency":"EUR"}`, 422, "invalid-payment"},
		{"amount as an object", "k", `{"order_id":"o","amount":{"value":1},"currency":"EUR"}`, 422, "invalid-payment"},
		{"amount null", "k", `{"order_id":"o","amount":null,"currency":"EUR"}`, 422, "invalid-payment"},
		{"zero amount", "k", `{"order_id":"o","amount":0,"currency":"EUR"}`, 422, "invalid-payment"},
		{"negative amount", "k", `{"order_id":"o","amount":-5,"currency":"EUR"}`, 422, "invalid-payment"},
		{"huge amount", "k", `{"order_id":"o","amount":99999999999999999999,"currency":"EUR"}`, 422, "invalid-payment"},
		{"missing amount", "k", `{"order_id":"o","currency":"EUR"}`, 422, "invalid-payment"},
		{"unknown currency", "k", `{"order_id":"o","amount":1,"currency":"EUROS"}`, 422, "invalid-payment"},
		{"bad order id", "k", `{"order_id":"o 1","amount":1,"currency":"EUR"}`, 422, "invalid-payment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, raw := f.pay(t, token, tt.key, tt.body)
			requireProblem(t, resp, raw, tt.status, tt.slug)
		})
	}
	req, _ := http.NewRequest("POST", f.srv.URL+"/api/payments", strings.NewReader(order1))
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Idempotency-Key", "k")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	requireProblem(t, resp, raw, 415, "unsupported-media-type")

	require.Zero(t, f.count(t, `SELECT count(*) FROM payments`))
	require.Zero(t, f.count(t, `SELECT count(*) FROM idempotency_keys`))
	require.Zero(t, f.count(t, `SELECT count(*) FROM river_job`))

	// The client fixes its request and retries with the same key: not a
	// mismatch, since failed requests are not stored.
	resp2, raw2 := f.pay(t, token, "k", `{"order_id":"o","amount":1,"currency":"EUR"}`)
	require.Equal(t, http.StatusAccepted, resp2.StatusCode, string(raw2))
}

// A second key for an order with a live payment: 409, no second charge.
func TestCreatePayment_OrderAlreadyPaid(t *testing.T) {
	t.Parallel()
	f := setupPayments(t)
	resp, _ := f.pay(t, token, "k1", order1)
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	resp2, raw2 := f.pay(t, token, "k2", order1)
	requireProblem(t, resp2, raw2, 409, "order-has-payment")
	f.waitCompleted(t, 1)
	require.Equal(t, 1, f.charges())
}

// SC-11: a payment with key K; K passes its lifetime, and is purged; a retry
// with K and the same body, then with another body. Never a 500, never a
// second charge. The rule: the payment outlives its key's stored answer; the
// same request then gets the payment as it is now (200, not a replay), a
// different one 422, and a new key for the order 409.
func TestCreatePayment_AfterKeyExpiry(t *testing.T) {
	t.Parallel()
	f := setupPayments(t)
	ctx := context.Background()
	resp, raw := f.pay(t, token, "K", order1)
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	var first api.PaymentResponse
	require.NoError(t, json.Unmarshal(raw, &first))
	f.waitCompleted(t, 1)

	expire := func() {
		_, err := f.pool.Exec(ctx, `UPDATE idempotency_keys SET created_at = now() - interval '2 days', expires_at = now() - interval '1 day'`)
		require.NoError(t, err)
	}
	// Expired but not yet purged, then purged: the same behaviour.
	for _, purge := range []bool{false, true} {
		expire()
		if purge {
			n, err := idempotency.Purge(ctx, f.pool)
			require.NoError(t, err)
			require.EqualValues(t, 1, n)
		}
		resp, raw := f.pay(t, token, "K", order1)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(raw))
		var again api.PaymentResponse
		require.NoError(t, json.Unmarshal(raw, &again))
		require.Equal(t, first.Payment.ID, again.Payment.ID)
		require.Equal(t, payment.StatusCompleted, again.Payment.Status)
		require.Nil(t, again.Job, "nothing left to process")
	}
	expire()
	resp2, raw2 := f.pay(t, token, "K", `{"order_id":"order-1","amount":2999,"currency":"EUR"}`)
	requireProblem(t, resp2, raw2, 422, "idempotency-key-reused")
	resp3, raw3 := f.pay(t, token, "K2", order1)
	requireProblem(t, resp3, raw3, 409, "order-has-payment")

	time.Sleep(100 * time.Millisecond)
	require.Equal(t, 1, f.count(t, `SELECT count(*) FROM payments`))
	require.Equal(t, 1, f.charges())
}
