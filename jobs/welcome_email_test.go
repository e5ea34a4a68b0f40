package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/emaillog"
	"github.com/pgonce/pgonce/internal/smtpsink"
	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/mailer"
	"github.com/pgonce/pgonce/runner"
	"github.com/pgonce/pgonce/signup"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

type fixture struct {
	db     *testdb.DB
	sink   *smtpsink.Sink
	mailer mailer.Sender
	runner *runner.Runner
}

type opts struct {
	retry  *runner.Backoff
	mailer func(mailer.Sender) mailer.Sender // wraps the SMTP sender
	conns  int32
}

func setup(t *testing.T, o *opts) *fixture {
	t.Helper()
	if o == nil {
		o = &opts{}
	}
	db := testdb.New(t, &testdb.Opts{MaxConns: o.conns})
	sink, m := newSink(t)
	if o.mailer != nil {
		m = o.mailer(m)
	}
	workers := river.NewWorkers()
	require.NoError(t, jobs.Register(workers, &jobs.Deps{Pool: db.Pool, Mailer: m}))
	retry := o.retry
	if retry == nil {
		retry = &runner.Backoff{Min: 20 * time.Millisecond, Max: 50 * time.Millisecond}
	}
	r, err := runner.New(db.Pool, &runner.Config{
		Workers: workers, Queues: jobs.Queues(nil), RetryPolicy: retry, Logger: warnLogger,
	})
	require.NoError(t, err)
	return &fixture{db: db, sink: sink, mailer: m, runner: r}
}

var warnLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// newSink starts an SMTP sink and a sender to it.
func newSink(t *testing.T) (*smtpsink.Sink, mailer.Sender) {
	t.Helper()
	sink, err := smtpsink.Start()
	require.NoError(t, err)
	t.Cleanup(func() { _ = sink.Close() })
	m, err := mailer.NewSMTP(sink.URL())
	require.NoError(t, err)
	return sink, m
}

func (f *fixture) start(t *testing.T) {
	t.Helper()
	require.NoError(t, f.runner.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = f.runner.Stop(ctx)
	})
}

func (f *fixture) signup(t *testing.T, email string) *signup.Result {
	t.Helper()
	res, err := f.trySignup(context.Background(), email)
	require.NoError(t, err)
	return res
}

func (f *fixture) trySignup(ctx context.Context, email string) (*signup.Result, error) {
	var res *signup.Result
	err := pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error {
		var err error
		res, err = signup.Signup(ctx, tx, f.runner, email, "", jobs.DomainDefault)
		return err
	})
	return res, err
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fixture) waitJob(t *testing.T, id int64, states ...string) {
	t.Helper()
	waitFor(t, 15*time.Second, fmt.Sprintf("job %d in %v", id, states), func() bool {
		var s string
		if err := f.db.Pool.QueryRow(context.Background(), `SELECT state::text FROM river_job WHERE id = $1`, id).Scan(&s); err != nil {
			return false
		}
		for _, want := range states {
			if s == want {
				return true
			}
		}
		return false
	})
}

func (f *fixture) entry(t *testing.T, userID int64) *emaillog.Entry {
	t.Helper()
	e, err := emaillog.Get(context.Background(), f.db.Pool, userID, signup.EmailTypeWelcome)
	require.NoError(t, err)
	return e
}

func TestWelcomeEmail_SentOnceWithDeterministicMessageID(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	f.start(t)
	res := f.signup(t, "ada@example.com")
	require.True(t, res.Created)
	require.False(t, res.WelcomeEmail.Duplicate)
	f.waitJob(t, res.WelcomeEmail.JobID, "completed")

	e := f.entry(t, res.User.ID)
	require.Equal(t, emaillog.StatusSent, e.Status)
	require.Equal(t, 1, e.Attempts)
	require.False(t, e.InDoubt)
	require.Equal(t, emaillog.MessageID(res.User.ID, "welcome", jobs.DomainDefault), e.MessageID)
	msgs := f.sink.Messages()
	require.Len(t, msgs, 1)
	require.Equal(t, e.MessageID, msgs[0].MessageID)
	require.Equal(t, []string{"ada@example.com"}, msgs[0].To)
}

