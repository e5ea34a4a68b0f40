package idempotency

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgonce/pgonce/internal/problem"
)

// Defaults for Config.
const (
	LifetimeDefault       = 24 * time.Hour
	RetryAfterDefault     = time.Second
	MaxBodyBytesDefault   = 64 << 10
	RequestTimeoutDefault = 10 * time.Second
)

// ReplayedHeader marks a replayed response.
const ReplayedHeader = "Idempotent-Replayed"

// LockNamespace is the first key of the transaction-scoped advisory lock a
// request in flight holds ('idem'); pg_locks shows it as classid.
const LockNamespace int32 = 0x6964656d

// StoredHeadersDefault are the response headers stored and replayed.
var StoredHeadersDefault = []string{"Content-Type", "Location", "ETag", "Cache-Control", "Link"}

// Beginner begins transactions: *pgxpool.Pool is one.
type Beginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// Config configures a Layer.
type Config struct {
	// DB begins the request's transaction. Required.
	DB Beginner

	// Principal returns the authenticated client of a request: keys are
	// scoped by it, so one client never receives another's response. An
	// error answers 401. Required.
	Principal func(*http.Request) (string, error)

	// Lifetime is how long a stored response is replayed. Defaults to 24 h.
	Lifetime time.Duration

	// Optional lets requests without a key through (still in a transaction
	// the handler can use, but nothing is stored). By default a missing key
	// is a 400.
	Optional bool

	// RetryAfter is sent with 409 while the first request is in flight.
	// Defaults to 1 s.
	RetryAfter time.Duration

	// MaxBodyBytes caps request bodies (413 above). Defaults to 64 KiB.
	MaxBodyBytes int64

	// RequestTimeout bounds the request's transaction. Defaults to 10 s.
	RequestTimeout time.Duration

	// StoredHeaders are the response headers stored and replayed.
	// Defaults to StoredHeadersDefault.
	StoredHeaders []string

	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Stats count the layer's decisions since it was made.
type Stats struct {
	Stored     int64 // responses stored under a key
	Replays    int64 // stored responses replayed
	InFlight   int64 // 409: the key's first request was still running
	Mismatches int64 // 422: the key was used with another request
	NotStored  int64 // responses of 400 and above, not stored
}

// Layer is the Idempotency-Key middleware.
type Layer struct {
	cfg   Config
	stats struct{ stored, replays, inFlight, mismatches, notStored atomic.Int64 }
}

// New validates cfg and returns a layer.
func New(cfg *Config) (*Layer, error) {
	if cfg == nil || cfg.DB == nil || cfg.Principal == nil {
		return nil, errors.New("idempotency: DB and Principal are required")
	}
	c := *cfg
	if c.Lifetime <= 0 {
		c.Lifetime = LifetimeDefault
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = RetryAfterDefault
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = MaxBodyBytesDefault
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = RequestTimeoutDefault
	}
	if c.StoredHeaders == nil {
		c.StoredHeaders = StoredHeadersDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return &Layer{cfg: c}, nil
}

// Stats returns the layer's counters.
func (l *Layer) Stats() Stats {
	return Stats{
		Stored: l.stats.stored.Load(), Replays: l.stats.replays.Load(), InFlight: l.stats.inFlight.Load(),
		Mismatches: l.stats.mismatches.Load(), NotStored: l.stats.notStored.Load(),
	}
}

type ctxKey int

const (
	txKey ctxKey = iota
	keyKey
)

// Tx returns the transaction of a request inside the layer, or nil. The
// handler writes everything through it: the layer commits it together with
// the stored response when the handler answers below 400, and rolls it back
// otherwise. Commit and Rollback on it return ErrTxOwned.
func Tx(ctx context.Context) pgx.Tx {
	tx, _ := ctx.Value(txKey).(pgx.Tx)
	return tx
}

// Key returns the request's idempotency key, or "".
func Key(ctx context.Context) string {
	k, _ := ctx.Value(keyKey).(string)
	return k
}

// ErrTxOwned is returned by Commit and Rollback of the transaction Tx gives
// a handler: the layer ends it.
var ErrTxOwned = errors.New("idempotency: the request's transaction is committed or rolled back by the layer")

type ownedTx struct{ pgx.Tx }

func (ownedTx) Commit(context.Context) error   { return ErrTxOwned }
func (ownedTx) Rollback(context.Context) error { return ErrTxOwned }

// Middleware wraps next: see the package documentation for the semantics.
func (l *Layer) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, err := ParseKey(r.Header.Values(HeaderName))
		switch {
		case errors.Is(err, ErrKeyMissing) && l.cfg.Optional:
			key = ""
		case errors.Is(err, ErrKeyMissing):
			problem.Write(w, r, problem.New(http.StatusBadRequest, "idempotency-key-missing", "Idempotency-Key required",
				"Send an Idempotency-Key header (1 to 255 printable ASCII characters, e.g. a UUID) so that a retry of this request cannot act twice."))
			return
		case err != nil:
			problem.Write(w, r, problem.New(http.StatusBadRequest, "idempotency-key-invalid", "Invalid Idempotency-Key", err.Error()))
			return
		}
		principal, err := l.cfg.Principal(r)
		if err != nil || principal == "" {
			problem.Write(w, r, problem.New(http.StatusUnauthorized, "unauthenticated", "Authentication required",
				"Idempotency keys belong to an authenticated client."))
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, l.cfg.MaxBodyBytes))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				problem.Write(w, r, problem.New(http.StatusRequestEntityTooLarge, "body-too-large", "Request body too large",
					fmt.Sprintf("The body must be at most %d bytes.", l.cfg.MaxBodyBytes)))
				return
			}
			problem.Write(w, r, problem.New(http.StatusBadRequest, "unreadable-body", "Unreadable request body", err.Error()))
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		fp, err := Fingerprint(r.Method, r.URL, r.Header.Get("Content-Type"), body)
		if err != nil {
			problem.Write(w, r, problem.New(http.StatusBadRequest, "invalid-json", "Invalid JSON body",
				InvalidBodyDetail(err)))
			return
		}
		l.serve(w, r, next, principal, key, fp)
	})
}

