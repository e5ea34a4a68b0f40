package emaillog_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/emaillog"
	"github.com/pgonce/pgonce/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

func user(t *testing.T, db *testdb.DB) int64 {
	t.Helper()
	var id int64
	require.NoError(t, db.Pool.QueryRow(context.Background(), `INSERT INTO users (email) VALUES ('a@example.com') RETURNING id`).Scan(&id))
	return id
}

// A claim that waited for the row lock sees the attempt the lock's previous
// holder committed (a statement that waits for a lock reads its subqueries
// from before the wait, so the lock is taken in a statement of its own).
func TestClaimSend_SeesTheAttemptCommittedWhileItWaited(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	ctx := context.Background()
	uid := user(t, db)
	msgID := emaillog.MessageID(uid, "welcome", "test")

	first, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer first.Rollback(ctx) //nolint:errcheck
	// A lease already over when it commits: the second claim may proceed.
	c1, err := emaillog.ClaimSend(ctx, first, uid, "welcome", msgID, 1, 1, -time.Second)
	require.NoError(t, err)
	require.NotZero(t, c1.AttemptID)

	second := make(chan *emaillog.Claim, 1)
	go func() {
		var c *emaillog.Claim
		_ = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			var err error
			c, err = emaillog.ClaimSend(ctx, tx, uid, "welcome", msgID, 1, 2, time.Minute)
			return err
		})
		second <- c
	}()
	time.Sleep(200 * time.Millisecond) // the second claim now waits for the lock
	require.NoError(t, first.Commit(ctx))
	c2 := <-second
	require.NotNil(t, c2)
	require.NotZero(t, c2.AttemptID)
	require.Equal(t, 1, c2.EarlierUnresolved, "the first attempt may have delivered: this send is in doubt")
}

// A claim while another attempt's lease runs records nothing and says until
// when; a sent email is not claimed.
func TestClaimSend_LeaseAndSent(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	ctx := context.Background()
	uid := user(t, db)
	msgID := emaillog.MessageID(uid, "welcome", "test")
	claim := func(attempt int) *emaillog.Claim {
		var c *emaillog.Claim
		require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			var err error
			c, err = emaillog.ClaimSend(ctx, tx, uid, "welcome", msgID, 1, attempt, time.Minute)
			return err
		}))
		return c
	}
	c1 := claim(1)
	require.NotZero(t, c1.AttemptID)
	busy := claim(2)
	require.Zero(t, busy.AttemptID)
	require.NotNil(t, busy.LeaseUntil)

	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := emaillog.Lock(ctx, tx, uid, "welcome"); err != nil {
			return err
		}
		return emaillog.Finish(ctx, tx, c1.ID, c1.AttemptID, emaillog.Result{Outcome: emaillog.OutcomeDelivered, Status: emaillog.StatusSent})
	}))
	done := claim(3)
	require.Zero(t, done.AttemptID)
	require.Equal(t, emaillog.StatusSent, done.Status)
	e, err := emaillog.Get(ctx, db.Pool, uid, "welcome")
	require.NoError(t, err)
	require.Equal(t, 1, e.Attempts)
	require.False(t, e.InDoubt)
	require.NotNil(t, e.SentAt)
}
