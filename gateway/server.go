package gateway

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Fault is a misbehaviour the reference gateway shows on demand.
type Fault int

const (
	FaultNone Fault = iota
	// FaultServerError answers 503 without charging.
	FaultServerError
	// FaultTimeoutAfterCharge makes the charge, stores its outcome under the
	// key, and never answers: the client times out not knowing.
	FaultTimeoutAfterCharge
	// FaultDecline declines the charge (a final outcome, stored under the key).
	FaultDecline
	// FaultRateLimit answers 429 with Retry-After: 0, without charging.
	FaultRateLimit
)

var faultNames = [...]string{"none", "server_error", "timeout_after_charge", "decline", "rate_limit"}

func (f Fault) String() string { return faultNames[f] }

// Faults are the shares (0..1) of new charge requests that get each fault.
type Faults struct {
	ServerError        float64 `json:"server_error"`
	TimeoutAfterCharge float64 `json:"timeout_after_charge"`
	Decline            float64 `json:"decline"`
	RateLimit          float64 `json:"rate_limit"`
	// Latency is added to every charge request.
	Latency time.Duration `json:"latency"`
}

// HangMaxDefault bounds how long a FaultTimeoutAfterCharge request hangs when
// its client does not hang up first.
const HangMaxDefault = 30 * time.Second

// Server is the reference gateway: POST /v1/charges with an Idempotency-Key,
// GET /v1/charges[?idempotency_key=K] (the ledger), GET /v1/stats,
// PUT /v1/faults.
type Server struct {
	// Token, when set, is required as "Authorization: Bearer <Token>".
	Token string
	// HangMax bounds a hanging request. Defaults to HangMaxDefault.
	HangMax time.Duration

	mu      sync.Mutex
	byKey   map[string]*keyState
	ledger  []Charge
	next    int
	faults  Faults
	queued  []Fault
	rng     *rand.Rand
	stats   Stats
	hanging sync.WaitGroup
	closed  chan struct{}
	close   sync.Once
}

type keyState struct {
	fingerprint [32]byte
	inFlight    bool
	status      int
	body        []byte
}

// Stats counts what the gateway saw.
type Stats struct {
	Requests       int            `json:"requests"`
	Charges        int            `json:"charges"`  // succeeded charges made
	Declines       int            `json:"declines"` // declined charges recorded
	Replays        int            `json:"replays"`  // repeated keys answered with the stored outcome
	InFlight409    int            `json:"in_flight_409"`
	KeyReused422   int            `json:"key_reused_422"`
	FaultsInjected map[string]int `json:"faults_injected"`
}

// NewServer returns a reference gateway without faults.
func NewServer() *Server {
	return &Server{
		byKey:  map[string]*keyState{},
		rng:    rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 42)),
		stats:  Stats{FaultsInjected: map[string]int{}},
		closed: make(chan struct{}),
	}
}

// SetFaults replaces the fault rates.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// InjectNext gives the next new charge requests these faults, in order.
func (s *Server) InjectNext(faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queued = append(s.queued, faults...)
}

// Ledger returns every charge recorded, succeeded and declined.
func (s *Server) Ledger() []Charge {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Charge(nil), s.ledger...)
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.FaultsInjected = map[string]int{}
	for k, v := range s.stats.FaultsInjected {
		st.FaultsInjected[k] = v
	}
	return st
}

// Close releases hanging requests and waits for them.
func (s *Server) Close() {
	s.close.Do(func() { close(s.closed) })
	s.hanging.Wait()
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.Token != "" && r.Header.Get("Authorization") != "Bearer "+s.Token {
		writeError(w, http.StatusUnauthorized, "authentication_error", "unauthenticated", "missing or wrong API key", "")
		return
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/charges":
		s.charge(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/v1/charges":
		ledger := s.Ledger()
		if key := r.URL.Query().Get("idempotency_key"); key != "" {
			var matching []Charge
			for _, c := range ledger {
				if c.IdempotencyKey == key {
					matching = append(matching, c)
				}
			}
			ledger = matching
		}
		if ledger == nil {
			ledger = []Charge{}
		}
		writeJSON(w, http.StatusOK, ledger)
	case r.Method == http.MethodGet && r.URL.Path == "/v1/stats":
		writeJSON(w, http.StatusOK, s.Stats())
	case r.Method == http.MethodPut && r.URL.Path == "/v1/faults":
		var f Faults
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&f); err != nil {
			writeError(w, http.StatusBadRequest, "invalid_request_error", "invalid_json", err.Error(), "")
			return
		}
		s.SetFaults(f)
		writeJSON(w, http.StatusOK, f)
	default:
		writeError(w, http.StatusNotFound, "invalid_request_error", "not_found", "no such route", "")
	}
}