// SC-1 with the welcome email: 50 signups of one address at once, 100 rounds.
func TestWelcomeEmail_ConcurrentSignups(t *testing.T) {
	t.Parallel()
	const goroutines, rounds = 50, 100
	f := setup(t, &opts{conns: goroutines})
	ctx := context.Background()
	for round := range rounds {
		var (
			wg      sync.WaitGroup
			gate    = make(chan struct{})
			results = make([]*signup.Result, goroutines)
			errs    = make([]error, goroutines)
		)
		for i := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				email := fmt.Sprintf("user%d@example.com", round)
				if i%2 == 1 {
					email = fmt.Sprintf("USER%d@Example.com", round) // same user, other case
				}
				results[i], errs[i] = f.trySignup(ctx, email)
			}()
		}
		close(gate)
		wg.Wait()
		created, inserted := 0, 0
		for i := range goroutines {
			require.NoError(t, errs[i])
			require.Equal(t, results[0].User.ID, results[i].User.ID)
			require.Equal(t, results[0].WelcomeEmail.JobID, results[i].WelcomeEmail.JobID)
			if results[i].Created {
				created++
			}
			if !results[i].WelcomeEmail.Duplicate {
				inserted++
			}
		}
		require.Equal(t, 1, created, "round %d", round)
		require.Equal(t, 1, inserted, "round %d", round)
	}
	require.Equal(t, rounds, count(t, f.db.Pool, `SELECT count(*) FROM users`))
	require.Equal(t, rounds, count(t, f.db.Pool, `SELECT count(*) FROM river_job`))
	require.Equal(t, rounds, count(t, f.db.Pool, `SELECT count(*) FROM email_log`))
}

// SC-2 for the welcome email: enqueue, complete, enqueue again 1 s later and
// again after River no longer holds the job: always the same duplicate, one
// email.
func TestWelcomeEmail_NeverTwiceAfterCompletion(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	f.start(t)
	first := f.signup(t, "grace@example.com")
	f.waitJob(t, first.WelcomeEmail.JobID, "completed")

	time.Sleep(time.Second) // "1 s later", inside any window
	again := f.signup(t, "grace@example.com")
	require.False(t, again.Created)
	require.True(t, again.WelcomeEmail.Duplicate)
	require.Equal(t, first.WelcomeEmail.JobID, again.WelcomeEmail.JobID)

	// After the retention period River deletes the completed job.
	_, err := f.db.Pool.Exec(context.Background(), `DELETE FROM river_job WHERE id = $1`, first.WelcomeEmail.JobID)
	require.NoError(t, err)
	later := f.signup(t, "Grace@Example.com")
	require.True(t, later.WelcomeEmail.Duplicate, "email_log still knows the email went out")
	require.Equal(t, first.WelcomeEmail.JobID, later.WelcomeEmail.JobID)
	require.Zero(t, count(t, f.db.Pool, `SELECT count(*) FROM river_job`), "no redundant job left behind")

	time.Sleep(200 * time.Millisecond)
	require.Len(t, f.sink.Messages(), 1)
}

// SC-3 (a): the job fails once and waits for its retry; ten more enqueues are
// all duplicates; one email_log row.
func TestWelcomeEmail_DuplicatesWhileRetrying(t *testing.T) {
	t.Parallel()
	f := setup(t, &opts{retry: &runner.Backoff{Min: time.Hour, Max: time.Hour}})
	f.sink.FailNext(smtpsink.FaultTempReject)
	f.start(t)
	first := f.signup(t, "retry@example.com")
	f.waitJob(t, first.WelcomeEmail.JobID, "retryable")

	for range 10 {
		res := f.signup(t, "retry@example.com")
		require.True(t, res.WelcomeEmail.Duplicate)
		require.Equal(t, first.WelcomeEmail.JobID, res.WelcomeEmail.JobID)
	}
	require.Equal(t, 1, count(t, f.db.Pool, `SELECT count(*) FROM email_log`))
	require.Equal(t, 1, count(t, f.db.Pool, `SELECT count(*) FROM river_job`))
	e := f.entry(t, first.User.ID)
	require.Equal(t, emaillog.StatusSending, e.Status)
	require.NotNil(t, e.LastError)
	require.Equal(t, 1, e.Attempts)
	require.False(t, e.InDoubt, "a 451 means not delivered")
	require.Empty(t, f.sink.Messages())
}

