package gateway_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pgonce/pgonce/gateway"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func setup(t *testing.T, timeout time.Duration) (*gateway.Server, *gateway.Client) {
	t.Helper()
	srv := gateway.NewServer()
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.Close()
		hs.Close()
	})
	c, err := gateway.NewClient(hs.URL, &gateway.ClientOpts{Timeout: timeout})
	require.NoError(t, err)
	return srv, c
}

func req(key string, amount int64) *gateway.ChargeRequest {
	return &gateway.ChargeRequest{IdempotencyKey: key, AmountMinor: amount, Currency: "EUR", OrderID: "o-1"}
}

// A repeated key returns the original charge; another key is another charge.
func TestServer_RepeatedKeyReturnsTheOriginalCharge(t *testing.T) {
	t.Parallel()
	srv, c := setup(t, time.Second)
	ctx := context.Background()
	first, err := c.Charge(ctx, req("k1", 500))
	require.NoError(t, err)
	require.Equal(t, gateway.StatusSucceeded, first.Status)
	again, err := c.Charge(ctx, req("k1", 500))
	require.NoError(t, err)
	require.Equal(t, first.ID, again.ID)
	other, err := c.Charge(ctx, req("k2", 500))
	require.NoError(t, err)
	require.NotEqual(t, first.ID, other.ID)
	require.Len(t, srv.Ledger(), 2)
	st := srv.Stats()
	require.Equal(t, 2, st.Charges)
	require.Equal(t, 1, st.Replays)
}

func TestServer_KeyReusedWithOtherParameters(t *testing.T) {
	t.Parallel()
	srv, c := setup(t, time.Second)
	ctx := context.Background()
	_, err := c.Charge(ctx, req("k1", 500))
	require.NoError(t, err)
	_, err = c.Charge(ctx, req("k1", 501))
	require.ErrorIs(t, err, gateway.ErrKeyReused)
	require.Len(t, srv.Ledger(), 1)
}

// Concurrent requests with one key: one charge; the others wait for it
// (409, retried by the caller) or replay it.
func TestServer_ConcurrentSameKey(t *testing.T) {
	t.Parallel()
	srv, c := setup(t, 5*time.Second)
	srv.SetFaults(gateway.Faults{Latency: 50 * time.Millisecond})
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	ids := map[string]bool{}
	conflicts := 0
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ch, err := c.Charge(ctx, req("same", 700))
				var transient *gateway.TransientError
				if errors.As(err, &transient) {
					mu.Lock()
					conflicts++
					mu.Unlock()
					time.Sleep(20 * time.Millisecond)
					continue
				}
				require.NoError(t, err)
				mu.Lock()
				ids[ch.ID] = true
				mu.Unlock()
				return
			}
		}()
	}
	wg.Wait()
	require.Len(t, ids, 1)
	require.Len(t, srv.Ledger(), 1)
	require.Positive(t, conflicts)
}

func TestServer_Faults(t *testing.T) {
	t.Parallel()
	srv, c := setup(t, 200*time.Millisecond)
	ctx := context.Background()

	// 503: nothing charged, transient; the retry charges.
	srv.InjectNext(gateway.FaultServerError)
	_, err := c.Charge(ctx, req("a", 100))
	var transient *gateway.TransientError
	require.ErrorAs(t, err, &transient)
	require.False(t, transient.InDoubt)
	require.Empty(t, srv.Ledger())
	_, err = c.Charge(ctx, req("a", 100))
	require.NoError(t, err)

	// Charged, then no answer: in doubt; the retry with the same key gets
	// the charge that was made.
	srv.InjectNext(gateway.FaultTimeoutAfterCharge)
	_, err = c.Charge(ctx, req("b", 100))
	require.ErrorAs(t, err, &transient)
	require.True(t, transient.InDoubt)
	ch, err := c.Charge(ctx, req("b", 100))
	require.NoError(t, err)
	require.Equal(t, gateway.StatusSucceeded, ch.Status)

	// A decline is final, and repeating the key repeats it.
	srv.InjectNext(gateway.FaultDecline)
	_, err = c.Charge(ctx, req("c", 100))
	var declined *gateway.DeclinedError
	require.ErrorAs(t, err, &declined)
	require.Equal(t, "card_declined", declined.Code)
	_, err = c.Charge(ctx, req("c", 100))
	require.ErrorAs(t, err, &declined)

	// 429: come back later; nothing charged.
	srv.InjectNext(gateway.FaultRateLimit)
	_, err = c.Charge(ctx, req("d", 100))
	var limited *gateway.RateLimitedError
	require.ErrorAs(t, err, &limited)

	succeeded := 0
	for _, ch := range srv.Ledger() {
		if ch.Status == gateway.StatusSucceeded {
			succeeded++
		}
	}
	require.Equal(t, 2, succeeded) // a and b, once each
	require.Equal(t, map[string]int{"server_error": 1, "timeout_after_charge": 1, "decline": 1, "rate_limit": 1}, srv.Stats().FaultsInjected)
}

func TestClient_BadRequests(t *testing.T) {
	t.Parallel()
	_, c := setup(t, time.Second)
	_, err := c.Charge(context.Background(), &gateway.ChargeRequest{AmountMinor: 1, Currency: "EUR", OrderID: "o"})
	require.ErrorIs(t, err, gateway.ErrInvalidRequest)
	_, err = c.Charge(context.Background(), &gateway.ChargeRequest{IdempotencyKey: "k", AmountMinor: 0, Currency: "EUR", OrderID: "o"})
	require.ErrorIs(t, err, gateway.ErrInvalidRequest)
	_, err = gateway.NewClient("ftp://x", nil)
	require.Error(t, err)
}
