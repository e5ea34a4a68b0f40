package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strconv"
	"strings"

	"github.com/pgonce/pgonce/idempotency"
	"github.com/pgonce/pgonce/internal/problem"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/payment"
)

type createPaymentRequest struct {
	OrderID     string          `json:"order_id"`
	Amount      json.RawMessage `json:"amount"`
	Currency    string          `json:"currency"`
	Description string          `json:"description"`
}

// PaymentResponse is the body of POST /api/payments and GET /api/payments/{id}.
type PaymentResponse struct {
	Payment *payment.Payment `json:"payment"`
	Job     *JobRef          `json:"job,omitempty"`
}

// createPayment runs inside the idempotency layer: everything it writes goes
// through the layer's transaction, which also stores its answer.
//
//   - 202 Accepted: a new payment, its processing job enqueued.
//   - 200 OK: the client's key already names this payment (its stored answer
//     expired): its current state, and its job re-enqueued if it is not final
//     and has no live job. Never a second charge.
//   - 422 idempotency-key-reused: the key names a payment with other details.
//   - 409 order-has-payment: the order already has a live payment under
//     another key.
func (s *Server) createPayment(w http.ResponseWriter, r *http.Request) {
	var req createPaymentRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	amount, problemDetail := parseMinorUnits(req.Amount)
	if problemDetail != "" {
		problem.Write(w, r, problem.New(http.StatusUnprocessableEntity, "invalid-payment", "Invalid payment", problemDetail))
		return
	}
	ctx := r.Context()
	tx := idempotency.Tx(ctx)
	if tx == nil {
		problem.Write(w, r, problem.New(http.StatusInternalServerError, "internal", "Internal server error", ""))
		return
	}
	res, err := jobs.SubmitPayment(ctx, s.cfg.Runner, tx, &payment.Request{
		ClientID: Principal(ctx), IdempotencyKey: idempotency.Key(ctx),
		OrderID: req.OrderID, AmountMinor: amount, Currency: req.Currency, Description: req.Description,
	}, s.cfg.PaymentMaxAttempts)
	var orderConflict *payment.OrderConflictError
	switch {
	case err == nil:
	case errors.Is(err, payment.ErrInvalid):
		problem.Write(w, r, problem.New(http.StatusUnprocessableEntity, "invalid-payment", "Invalid payment", detail(err)))
		return
	case errors.Is(err, payment.ErrKeyReused):
		problem.Write(w, r, problem.New(http.StatusUnprocessableEntity, "idempotency-key-reused", "Idempotency-Key reused",
			"This key already names a payment with other details. Use a new key for a new payment."))
		return
	case errors.As(err, &orderConflict):
		problem.Write(w, r, problem.New(http.StatusConflict, "order-has-payment", "The order already has a payment",
			"Order "+orderConflict.OrderID+" has a payment that is not failed; a second one would charge it twice.").
			With("payment_id", orderConflict.PaymentID).With("payment_status", orderConflict.Status))
		return
	default:
		s.cfg.Logger.Warn("payment submission failed", "error", err, "request_id", RequestID(ctx))
		problem.DatabaseError(w, r, err)
		return
	}
	out := PaymentResponse{Payment: res.Payment}
	if res.Job != nil {
		out.Job = &JobRef{JobID: res.Job.JobID, Duplicate: res.Job.Duplicate}
	}
	status := http.StatusOK
	if res.Created {
		status = http.StatusAccepted
	}
	w.Header().Set("Location", "/api/payments/"+strconv.FormatInt(res.Payment.ID, 10))
	writeJSON(w, status, out)
}

// parseMinorUnits accepts a JSON number whose value is a whole number of
// minor units, however it is written (1999, 1999.0, 1.999e3: the
// idempotency layer treats these as the same request too), or says what is
// wrong with it.
func parseMinorUnits(raw json.RawMessage) (int64, string) {
	s := strings.TrimSpace(string(raw))
	shown := s
	if len(shown) > 40 {
		shown = shown[:40] + "..."
	}
	if s == "" || s == "null" {
		return 0, "Amount is required: a positive whole number of minor units (1999 for 19.99)."
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil || strings.HasPrefix(s, `"`) {
		return 0, "Amount must be a JSON number of minor units, not " + jsonType(s) + "."
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok || len(s) > 64 {
		return 0, fmt.Sprintf("Amount %s is out of range.", shown)
	}
	if !r.IsInt() {
		return 0, fmt.Sprintf("Amount %s is not a whole number: give minor units (1999 for 19.99).", shown)
	}
	if r.Sign() <= 0 || !r.Num().IsInt64() || r.Num().Int64() > payment.MaxAmountMinor {
		return 0, fmt.Sprintf("Amount %s must be a positive whole number of at most %d minor units.", shown, int64(payment.MaxAmountMinor))
	}
	return r.Num().Int64(), ""
}

func jsonType(s string) string {
	switch {
	case strings.HasPrefix(s, `"`):
		return "a string"
	case s == "true" || s == "false":
		return "a boolean"
	case strings.HasPrefix(s, "{"):
		return "an object"
	case strings.HasPrefix(s, "["):
		return "an array"
	}
	return "that"
}

func (s *Server) getPayment(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
	defer cancel()
	p, err := payment.Get(ctx, s.cfg.Pool, Principal(r.Context()), id)
	if errors.Is(err, payment.ErrNotFound) {
		problem.Write(w, r, problem.New(http.StatusNotFound, "payment-not-found", "Payment not found", ""))
		return
	}
	if err != nil {
		problem.DatabaseError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, PaymentResponse{Payment: p})
}
