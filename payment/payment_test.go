package payment_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/payment"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

func request(key, order string, amount int64) *payment.Request {
	return &payment.Request{ClientID: "shop-a", IdempotencyKey: key, OrderID: order, AmountMinor: amount, Currency: "EUR"}
}

func create(t *testing.T, db *testdb.DB, r *payment.Request) (*payment.Payment, bool, error) {
	t.Helper()
	var p *payment.Payment
	var created bool
	err := pgx.BeginFunc(context.Background(), db.Pool, func(tx pgx.Tx) error {
		var err error
		p, created, err = payment.Create(context.Background(), tx, r)
		return err
	})
	return p, created, err
}

func TestRequest_Validate(t *testing.T) {
	t.Parallel()
	ok := request("k", "order-1", 1999)
	require.NoError(t, ok.Validate())
	for name, mutate := range map[string]func(*payment.Request){
		"no client":        func(r *payment.Request) { r.ClientID = "" },
		"no key":           func(r *payment.Request) { r.IdempotencyKey = "" },
		"long key":         func(r *payment.Request) { r.IdempotencyKey = strings.Repeat("k", 256) },
		"no order":         func(r *payment.Request) { r.OrderID = "" },
		"order charset":    func(r *payment.Request) { r.OrderID = "order 1" },
		"zero amount":      func(r *payment.Request) { r.AmountMinor = 0 },
		"negative amount":  func(r *payment.Request) { r.AmountMinor = -5 },
		"huge amount":      func(r *payment.Request) { r.AmountMinor = payment.MaxAmountMinor + 1 },
		"lower currency":   func(r *payment.Request) { r.Currency = "eur" },
		"unknown currency": func(r *payment.Request) { r.Currency = "XYZ" },
		"long description": func(r *payment.Request) { r.Description = strings.Repeat("d", 501) },
	} {
		r := *ok
		mutate(&r)
		require.ErrorIs(t, r.Validate(), payment.ErrInvalid, name)
	}
}

func TestCreate(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	p, created, err := create(t, db, request("k1", "order-1", 1999))
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, payment.StatusPending, p.Status)
	require.Equal(t, payment.GatewayKey("shop-a", "k1"), p.GatewayKey)

	// The same key and request: the same payment.
	again, created, err := create(t, db, request("k1", "order-1", 1999))
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, p.ID, again.ID)

	// The same key, another amount: refused.
	_, _, err = create(t, db, request("k1", "order-1", 2000))
	require.ErrorIs(t, err, payment.ErrKeyReused)

	// Another key for the same order while it has a live payment: refused.
	_, _, err = create(t, db, request("k2", "order-1", 1999))
	var conflict *payment.OrderConflictError
	require.ErrorAs(t, err, &conflict)
	require.Equal(t, p.ID, conflict.PaymentID)

	// Another client may use the same key and order names: scoped.
	other := request("k1", "order-1", 1999)
	other.ClientID = "shop-b"
	q, created, err := create(t, db, other)
	require.NoError(t, err)
	require.True(t, created)
	require.NotEqual(t, p.ID, q.ID)
	require.NotEqual(t, p.GatewayKey, q.GatewayKey)

	// Reading is scoped by client too.
	_, err = payment.Get(context.Background(), db.Pool, "shop-b", p.ID)
	require.ErrorIs(t, err, payment.ErrNotFound)

	// Once the payment failed (declined), the order can be paid with a new key.
	ctx := context.Background()
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		return payment.Fail(ctx, tx, p.ID, "card_declined", "declined")
	}))
	retry, created, err := create(t, db, request("k3", "order-1", 1999))
	require.NoError(t, err)
	require.True(t, created)
	require.NotEqual(t, p.ID, retry.ID)
}

// The status machine is enforced by the database, whatever the code does.
func TestStatusMachine(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	ctx := context.Background()
	p, _, err := create(t, db, request("k1", "order-1", 1999))
	require.NoError(t, err)
	tx := func(fn func(pgx.Tx) error) error { return pgx.BeginFunc(ctx, db.Pool, fn) }

	require.NoError(t, tx(func(tx pgx.Tx) error { return payment.MarkProcessing(ctx, tx, p.ID) }))
	require.NoError(t, tx(func(tx pgx.Tx) error { return payment.RecordError(ctx, tx, p.ID, "gateway 503") }))
	require.NoError(t, tx(func(tx pgx.Tx) error { return payment.MarkProcessing(ctx, tx, p.ID) }))
	require.NoError(t, tx(func(tx pgx.Tx) error { return payment.Complete(ctx, tx, p.ID, "ch_1") }))
	got, err := payment.Get(ctx, db.Pool, "shop-a", p.ID)
	require.NoError(t, err)
	require.Equal(t, payment.StatusCompleted, got.Status)
	require.Equal(t, 2, got.Attempts)
	require.Nil(t, got.LastError)

	// Final: the guarded updates refuse, and so does the trigger for raw SQL.
	err = tx(func(tx pgx.Tx) error { return payment.Fail(ctx, tx, p.ID, "x", "y") })
	require.ErrorIs(t, err, payment.ErrFinal)
	err = tx(func(tx pgx.Tx) error { return payment.Complete(ctx, tx, p.ID, "ch_2") })
	require.ErrorIs(t, err, payment.ErrFinal)
	for _, stmt := range []string{
		`UPDATE payments SET status = 'processing', charge_id = NULL, finished_at = NULL WHERE id = $1`,
		`UPDATE payments SET amount_minor = 1 WHERE id = $1`,
		`UPDATE payments SET charge_id = NULL WHERE id = $1`,
	} {
		_, err := db.Pool.Exec(ctx, stmt, p.ID)
		require.Error(t, err, stmt)
	}

	q, _, err := create(t, db, request("k2", "order-2", 500))
	require.NoError(t, err)
	require.NoError(t, tx(func(tx pgx.Tx) error { return payment.MarkProcessing(ctx, tx, q.ID) }))
	_, err = db.Pool.Exec(ctx, `UPDATE payments SET status = 'pending' WHERE id = $1`, q.ID)
	require.Error(t, err, "processing never goes back to pending")
	for _, stmt := range []string{
		`INSERT INTO payments (client_id, idempotency_key, gateway_key, order_id, amount_minor, currency) VALUES ('c', 'k', 'g1', 'o', 0, 'EUR')`,
		`INSERT INTO payments (client_id, idempotency_key, gateway_key, order_id, amount_minor, currency) VALUES ('c', 'k', 'g2', 'o', 5, 'euro')`,
		`INSERT INTO payments (client_id, idempotency_key, gateway_key, order_id, amount_minor, currency, status) VALUES ('c', 'k', 'g3', 'o', 5, 'EUR', 'completed')`,
	} {
		_, err := db.Pool.Exec(ctx, stmt)
		require.Error(t, err, stmt)
	}
}
