package jobs_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/mailer"
	"github.com/pgonce/pgonce/runner"
)

// After the SMTP send, another group job takes the lane and waits 15 s on a
// row lock (ordinary database work). No process dies.
type laneHoggingMailer struct {
	mailer.Sender
	g    *runner.Group
	once sync.Once
}

func (m *laneHoggingMailer) Send(ctx context.Context, msg *mailer.Message) error {
	err := m.Sender.Send(ctx, msg)
	m.once.Do(func() {
		held := make(chan struct{})
		go func() {
			tx, err := m.g.Begin(context.Background())
			if err != nil {
				close(held)
				return
			}
			close(held)
			_, _ = tx.Exec(context.Background(), `SELECT 1 FROM blocker WHERE id = 1 FOR UPDATE`)
			_ = tx.Commit(context.Background())
		}()
		<-held
	})
	return err
}

// After the SMTP send, another job of the group takes the only lane and
// waits on a row lock: the send's record still commits (the lock wait leaves
// the group after its lock timeout, and a job that cannot get its lane's turn
// commits on its own), so a healthy process never sends twice.
func TestWelcomeEmail_LaneHeldAfterSendSendsOnce(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, &testdb.Opts{MaxConns: 20})
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, `CREATE TABLE blocker (id int PRIMARY KEY); INSERT INTO blocker VALUES (1)`)
	require.NoError(t, err)
	holder, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = holder.Rollback(context.Background()) })
	_, err = holder.Exec(ctx, `SELECT 1 FROM blocker WHERE id = 1 FOR UPDATE`)
	require.NoError(t, err)

	sink, m := newSink(t)
	g, err := runner.NewGroup(db.Pool, &runner.GroupConfig{Lanes: 1})
	require.NoError(t, err)
	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.WelcomeEmailWorker{Pool: db.Pool, TxDB: g, Mailer: &laneHoggingMailer{Sender: m, g: g}, LeaseFor: time.Second})
	r, err := runner.New(db.Pool, &runner.Config{Workers: workers, Queues: jobs.Queues(nil), Groups: []*runner.Group{g},
		RetryPolicy: &runner.Backoff{Min: 20 * time.Millisecond, Max: 50 * time.Millisecond}, Logger: warnLogger})
	require.NoError(t, err)
	f := &fixture{db: db, sink: sink, mailer: m, runner: r}
	f.start(t)
	res := f.signup(t, "ada@example.com")
	waitFor(t, 40*time.Second, "job completed", func() bool {
		return count(t, db.Pool, `SELECT count(*) FROM river_job WHERE id = $1 AND state = 'completed'`, res.WelcomeEmail.JobID) == 1
	})
	require.Len(t, sink.Messages(), 1, "a healthy process sent the welcome email twice")
	var inDoubt bool
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT in_doubt FROM email_log`).Scan(&inDoubt))
	require.False(t, inDoubt)
}
