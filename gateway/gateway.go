// Package gateway is the payment gateway seen from the runner: an interface
// whose every call carries an idempotency key, an HTTP client for it, and a
// reference gateway server with Stripe-like semantics (a repeated key returns
// the original charge, a key reused with other parameters is refused) that
// keeps a ledger of charges and injects faults on demand.
//
//	gw, _ := gateway.NewClient("http://127.0.0.1:8090", nil)
//	charge, err := gw.Charge(ctx, &gateway.ChargeRequest{IdempotencyKey: p.GatewayKey, AmountMinor: 1999, Currency: "EUR", OrderID: "o-1"})
//	var declined *gateway.DeclinedError
//	switch {
//	case errors.As(err, &declined):        // final: do not retry
//	case errors.Is(err, gateway.ErrKeyReused): // a bug: the key was used for another charge
//	case err != nil:                        // transient: retry with the same key
//	}
package gateway

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ChargeRequest asks for a charge.
type ChargeRequest struct {
	// IdempotencyKey is sent with every attempt of the same charge; the
	// gateway makes the charge at most once per key.
	IdempotencyKey string `json:"-"`
	AmountMinor    int64  `json:"amount"`
	Currency       string `json:"currency"`
	OrderID        string `json:"order_id"`
	Description    string `json:"description,omitempty"`
}

// Charge is the gateway's record of a charge.
type Charge struct {
	ID             string    `json:"id"`
	Status         string    `json:"status"` // "succeeded" or "declined"
	IdempotencyKey string    `json:"idempotency_key"`
	AmountMinor    int64     `json:"amount"`
	Currency       string    `json:"currency"`
	OrderID        string    `json:"order_id"`
	Description    string    `json:"description,omitempty"`
	DeclineCode    string    `json:"decline_code,omitempty"`
	Created        time.Time `json:"created"`
}

// Charge statuses.
const (
	StatusSucceeded = "succeeded"
	StatusDeclined  = "declined"
)

// Gateway charges money. Every call passes an idempotency key: a retry with
// the same key and parameters gets the original outcome, never a second
// charge.
type Gateway interface {
	Charge(ctx context.Context, req *ChargeRequest) (*Charge, error)
}

var (
	// ErrKeyReused means the key was already used with other parameters.
	// Retrying cannot help; it points at a bug in key derivation.
	ErrKeyReused = errors.New("gateway: idempotency key reused with different parameters")

	// ErrInvalidRequest means the gateway refused the request as malformed.
	ErrInvalidRequest = errors.New("gateway: invalid request")
)

// DeclinedError is a final refusal of the charge (insufficient funds, a
// stolen card): do not retry.
type DeclinedError struct {
	Code     string
	Message  string
	ChargeID string
}

func (e *DeclinedError) Error() string {
	return fmt.Sprintf("gateway: charge declined (%s): %s", e.Code, e.Message)
}

// TransientError is a failure worth retrying with the same key: a 5xx, a
// request with the same key still in flight, a timeout or a lost connection.
// InDoubt is set when the charge may have been made (the request reached the
// gateway and no answer came back); the same key makes the retry safe.
type TransientError struct {
	Status  int // HTTP status, 0 when none arrived
	InDoubt bool
	Err     error
}

func (e *TransientError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("gateway: transient failure (HTTP %d): %v", e.Status, e.Err)
	}
	return fmt.Sprintf("gateway: transient failure: %v", e.Err)
}

func (e *TransientError) Unwrap() error { return e.Err }

// RateLimitedError asks the caller to come back after RetryAfter. It is not a
// failure of the charge: a job snoozes on it without using an attempt.
type RateLimitedError struct {
	RetryAfter time.Duration
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("gateway: rate limited, retry after %s", e.RetryAfter)
}
