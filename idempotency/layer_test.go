package idempotency_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/idempotency"
	"github.com/pgonce/pgonce/internal/problem"
	"github.com/pgonce/pgonce/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// thingsHandler writes one row through the layer's transaction and answers
// with what the test asks for.
type thingsHandler struct {
	calls   atomic.Int64
	status  atomic.Int64 // status to answer; 0 means 201
	release chan struct{}
	panics  atomic.Bool
	commit  atomic.Bool // tries to commit the layer's transaction itself
}

func (h *thingsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := h.calls.Add(1)
	ctx := r.Context()
	tx := idempotency.Tx(ctx)
	body, _ := io.ReadAll(r.Body)
	var id int64
	if err := tx.QueryRow(ctx, `INSERT INTO things (key, body) VALUES ($1, $2) RETURNING id`, idempotency.Key(ctx), string(body)).Scan(&id); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if h.release != nil {
		<-h.release
	}
	if h.panics.Load() {
		panic("handler crashed after writing")
	}
	if h.commit.Load() {
		if err := tx.Commit(ctx); !errors.Is(err, idempotency.ErrTxOwned) {
			http.Error(w, fmt.Sprint("commit: ", err), http.StatusInternalServerError)
			return
		}
	}
	status := int(h.status.Load())
	if status == 0 {
		status = http.StatusCreated
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", fmt.Sprintf("/things/%d", id))
	w.Header().Set("X-Call", fmt.Sprint(n)) // not a stored header
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"id":%d,"call":%d,"at":%q}`, id, n, time.Now().Format(time.RFC3339Nano))
}

type fixture struct {
	pool    *pgxpool.Pool
	srv     *httptest.Server
	handler *thingsHandler
	layer   *idempotency.Layer
}

func setup(t *testing.T, cfg *idempotency.Config) *fixture {
	t.Helper()
	db := testdb.New(t, nil)
	_, err := db.Pool.Exec(context.Background(), `CREATE TABLE things (id bigserial PRIMARY KEY, key text, body text)`)
	require.NoError(t, err)
	return setupPool(t, db.Pool, cfg)
}

func setupPool(t *testing.T, pool *pgxpool.Pool, cfg *idempotency.Config) *fixture {
	t.Helper()
	if cfg == nil {
		cfg = &idempotency.Config{}
	}
	cfg.DB = pool
	cfg.Logger = quiet
	cfg.Principal = func(r *http.Request) (string, error) {
		if p := r.Header.Get("X-Client"); p != "" {
			return p, nil
		}
		return "", errors.New("no client")
	}
	layer, err := idempotency.New(cfg)
	require.NoError(t, err)
	h := &thingsHandler{}
	srv := httptest.NewServer(layer.Middleware(h))
	t.Cleanup(srv.Close)
	return &fixture{pool: pool, srv: srv, handler: h, layer: layer}
}

type answer struct {
	status int
	header http.Header
	body   string
}

func (f *fixture) post(t *testing.T, client, key, body string, headers ...string) answer {
	t.Helper()
	return f.do(t, "POST", "/things", client, key, body, headers...)
}

func (f *fixture) do(t *testing.T, method, path, client, key, body string, headers ...string) answer {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if client != "" {
		req.Header.Set("X-Client", client)
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return answer{status: resp.StatusCode, header: resp.Header, body: string(raw)}
}

func (f *fixture) things(t *testing.T) int {
	t.Helper()
	var n int
	require.NoError(t, f.pool.QueryRow(context.Background(), `SELECT count(*) FROM things`).Scan(&n))
	return n
}

func requireProblem(t *testing.T, a answer, status int, slug string) {
	t.Helper()
	require.Equal(t, status, a.status, a.body)
	require.Equal(t, problem.ContentType, a.header.Get("Content-Type"))
	var p map[string]any
	require.NoError(t, json.Unmarshal([]byte(a.body), &p))
	require.Equal(t, problem.TypeBase+slug, p["type"])
}

func TestMiddleware_KeyValidation(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	requireProblem(t, f.post(t, "a", "", `{}`), 400, "idempotency-key-missing")
	requireProblem(t, f.post(t, "a", "   ", `{}`), 400, "idempotency-key-missing")
	requireProblem(t, f.post(t, "a", strings.Repeat("k", 256), `{}`), 400, "idempotency-key-invalid")
	requireProblem(t, f.post(t, "a", "café", `{}`), 400, "idempotency-key-invalid")
	requireProblem(t, f.post(t, "a", `"unterminated`, `{}`), 400, "idempotency-key-invalid")
	requireProblem(t, f.post(t, "a", "k1", `{}`, "Idempotency-Key", "k2"), 400, "idempotency-key-invalid")
	requireProblem(t, f.post(t, "", "k1", `{}`), 401, "unauthenticated")
	requireProblem(t, f.post(t, "a", "k1", `{"a":`), 400, "invalid-json")
	requireProblem(t, f.post(t, "a", "k1", `{"a":1,"A":2}`), 400, "invalid-json")
	require.Zero(t, f.handler.calls.Load())
	require.Zero(t, f.things(t))
}