func (l *Layer) serve(w http.ResponseWriter, r *http.Request, next http.Handler, principal, key string, fp [32]byte) {
	// A request that started runs to its end even if the client hangs up:
	// its answer is then stored, and the client's retry gets it back instead
	// of running it again.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), l.cfg.RequestTimeout)
	defer cancel()
	// A stored answer is written in the transaction that did the work and
	// never changes after (it is only deleted, past its lifetime): when one
	// is there, a plain read answers the retry, in one round trip and
	// without a transaction. Anything else (no answer yet, an expired one,
	// an error) takes the transactional path below, which decides under
	// the key's lock.
	if key != "" {
		if q, ok := l.cfg.DB.(querier); ok {
			if st, err := lookup(ctx, q, principal, key); err == nil && st != nil && !st.expired {
				l.answer(w, r, st, fp)
				return
			}
		}
	}
	tx, err := l.cfg.DB.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		problem.DatabaseError(w, r, err)
		return
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit

	if key != "" {
		done, err := l.claim(ctx, w, r, tx, principal, key, fp)
		if err != nil {
			l.cfg.Logger.Warn("idempotency: reading the key failed", "error", err)
			problem.DatabaseError(w, r, err)
			return
		}
		if done {
			return
		}
	}

	rec := &recorder{header: http.Header{}}
	hctx := context.WithValue(context.WithValue(ctx, txKey, pgx.Tx(ownedTx{tx})), keyKey, key)
	next.ServeHTTP(rec, r.WithContext(hctx))
	if rec.status == 0 {
		rec.status = http.StatusOK
	}

	if rec.status >= 400 || rec.status < 200 {
		// Errors are not stored and nothing the handler wrote is kept: a
		// retry runs afresh.
		l.stats.notStored.Add(1)
		if err := tx.Rollback(context.WithoutCancel(ctx)); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
			l.cfg.Logger.Warn("idempotency: rollback failed", "error", err)
		}
		rec.writeTo(w, nil)
		return
	}
	if key != "" {
		headers := map[string]string{}
		for _, h := range l.cfg.StoredHeaders {
			if v := rec.header.Get(h); v != "" {
				headers[http.CanonicalHeaderKey(h)] = v
			}
		}
		headersJSON, _ := json.Marshal(headers)
		_, err := tx.Exec(ctx, `
			INSERT INTO idempotency_keys (principal, key, method, path, fingerprint, response_status, response_headers,
			                              response_body, request_id, expires_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, nullif($9, ''), now() + $10::interval)`,
			principal, key, r.Method, r.URL.Path, fp[:], rec.status, headersJSON, rec.body.Bytes(),
			w.Header().Get("X-Request-Id"), l.cfg.Lifetime.String())
		if err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "23505" {
				// Another request stored this key first (only possible when
				// the advisory lock was lost with its session).
				l.cfg.Logger.Warn("idempotency: key stored concurrently despite the lock", "key", key)
				l.conflict(w, r)
				return
			}
			l.cfg.Logger.Warn("idempotency: storing the response failed", "error", err)
			problem.DatabaseError(w, r, err)
			return
		}
	}
	if err := tx.Commit(ctx); err != nil {
		l.cfg.Logger.Warn("idempotency: commit failed", "error", err)
		problem.DatabaseError(w, r, err)
		return
	}
	if key != "" {
		l.stats.stored.Add(1)
	}
	rec.writeTo(w, nil)
}