// The server takes the message and the connection drops before its answer:
// the retry sends again with the same Message-ID and the email is in doubt.
func TestWelcomeEmail_InDoubtAfterDroppedAnswer(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	f.sink.FailNext(smtpsink.FaultDropAfterData)
	f.start(t)
	res := f.signup(t, "doubt@example.com")
	f.waitJob(t, res.WelcomeEmail.JobID, "completed")

	e := f.entry(t, res.User.ID)
	require.Equal(t, emaillog.StatusSent, e.Status)
	require.True(t, e.InDoubt)
	require.Equal(t, 2, e.Attempts)
	msgs := f.sink.Messages()
	require.Len(t, msgs, 2)
	require.Equal(t, e.MessageID, msgs[0].MessageID)
	require.Equal(t, e.MessageID, msgs[1].MessageID)
	require.Equal(t, 1, count(t, f.db.Pool, `SELECT count(*) FROM email_attempts WHERE outcome = 'unknown'`))
	require.Equal(t, 1, count(t, f.db.Pool, `SELECT count(*) FROM email_attempts WHERE outcome = 'delivered'`))
}

// crashAfterSend delivers the first message and then panics before the
// worker can commit, as a process killed between send and commit would.
type crashAfterSend struct {
	next    mailer.Sender
	crashed atomic.Bool
}

func (c *crashAfterSend) Send(ctx context.Context, m *mailer.Message) error {
	if err := c.next.Send(ctx, m); err != nil {
		return err
	}
	if c.crashed.CompareAndSwap(false, true) {
		panic("simulated crash between send and commit")
	}
	return nil
}

// SC-9, in process: a crash between the send and the commit. The retry
// completes the job, there is one email_log row, at most two deliveries with
// one Message-ID, and the in-doubt send is visible.
func TestWelcomeEmail_CrashBetweenSendAndCommit(t *testing.T) {
	t.Parallel()
	f := setup(t, &opts{mailer: func(m mailer.Sender) mailer.Sender { return &crashAfterSend{next: m} }})
	f.start(t)
	res := f.signup(t, "crash@example.com")
	f.waitJob(t, res.WelcomeEmail.JobID, "completed")

	require.Equal(t, 1, count(t, f.db.Pool, `SELECT count(*) FROM email_log`))
	e := f.entry(t, res.User.ID)
	require.Equal(t, emaillog.StatusSent, e.Status)
	require.True(t, e.InDoubt)
	msgs := f.sink.Messages()
	require.Len(t, msgs, 2)
	require.Equal(t, msgs[0].MessageID, msgs[1].MessageID)
	// The attempt that panicked recorded its outcome as unknown and released
	// its lease, so the retry did not wait.
	require.Equal(t, 1, count(t, f.db.Pool, `SELECT count(*) FROM email_attempts WHERE outcome = 'unknown' AND error LIKE 'panic:%'`))
}

// deadAttempt makes the email of userID look as a killed process leaves it:
// an attempt without an outcome whose lease ends after leaseLeft.
func deadAttempt(t *testing.T, f *fixture, userID int64, leaseLeft time.Duration) {
	t.Helper()
	_, err := f.db.Pool.Exec(context.Background(), `
		WITH a AS (
			INSERT INTO email_attempts (email_log_id, job_id, job_attempt)
			SELECT id, job_id, 1 FROM email_log WHERE user_id = $1 RETURNING id, email_log_id)
		UPDATE email_log l SET status = 'sending', lease_attempt_id = a.id, lease_until = now() + $2::interval
		FROM a WHERE l.id = a.email_log_id`, userID, leaseLeft.String())
	require.NoError(t, err)
}

// SC-9, the database side: a process died between the send and its commit
// (an attempt without an outcome, its lease expired). The retry sends with
// the same Message-ID, marks the email in doubt and closes the dead attempt
// as unknown.
func TestWelcomeEmail_AfterKilledAttempt(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	res := f.signup(t, "killed@example.com")
	deadAttempt(t, f, res.User.ID, -time.Second)
	f.start(t)
	f.waitJob(t, res.WelcomeEmail.JobID, "completed")
	e := f.entry(t, res.User.ID)
	require.Equal(t, emaillog.StatusSent, e.Status)
	require.True(t, e.InDoubt)
	require.Equal(t, 1, count(t, f.db.Pool, `SELECT count(*) FROM email_attempts WHERE outcome = 'unknown' AND error LIKE 'no outcome recorded%'`))
	require.Len(t, f.sink.Messages(), 1)
	require.Equal(t, e.MessageID, f.sink.Messages()[0].MessageID)
}

// While another attempt holds the email's lease (it is sending), a run of
// the same email waits for the lease to end instead of sending too.
func TestWelcomeEmail_WaitsForTheLease(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	res := f.signup(t, "leased@example.com")
	deadAttempt(t, f, res.User.ID, 2*time.Second)
	start := time.Now()
	f.start(t)
	f.waitJob(t, res.WelcomeEmail.JobID, "completed")
	require.GreaterOrEqual(t, time.Since(start), 1900*time.Millisecond, "no send before the lease ended")
	require.Len(t, f.sink.Messages(), 1)
	var attempt int
	require.NoError(t, f.db.Pool.QueryRow(context.Background(), `SELECT attempt FROM river_job WHERE id = $1`, res.WelcomeEmail.JobID).Scan(&attempt))
	require.Equal(t, 1, attempt, "waiting used no attempt")
}