func TestMiddleware_BodyTooLarge(t *testing.T) {
	t.Parallel()
	f := setup(t, &idempotency.Config{MaxBodyBytes: 100})
	requireProblem(t, f.post(t, "a", "k1", `{"pad":"`+strings.Repeat("x", 200)+`"}`), 413, "body-too-large")
	require.Zero(t, f.things(t))
}

// The same key after completion: the stored status, headers and body, byte
// for byte, marked as a replay; the handler does not run again.
func TestMiddleware_Replay(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	first := f.post(t, "a", "k1", `{"amount":1999,"currency":"EUR"}`)
	require.Equal(t, http.StatusCreated, first.status)
	require.Empty(t, first.header.Get(idempotency.ReplayedHeader))

	for _, key := range []string{"k1", `"k1"`} { // bare and quoted: one key
		again := f.post(t, "a", key, ` { "currency" : "EUR", "amount" : 1999.0 } `)
		require.Equal(t, first.status, again.status)
		require.Equal(t, first.body, again.body)
		require.Equal(t, "true", again.header.Get(idempotency.ReplayedHeader))
		require.Equal(t, first.header.Get("Location"), again.header.Get("Location"))
		require.Equal(t, first.header.Get("Content-Type"), again.header.Get("Content-Type"))
		require.Empty(t, again.header.Get("X-Call"), "only the listed headers are stored")
	}
	require.EqualValues(t, 1, f.handler.calls.Load())
	require.Equal(t, 1, f.things(t))
	st := f.layer.Stats()
	require.EqualValues(t, 1, st.Stored)
	require.EqualValues(t, 2, st.Replays)
}

// The same key with another request: 422, and the handler does not run.
func TestMiddleware_FingerprintMismatch(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	require.Equal(t, http.StatusCreated, f.post(t, "a", "k1", `{"amount":1999}`).status)
	requireProblem(t, f.post(t, "a", "k1", `{"amount":2000}`), 422, "idempotency-key-reused")
	requireProblem(t, f.do(t, "POST", "/other", "a", "k1", `{"amount":1999}`), 422, "idempotency-key-reused")
	requireProblem(t, f.do(t, "POST", "/things?x=1", "a", "k1", `{"amount":1999}`), 422, "idempotency-key-reused")
	require.EqualValues(t, 1, f.handler.calls.Load())
	require.EqualValues(t, 3, f.layer.Stats().Mismatches)
}

// Keys are scoped by client: another client's identical key is its own.
func TestMiddleware_ScopedByPrincipal(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	a := f.post(t, "client-a", "shared", `{"amount":1}`)
	b := f.post(t, "client-b", "shared", `{"amount":1}`)
	require.Equal(t, http.StatusCreated, a.status)
	require.Equal(t, http.StatusCreated, b.status)
	require.NotEqual(t, a.body, b.body)
	require.Empty(t, b.header.Get(idempotency.ReplayedHeader))
	// And B's different body under the same key is not a mismatch with A's.
	c := f.post(t, "client-c", "shared", `{"amount":2}`)
	require.Equal(t, http.StatusCreated, c.status)
	require.Equal(t, 3, f.things(t))
}

// The same key while the first request is in flight: 409 with Retry-After;
// afterwards, the replay.
func TestMiddleware_InFlight(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	release := make(chan struct{})
	f.handler.release = release
	done := make(chan answer, 1)
	go func() { done <- f.post(t, "a", "k1", `{"amount":1}`) }()
	require.Eventually(t, func() bool { return f.handler.calls.Load() == 1 }, 5*time.Second, 5*time.Millisecond)

	busy := f.post(t, "a", "k1", `{"amount":1}`)
	requireProblem(t, busy, 409, "idempotency-key-in-use")
	require.Equal(t, "1", busy.header.Get("Retry-After"))
	// Even with another body: the first request's fingerprint is not known
	// until it commits.
	requireProblem(t, f.post(t, "a", "k1", `{"amount":2}`), 409, "idempotency-key-in-use")

	close(release)
	first := <-done
	require.Equal(t, http.StatusCreated, first.status)
	again := f.post(t, "a", "k1", `{"amount":1}`)
	require.Equal(t, first.body, again.body)
	require.Equal(t, "true", again.header.Get(idempotency.ReplayedHeader))
	require.EqualValues(t, 1, f.handler.calls.Load())
}

