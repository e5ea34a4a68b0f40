package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/pgonce/pgonce/idempotency"
	"github.com/pgonce/pgonce/internal/app"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/runner"
)

const benchToken = "bench-token-0123456789abcdef"

// http measures POST /api/payments through the whole API (authentication,
// the Idempotency-Key layer, the payment, its job and the stored answer in
// one transaction) with new keys and with replays, against a plain handler
// that decodes the same body and does the ceiling's single INSERT.
func (b *bench) http(ctx context.Context) error {
	d, err := b.newDB(ctx, "http")
	if err != nil {
		return err
	}
	defer d.Close()
	sink, sender, err := startSink()
	if err != nil {
		return err
	}
	defer sink.Close()
	// The runner is not started: requests only enqueue, no worker competes
	// with them for the machine.
	a, err := app.New(&app.Options{
		Pool: d.Pool, Mailer: sender, MailDomain: jobs.DomainDefault, Logger: b.cfg.Logger,
		Tokens: map[string]string{benchToken: "bench"}, Runner: runner.Config{Logger: b.cfg.Logger},
	})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/", a.API.Handler())
	mux.HandleFunc("POST /plain", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			OrderID  string `json:"order_id"`
			Amount   int64  `json:"amount"`
			Currency string `json:"currency"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var id int64
		if err := d.Pool.QueryRow(r.Context(), `INSERT INTO bench_ceiling (v) VALUES ($1) RETURNING id`, req.Amount).Scan(&id); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(map[string]any{"id": id, "order_id": req.OrderID})
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()
	base := "http://" + l.Addr().String()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConns: 2 * b.cfg.HTTPClients, MaxIdleConnsPerHost: 2 * b.cfg.HTTPClients, IdleConnTimeout: time.Minute,
	}}
	defer client.CloseIdleConnections()

	body := func(i int64) []byte {
		return []byte(`{"order_id": "order-` + strconv.FormatInt(i, 10) + `", "amount": ` + strconv.FormatInt(100+i%5000, 10) + `, "currency": "EUR"}`)
	}
	post := func(ctx context.Context, path, key string, body []byte) (int, http.Header, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(body))
		if err != nil {
			return 0, nil, nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+benchToken)
		if key != "" {
			req.Header.Set(idempotency.HeaderName, key)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, nil, err
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header, got, err
	}
	var created atomic.Int64
	phases := []struct {
		key, name string
		call      func(ctx context.Context, i int64) error
	}{
		{"http_plain", "plain handler: decode, one INSERT, 202", func(ctx context.Context, i int64) error {
			status, _, got, err := post(ctx, "/plain", "", body(i))
			if err == nil && status != http.StatusAccepted {
				err = fmt.Errorf("plain handler answered %d: %s", status, got)
			}
			return err
		}},
		{"http_new", "POST /api/payments, new Idempotency-Key", func(ctx context.Context, i int64) error {
			status, _, got, err := post(ctx, "/api/payments", "key-"+strconv.FormatInt(i, 10), body(i))
			if err == nil && status != http.StatusAccepted {
				err = fmt.Errorf("new payment answered %d: %s", status, got)
			}
			if err == nil {
				created.Add(1)
			}
			return err
		}},
		{"http_replay", "POST /api/payments, replayed Idempotency-Key", func(ctx context.Context, i int64) error {
			k := i % created.Load()
			status, h, got, err := post(ctx, "/api/payments", "key-"+strconv.FormatInt(k, 10), body(k))
			if err == nil && (status != http.StatusAccepted || h.Get(idempotency.ReplayedHeader) != "true") {
				err = fmt.Errorf("replay answered %d (replayed %q): %s", status, h.Get(idempotency.ReplayedHeader), got)
			}
			return err
		}},
	}
	// Warm the connections, the handler's code paths and the pool.
	if _, err := closedLoop(ctx, b.cfg.HTTPClients, 300*time.Millisecond, func(ctx context.Context, i int64) error {
		_, _, _, err := post(ctx, "/plain", "", body(i))
		return err
	}); err != nil {
		return err
	}
	for _, p := range phases {
		res, err := closedLoop(ctx, b.cfg.HTTPClients, b.cfg.Duration, p.call)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		b.report.add(&Result{Key: p.key, Section: "http", Name: p.name, Note: fmt.Sprintf("%d clients", b.cfg.HTTPClients),
			Rate: res.Rate(), Unit: "requests", PerCallUs: toUs(res.Mean()), P50Ms: toMs(res.P(0.5)), P99Ms: toMs(res.P(0.99)),
			MachineCPU: res.CPU.MachineBusy, OwnCPU: res.CPU.OwnCores})
		b.logf("%s: %.0f requests/s, p50 %s, p99 %s", p.name, res.Rate(), res.P(0.5), res.P(0.99))
	}
	return nil
}
