package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

// parseMinorUnits accepts a JSON integer (no fraction, no exponent, not a
// string), or says what is wrong with it.
func parseMinorUnits(raw json.RawMessage) (int64, string) {
	s := strings.TrimSpace(string(raw))
	switch {
	case s == "" || s == "null":
		return 0, "Amount is required: a positive integer of minor units (1999 for 19.99)."
	case strings.HasPrefix(s, `"`):
		return 0, "Amount must be a JSON number, not a string."
	case strings.ContainsAny(s, ".eE"):
		return 0, fmt.Sprintf("Amount %s is not an integer: give minor units (1999 for 19.99).", s)
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 || v > payment.MaxAmountMinor {
		return 0, fmt.Sprintf("Amount %s must be a positive integer of at most %d minor units.", s, int64(payment.MaxAmountMinor))
	}
	return v, ""
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