// Errors are not stored and what the handler wrote is rolled back: the
// retry runs afresh.
func TestMiddleware_ErrorsAreNotStored(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	for _, status := range []int{http.StatusInternalServerError, http.StatusServiceUnavailable, http.StatusUnprocessableEntity, http.StatusBadRequest} {
		f.handler.status.Store(int64(status))
		a := f.post(t, "a", "k1", `{"amount":1}`)
		require.Equal(t, status, a.status)
		require.Zero(t, f.things(t), "status %d rolled back", status)
	}
	f.handler.status.Store(0)
	ok := f.post(t, "a", "k1", `{"amount":1}`)
	require.Equal(t, http.StatusCreated, ok.status)
	require.Empty(t, ok.header.Get(idempotency.ReplayedHeader))
	require.Equal(t, 1, f.things(t))
	require.EqualValues(t, 5, f.handler.calls.Load())
	require.EqualValues(t, 4, f.layer.Stats().NotStored)
}

// A handler that dies after writing leaves nothing: the retry runs afresh.
func TestMiddleware_CrashBeforeCommit(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	f.handler.panics.Store(true)
	req, err := http.NewRequest("POST", f.srv.URL+"/things", strings.NewReader(`{"amount":1}`))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Client", "a")
	req.Header.Set("Idempotency-Key", "k1")
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
	}
	require.Zero(t, f.things(t))
	var stored int
	require.NoError(t, f.pool.QueryRow(context.Background(), `SELECT count(*) FROM idempotency_keys`).Scan(&stored))
	require.Zero(t, stored)

	f.handler.panics.Store(false)
	require.Equal(t, http.StatusCreated, f.post(t, "a", "k1", `{"amount":1}`).status)
	require.Equal(t, 1, f.things(t))
}

func TestMiddleware_HandlerCannotEndTheTransaction(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	f.handler.commit.Store(true)
	require.Equal(t, http.StatusCreated, f.post(t, "a", "k1", `{}`).status)
}

// Past its lifetime a key is forgotten: the handler runs again (and must
// find what the first request did). The purge deletes only expired keys.
func TestMiddleware_Expiry(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	ctx := context.Background()
	require.Equal(t, http.StatusCreated, f.post(t, "a", "old", `{}`).status)
	require.Equal(t, http.StatusCreated, f.post(t, "a", "young", `{}`).status)
	_, err := f.pool.Exec(ctx, `UPDATE idempotency_keys SET created_at = now() - interval '2 days', expires_at = now() - interval '1 day' WHERE key = 'old'`)
	require.NoError(t, err)

	// Expired but not purged yet: treated as gone.
	again := f.post(t, "a", "old", `{}`)
	require.Equal(t, http.StatusCreated, again.status)
	require.Empty(t, again.header.Get(idempotency.ReplayedHeader))
	require.EqualValues(t, 3, f.handler.calls.Load())

	_, err = f.pool.Exec(ctx, `UPDATE idempotency_keys SET created_at = now() - interval '2 days', expires_at = now() - interval '1 day' WHERE key = 'old'`)
	require.NoError(t, err)
	n, err := idempotency.Purge(ctx, f.pool)
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
	replay := f.post(t, "a", "young", `{}`)
	require.Equal(t, "true", replay.header.Get(idempotency.ReplayedHeader))
}

func TestMiddleware_Optional(t *testing.T) {
	t.Parallel()
	f := setup(t, &idempotency.Config{Optional: true})
	require.Equal(t, http.StatusCreated, f.post(t, "a", "", `{}`).status)
	require.Equal(t, http.StatusCreated, f.post(t, "a", "", `{}`).status)
	require.Equal(t, 2, f.things(t))
}

// The database cannot be reached: 503, nothing stored.
func TestMiddleware_DatabaseUnavailable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@"+addr+"/postgres?connect_timeout=1")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	f := setupPool(t, pool, nil)
	a := f.post(t, "a", "k1", `{}`)
	requireProblem(t, a, 503, "database-unavailable")
	require.NotEmpty(t, a.header.Get("Retry-After"))
}