// claim takes the key's advisory lock and looks for a stored response. It
// answers the request itself (409, 422 or a replay) and returns true when the
// handler must not run.
func (l *Layer) claim(ctx context.Context, w http.ResponseWriter, r *http.Request, tx pgx.Tx, principal, key string, fp [32]byte) (bool, error) {
	// The lock and the read in one round trip: in READ COMMITTED the read
	// takes its snapshot after the lock is held, so it sees an answer that
	// the key's previous holder committed.
	b := &pgx.Batch{}
	b.Queue(`SELECT pg_try_advisory_xact_lock($1, $2)`, LockNamespace, lockKey(principal, key))
	b.Queue(lookupSQL, principal, key)
	br := tx.SendBatch(ctx, b)
	var locked bool
	err := br.QueryRow().Scan(&locked)
	var st *storedAnswer
	if err == nil {
		st, err = scanAnswer(br.QueryRow())
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, err
	}
	if !locked {
		l.conflict(w, r)
		return true, nil
	}
	switch {
	case err != nil:
		return false, err
	case st == nil:
		return false, nil
	case st.expired:
		// Past its lifetime but not purged yet: gone, like a purged one.
		_, err := tx.Exec(ctx, `DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2`, principal, key)
		return false, err
	}
	l.answer(w, r, st, fp)
	return true, nil
}

// storedAnswer is a row of idempotency_keys.
type storedAnswer struct {
	fingerprint []byte
	status      int
	headers     map[string]string
	body        []byte
	expired     bool
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

const lookupSQL = `
	SELECT fingerprint, response_status, response_headers, response_body, expires_at <= now()
	FROM idempotency_keys WHERE principal = $1 AND key = $2`

// lookup returns the answer stored under (principal, key), or nil.
func lookup(ctx context.Context, q querier, principal, key string) (*storedAnswer, error) {
	return scanAnswer(q.QueryRow(ctx, lookupSQL, principal, key))
}

// scanAnswer reads a row of lookupSQL, or nil when there is none.
func scanAnswer(row pgx.Row) (*storedAnswer, error) {
	var st storedAnswer
	err := row.Scan(&st.fingerprint, &st.status, &st.headers, &st.body, &st.expired)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &st, nil
}

// answer replays st, or answers 422 when the request is not the one st
// answered.
func (l *Layer) answer(w http.ResponseWriter, r *http.Request, st *storedAnswer, fp [32]byte) {
	if !bytes.Equal(st.fingerprint, fp[:]) {
		l.stats.mismatches.Add(1)
		problem.Write(w, r, problem.New(http.StatusUnprocessableEntity, "idempotency-key-reused", "Idempotency-Key reused",
			"This key was used with a different request (method, path or body). Use a new key for a new request."))
		return
	}
	l.stats.replays.Add(1)
	rec := &recorder{header: http.Header{}, status: st.status}
	for k, v := range st.headers {
		rec.header.Set(k, v)
	}
	rec.body.Write(st.body)
	rec.writeTo(w, http.Header{ReplayedHeader: {"true"}})
}

func (l *Layer) conflict(w http.ResponseWriter, r *http.Request) {
	l.stats.inFlight.Add(1)
	p := problem.New(http.StatusConflict, "idempotency-key-in-use", "Request with this Idempotency-Key in progress",
		"The first request with this key has not finished. Retry after the Retry-After delay to get its response.")
	p.RetryAfter = l.cfg.RetryAfter
	problem.Write(w, r, p)
}

// lockKey hashes (principal, key) into the second key of the advisory lock.
// A collision between two keys in flight at once costs a spurious 409, never
// a wrong answer: the stored row is matched on the full key.
func lockKey(principal, key string) int32 {
	sum := sha256.Sum256([]byte(principal + "\x00" + key))
	return int32(binary.BigEndian.Uint32(sum[:4]))
}

// recorder buffers a handler's response.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}

func (r *recorder) writeTo(w http.ResponseWriter, extra http.Header) {
	h := w.Header()
	for k, v := range r.header {
		h[k] = v
	}
	for k, v := range extra {
		h[k] = v
	}
	h.Set("Content-Length", strconv.Itoa(r.body.Len()))
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body.Bytes())
}