func (s *Server) charge(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	raw, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "unreadable_body", err.Error(), "")
		return
	}
	var req ChargeRequest
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	switch {
	case key == "" || len(key) > 255:
		writeError(w, http.StatusBadRequest, "invalid_request_error", "idempotency_key_required", "an Idempotency-Key of 1 to 255 characters is required", "")
		return
	case dec.Decode(&req) != nil:
		writeError(w, http.StatusBadRequest, "invalid_request_error", "invalid_json", "the body must be a charge object", "")
		return
	case req.AmountMinor <= 0 || len(req.Currency) != 3 || req.OrderID == "":
		writeError(w, http.StatusBadRequest, "invalid_request_error", "invalid_charge", "amount > 0, a currency and an order_id are required", "")
		return
	}
	req.IdempotencyKey = key
	fp := sha256.Sum256([]byte(fmt.Sprintf("%d|%s|%s|%s", req.AmountMinor, req.Currency, req.OrderID, req.Description)))

	s.mu.Lock()
	s.stats.Requests++
	if st, ok := s.byKey[key]; ok {
		switch {
		case st.fingerprint != fp:
			s.stats.KeyReused422++
			s.mu.Unlock()
			writeError(w, http.StatusUnprocessableEntity, "idempotency_error", "idempotency_key_reused",
				"this key was used with different parameters", "")
		case st.inFlight:
			s.stats.InFlight409++
			s.mu.Unlock()
			writeError(w, http.StatusConflict, "idempotency_error", "request_in_progress",
				"a request with this key is in progress; retry later", "")
		default:
			s.stats.Replays++
			status, body := st.status, st.body
			s.mu.Unlock()
			w.Header().Set("Idempotent-Replayed", "true")
			writeRaw(w, status, body)
		}
		return
	}
	fault := s.pickFault()
	latency := s.faults.Latency
	switch fault {
	case FaultServerError, FaultRateLimit:
		s.mu.Unlock()
		if fault == FaultRateLimit {
			w.Header().Set("Retry-After", "0")
			writeError(w, http.StatusTooManyRequests, "rate_limit_error", "rate_limited", "too many requests (injected)", "")
			return
		}
		writeError(w, http.StatusServiceUnavailable, "api_error", "unavailable", "the gateway is unavailable (injected)", "")
		return
	}
	st := &keyState{fingerprint: fp, inFlight: true}
	s.byKey[key] = st
	s.mu.Unlock()

	if latency > 0 {
		time.Sleep(latency)
	}

	s.mu.Lock()
	s.next++
	ch := Charge{
		ID: "ch_" + strconv.Itoa(s.next), IdempotencyKey: key, AmountMinor: req.AmountMinor, Currency: req.Currency,
		OrderID: req.OrderID, Description: req.Description, Created: time.Now().UTC(), Status: StatusSucceeded,
	}
	if fault == FaultDecline {
		ch.Status, ch.DeclineCode = StatusDeclined, "card_declined"
		s.stats.Declines++
		st.status, st.body = http.StatusPaymentRequired, errorJSON("card_error", "card_declined", "the card was declined", ch.ID)
	} else {
		s.stats.Charges++
		st.status, st.body = http.StatusOK, mustJSON(ch)
	}
	s.ledger = append(s.ledger, ch)
	st.inFlight = false
	status, body := st.status, st.body
	s.mu.Unlock()

	if fault == FaultTimeoutAfterCharge {
		// Charged and recorded; the answer never comes.
		s.hanging.Add(1)
		defer s.hanging.Done()
		hangMax := s.HangMax
		if hangMax <= 0 {
			hangMax = HangMaxDefault
		}
		select {
		case <-r.Context().Done():
		case <-s.closed:
		case <-time.After(hangMax):
		}
		panic(http.ErrAbortHandler) // drop the connection without an answer
	}
	writeRaw(w, status, body)
}

// pickFault chooses the fault of a new charge request; s.mu is held.
func (s *Server) pickFault() Fault {
	f := FaultNone
	if len(s.queued) > 0 {
		f, s.queued = s.queued[0], s.queued[1:]
	} else {
		x := s.rng.Float64()
		for _, c := range []struct {
			rate  float64
			fault Fault
		}{
			{s.faults.ServerError, FaultServerError},
			{s.faults.TimeoutAfterCharge, FaultTimeoutAfterCharge},
			{s.faults.Decline, FaultDecline},
			{s.faults.RateLimit, FaultRateLimit},
		} {
			if x < c.rate {
				f = c.fault
				break
			}
			x -= c.rate
		}
	}
	if f != FaultNone {
		s.stats.FaultsInjected[f.String()]++
	}
	return f
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func errorJSON(typ, code, message, charge string) []byte {
	e := errorBody{}
	e.Error.Type, e.Error.Code, e.Error.Message, e.Error.Charge = typ, code, message, charge
	return mustJSON(e)
}

func writeError(w http.ResponseWriter, status int, typ, code, message, charge string) {
	writeRaw(w, status, errorJSON(typ, code, message, charge))
}

func writeJSON(w http.ResponseWriter, status int, v any) { writeRaw(w, status, mustJSON(v)) }

func writeRaw(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