func TestWelcomeEmail_PermanentRejection(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	f.sink.FailNext(smtpsink.FaultPermReject)
	f.start(t)
	res := f.signup(t, "nobody@example.com")
	f.waitJob(t, res.WelcomeEmail.JobID, "cancelled")
	e := f.entry(t, res.User.ID)
	require.Equal(t, emaillog.StatusFailed, e.Status)
	require.Contains(t, *e.LastError, "550")
	require.Empty(t, f.sink.Messages())

	// A resubmitted signup does not retry a permanent failure.
	again := f.signup(t, "nobody@example.com")
	require.True(t, again.WelcomeEmail.Duplicate)
}

// A job discarded before its email went out: a new signup submission revives
// the email with a new job.
func TestWelcomeEmail_RevivedAfterDiscard(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	ctx := context.Background()
	first := f.signup(t, "revive@example.com")
	_, err := f.db.Pool.Exec(ctx, `UPDATE river_job SET state = 'discarded', finalized_at = now() WHERE id = $1`, first.WelcomeEmail.JobID)
	require.NoError(t, err)

	again := f.signup(t, "revive@example.com")
	require.False(t, again.WelcomeEmail.Duplicate)
	require.NotEqual(t, first.WelcomeEmail.JobID, again.WelcomeEmail.JobID)
	e := f.entry(t, first.User.ID)
	require.Equal(t, again.WelcomeEmail.JobID, *e.JobID)

	f.start(t)
	f.waitJob(t, again.WelcomeEmail.JobID, "completed")
	require.Len(t, f.sink.Messages(), 1)
}

// A welcome email job enqueued directly, without its email_log row, still
// gets one, and is sent once.
func TestWelcomeEmail_EnqueuedWithoutLogRow(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	ctx := context.Background()
	var userID, jobID int64
	require.NoError(t, pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error {
		u, _, err := signup.FindOrCreate(ctx, tx, "direct@example.com", "")
		if err != nil {
			return err
		}
		userID = u.ID
		res, err := f.runner.Enqueue(ctx, tx, jobs.WelcomeEmailArgs{UserID: u.ID, EmailType: "welcome"}, nil)
		if err != nil {
			return err
		}
		jobID = res.JobID
		return nil
	}))
	f.start(t)
	f.waitJob(t, jobID, "completed")
	require.Equal(t, emaillog.StatusSent, f.entry(t, userID).Status)
	require.Len(t, f.sink.Messages(), 1)
}

// SC-5 for the welcome email: unique across queues, by both args.
func TestWelcomeEmail_UniqueAcrossQueues(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	ctx := context.Background()
	res := f.signup(t, "queues@example.com")
	var other *runner.EnqueueResult
	require.NoError(t, pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error {
		var err error
		other, err = f.runner.Enqueue(ctx, tx, jobs.WelcomeEmailArgs{UserID: res.User.ID, EmailType: "welcome"}, &river.InsertOpts{Queue: river.QueueDefault})
		return err
	}))
	require.True(t, other.Duplicate)
	require.Equal(t, res.WelcomeEmail.JobID, other.JobID)

	// Another email type for the same user is another email.
	var followup *runner.EnqueueResult
	require.NoError(t, pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error {
		var err error
		followup, err = jobs.EnqueueWelcomeEmail(ctx, f.runner, tx, res.User.ID, "welcome_followup", jobs.DomainDefault)
		return err
	}))
	require.False(t, followup.Duplicate)
}

func TestWelcomeEmail_RollbackLeavesNoUserAndNoJob(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	ctx := context.Background()
	errRollback := errors.New("business rule failed after the enqueue")
	err := pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error {
		if _, err := signup.Signup(ctx, tx, f.runner, "rollback@example.com", "", jobs.DomainDefault); err != nil {
			return err
		}
		return errRollback
	})
	require.ErrorIs(t, err, errRollback)
	require.Zero(t, count(t, f.db.Pool, `SELECT count(*) FROM users`))
	require.Zero(t, count(t, f.db.Pool, `SELECT count(*) FROM river_job`))
	require.Zero(t, count(t, f.db.Pool, `SELECT count(*) FROM email_log`))
}
