package runner

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Defaults for GroupConfig.
const (
	// GroupLanesDefault is how many group transactions are open at once:
	// the jobs of one lane take turns, so lanes bound how many jobs do
	// database work at once. 8 measured best on 2 cores (runner bench).
	GroupLanesDefault = 8

	// GroupMaxBatchDefault is the most jobs one commit carries. Each job's
	// savepoint that writes takes a subtransaction id, and PostgreSQL caches
	// only 64 of them per transaction: past that, every session's snapshot
	// checks slow down (subtransaction overflow). 32 leaves room for jobs that
	// open savepoints of their own.
	GroupMaxBatchDefault = 32

	// GroupMaxDelayDefault bounds how long a batch stays open for more jobs
	// once its first job is done, when others keep arriving.
	GroupMaxDelayDefault = 5 * time.Millisecond

	// GroupStatementTimeoutDefault bounds each statement of a group
	// transaction (PostgreSQL's statement_timeout, and the client's wait).
	GroupStatementTimeoutDefault = 30 * time.Second

	// GroupLockTimeoutDefault bounds a lock wait in a group transaction
	// (PostgreSQL's lock_timeout): a job waiting longer leaves the group and
	// runs again in a transaction of its own, instead of holding up its
	// lane's other jobs.
	GroupLockTimeoutDefault = time.Second

	// GroupMaxWaitDefault bounds how long a job waits for its lane's turn
	// before it runs in a transaction of its own.
	GroupMaxWaitDefault = 250 * time.Millisecond
)

// GroupConfig configures a Group. The zero value of every field means its
// default.
type GroupConfig struct {
	// Lanes is how many group transactions are open at once, each on its own
	// pooled connection, held only while a batch is open.
	//
	// Defaults to GroupLanesDefault (8), or a quarter of the pool's MaxConns
	// when that is fewer.
	Lanes int

	// MaxBatch is the most jobs one commit carries (at most 60; see
	// GroupMaxBatchDefault for why).
	//
	// Defaults to GroupMaxBatchDefault (32).
	MaxBatch int

	// MaxDelay is how long a batch stays open for more jobs while others keep
	// arriving. A batch commits at once when no other job waits for its lane.
	//
	// Defaults to GroupMaxDelayDefault (5 ms).
	MaxDelay time.Duration

	// StatementTimeout bounds each statement in a group transaction. A job's
	// context does not interrupt statements there (that would abort every job
	// of the batch); this timeout does.
	//
	// Defaults to GroupStatementTimeoutDefault (30 s).
	StatementTimeout time.Duration

	// LockTimeout bounds a lock wait in a group transaction. A job whose
	// transaction waits longer for a lock is rolled back to its savepoint and
	// run again by WorkTx in a transaction of its own, where its wait holds
	// up no other job and its context can interrupt it.
	//
	// Defaults to GroupLockTimeoutDefault (1 s).
	LockTimeout time.Duration

	// MaxWait bounds how long a job waits for its lane's turn (its lane busy
	// with a slow job) before WorkTx runs it in a transaction of its own.
	//
	// Defaults to GroupMaxWaitDefault (250 ms).
	MaxWait time.Duration

	// Schema holds River's tables, as Config.Schema of the runner whose jobs
	// the group commits. Empty means the connection's search_path.
	Schema string
}

// GroupStats counts what a Group did.
type GroupStats struct {
	Commits    int64 // group transactions committed
	Jobs       int64 // jobs whose work those commits carried
	RolledBack int64 // jobs whose work was rolled back to their savepoint
	Failed     int64 // group transactions lost (commit failed, connection lost)
	OutOfGroup int64 // jobs run in a transaction of their own: lane busy, or a lock wait timed out
}

// Group commits the transactions of many jobs together: a Beginner for
// WorkTx whose transactions are savepoints in a shared transaction that
// commits once for a batch of jobs. PostgreSQL pays for durability per commit
// (a WAL flush), so a batch of jobs costs about what one job costs alone.
//
// The guarantees of WorkTx hold per job: a job's effect and its completion
// commit together or not at all, and a job that fails rolls back to its own
// savepoint without touching the rest of the batch. Tx.Commit returns only
// once the group transaction has committed (or failed: then every job of the
// batch gets the error, nothing of theirs is committed, and River retries
// them). The price is latency: a job's commit waits for the batch, at most
// MaxDelay plus the time the batch's other jobs take.
//
// Through WorkTx, a job's savepoint starts by locking the job's row, checking
// that this very run of it (its attempted_at) is still running; the batch
// then completes all its jobs in one UPDATE just before its COMMIT, instead
// of one river.JobCompleteTx per job. The row lock keeps anyone else (a
// rescuer, a cancellation) from changing the job meanwhile, so the completion
// cannot fail; a job that is no longer running when its savepoint starts gets
// ErrJobNotRunning without running fn. Metadata a worker records through
// River (river.RecordOutput) is merged by River's completer afterwards, as it
// is for jobs completed with JobCompleteTx.
//
// Deferrable constraints are checked when each statement ends, as if
// immediate, so that one job's violation cannot fail its batch's commit.
//
// A job's transaction from a Group must only do database work (no network
// calls, no waiting on other jobs, no Begin on the Group itself): its lane's
// other jobs wait for it. Locks taken by a job are held until its batch
// commits.
type Group struct {
	pool     *pgxpool.Pool
	cfg      GroupConfig
	jobTable string
	lanes    []*lane
	next     atomic.Uint32
	stats    struct{ commits, jobs, rolledBack, failed, outOfGroup atomic.Int64 }
}

// errOutOfGroup tells WorkTx to run the job in a transaction of its own.
var errOutOfGroup = errors.New("runner: job runs outside the group")

// NewGroup returns a Group that takes its connections from pool.
func NewGroup(pool *pgxpool.Pool, cfg *GroupConfig) (*Group, error) {
	if pool == nil {
		return nil, errors.New("runner: NewGroup needs a pool")
	}
	c := GroupConfig{}
	if cfg != nil {
		c = *cfg
	}
	switch {
	case c.Lanes < 0 || c.MaxBatch < 0 || c.MaxDelay < 0 || c.StatementTimeout < 0 || c.LockTimeout < 0 || c.MaxWait < 0:
		return nil, errors.New("runner: GroupConfig fields must not be negative")
	case c.MaxBatch > 60:
		return nil, fmt.Errorf("runner: GroupConfig.MaxBatch %d is over 60 (PostgreSQL caches 64 subtransactions per transaction)", c.MaxBatch)
	}
	maxConns := pool.Config().MaxConns
	if c.Lanes == 0 {
		c.Lanes = min(GroupLanesDefault, max(1, int(maxConns)/4))
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = GroupMaxBatchDefault
	}
	if c.MaxDelay == 0 {
		c.MaxDelay = GroupMaxDelayDefault
	}
	if c.StatementTimeout == 0 {
		c.StatementTimeout = GroupStatementTimeoutDefault
	}
	if c.LockTimeout == 0 {
		c.LockTimeout = GroupLockTimeoutDefault
	}
	if c.MaxWait == 0 {
		c.MaxWait = GroupMaxWaitDefault
	}
	if int32(c.Lanes) >= maxConns {
		return nil, fmt.Errorf("runner: GroupConfig.Lanes %d must be below the pool's MaxConns %d", c.Lanes, maxConns)
	}
	g := &Group{pool: pool, cfg: c, jobTable: "river_job"}
	if c.Schema != "" {
		g.jobTable = pgx.Identifier{c.Schema, "river_job"}.Sanitize()
	}
	for range c.Lanes {
		g.lanes = append(g.lanes, &lane{g: g, turn: make(chan struct{}, 1)})
	}
	return g, nil
}

// Stats returns what the group did so far.
func (g *Group) Stats() GroupStats {
	return GroupStats{
		Commits:    g.stats.commits.Load(),
		Jobs:       g.stats.jobs.Load(),
		RolledBack: g.stats.rolledBack.Load(),
		Failed:     g.stats.failed.Load(),
		OutOfGroup: g.stats.outOfGroup.Load(),
	}
}

// Begin starts a transaction: a savepoint in one of the group's
// transactions. It waits for its turn on the lane (ctx bounds the wait).
// Defer its Rollback as with any transaction; Commit waits for the group.
// WorkTx does not call Begin: it starts the job's savepoint with a lock on
// the job (see Group).
//
// When the lane stays busy for MaxWait, Begin returns a transaction of its
// own from the pool instead.
func (g *Group) Begin(ctx context.Context) (pgx.Tx, error) {
	t, err := g.begin(ctx, nil)
	if errors.Is(err, errOutOfGroup) {
		return g.pool.Begin(ctx)
	}
	if err != nil {
		return nil, err
	}
	return t, nil
}

// jobRun identifies one run of a job: its id and when it was fetched.
type jobRun struct {
	id          int64
	attemptedAt time.Time
}

func (g *Group) begin(ctx context.Context, job *jobRun) (*groupTx, error) {
	l := g.pick()
	l.queued.Add(1)
	if err := l.takeTurn(ctx, g.cfg.MaxWait); err != nil {
		l.queued.Add(-1)
		if errors.Is(err, errOutOfGroup) {
			g.stats.outOfGroup.Add(1)
		}
		return nil, err
	}
	first := l.b == nil
	if first {
		conn, err := g.pool.Acquire(ctx)
		if err != nil {
			l.leave()
			return nil, fmt.Errorf("runner: group transaction: %w", err)
		}
		l.conn = conn
		l.pid.Store(conn.Conn().PgConn().PID())
		l.b = &batch{started: time.Now(), done: make(chan struct{})}
	}
	// One round trip: the transaction's start when it is the first job, the
	// job's savepoint, and the lock on the job's row.
	b := &pgx.Batch{}
	if first {
		b.Queue("BEGIN ISOLATION LEVEL READ COMMITTED")
		// Deferred constraints are checked at the end of each statement: a
		// violation at COMMIT would fail every job of the batch, over and
		// over, for one job's fault.
		b.Queue("SET CONSTRAINTS ALL IMMEDIATE")
		b.Queue(g.timeouts())
		b.Queue("SELECT current_setting('search_path')")
	}
	b.Queue("SAVEPOINT pgonce_job")
	if job != nil {
		b.Queue(`SELECT true FROM `+g.jobTable+` WHERE id = $1 AND state = 'running' AND attempted_at = $2 FOR UPDATE`,
			job.id, job.attemptedAt)
	}
	sctx, cancel := l.stmtCtx(ctx)
	br := l.conn.SendBatch(sctx, b)
	var err error
	if first {
		for range 3 {
			if _, err = br.Exec(); err != nil {
				break
			}
		}
		if err == nil {
			err = br.QueryRow().Scan(&l.b.searchPath)
		}
	}
	savepoint := false
	if err == nil {
		_, err = br.Exec()
		savepoint = err == nil
	}
	running := false
	if err == nil && job != nil {
		err = br.QueryRow().Scan(&running)
		if errors.Is(err, pgx.ErrNoRows) {
			err = nil
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	cancel()
	t := &groupTx{l: l, b: l.b, job: job}
	var pgErr *pgconn.PgError
	switch {
	case err != nil && savepoint && errors.As(err, &pgErr):
		// The lock failed (a lock timeout, a deadlock): only this job's
		// savepoint is lost.
		t.closed = true
		if rerr := t.rollback(); rerr != nil {
			return nil, rerr
		}
		return nil, fmt.Errorf("runner: locking job %d: %w", job.id, err)
	case err != nil:
		l.fail(err)
		l.leave()
		return nil, fmt.Errorf("runner: group transaction: %w", err)
	case job != nil && !running:
		// Rescued, cancelled, requeued by a shutdown, or fetched again by
		// another run: not this run's to complete.
		t.closed = true
		if err := t.rollback(); err != nil {
			return nil, err
		}
		return nil, ErrJobNotRunning
	}
	return t, nil
}

// timeouts is the statement that sets the group transaction's timeouts.
func (g *Group) timeouts() string {
	return "SELECT set_config('statement_timeout', '" + strconv.FormatInt(g.cfg.StatementTimeout.Milliseconds(), 10) +
		"', true), set_config('lock_timeout', '" + strconv.FormatInt(g.cfg.LockTimeout.Milliseconds(), 10) + "', true)"
}

// Abort ends every open group transaction at once, from another session
// (pg_terminate_backend): their jobs get an error and nothing of theirs
// commits; the locks they held are released. Runner.Stop calls it for the
// groups in Config.Groups when jobs still run after the shutdown budget, so
// that putting those jobs back in the queue does not wait for their locks.
func (g *Group) Abort(ctx context.Context) error {
	var pids []uint32
	for _, l := range g.lanes {
		if pid := l.pid.Load(); pid != 0 {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		return nil
	}
	// A lane whose batch ended meanwhile has given its connection back to
	// the pool: only backends still in a transaction are ended.
	_, err := g.pool.Exec(ctx, `
		SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE pid = ANY($1) AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')
		  AND xact_start IS NOT NULL`, pids)
	if err != nil {
		return fmt.Errorf("runner: aborting group transactions: %w", err)
	}
	return nil
}

// pick returns the lane with the fewest jobs waiting, starting the search
// at a rotating lane so that ties spread.
func (g *Group) pick() *lane {
	start := int(g.next.Add(1))
	best := g.lanes[start%len(g.lanes)]
	bestN := best.queued.Load()
	for i := 1; i < len(g.lanes) && bestN > 0; i++ {
		l := g.lanes[(start+i)%len(g.lanes)]
		if n := l.queued.Load(); n < bestN {
			best, bestN = l, n
		}
	}
	return best
}

// lane is one group transaction at a time, on one connection. Jobs take
// turns on it; the fields below the turn are only touched by its holder.
type lane struct {
	g      *Group
	turn   chan struct{} // a value in it: someone holds the turn
	queued atomic.Int32  // jobs waiting for or holding the turn

	conn *pgxpool.Conn
	b    *batch        // the open group transaction, nil when none
	pid  atomic.Uint32 // backend of the open group transaction, 0 when none
}

// batch is one group transaction.
type batch struct {
	started    time.Time
	searchPath string  // the session's, restored after a job changed it
	closing    bool    // a job changed settings: no job joins after it
	members    int     // jobs whose work it carries
	complete   []int64 // jobs it completes before its commit
	timer      *time.Timer
	done       chan struct{} // closed once committed or failed
	err        error
}

// takeTurn waits for the lane's turn: errOutOfGroup after maxWait.
func (l *lane) takeTurn(ctx context.Context, maxWait time.Duration) error {
	select {
	case l.turn <- struct{}{}: // free: no timer to make
		return nil
	default:
	}
	wait := time.NewTimer(maxWait)
	defer wait.Stop()
	select {
	case l.turn <- struct{}{}:
		return nil
	case <-wait.C:
		return errOutOfGroup
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *lane) stmtCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), l.g.cfg.StatementTimeout+5*time.Second)
}

// leave gives up the turn, first ending the batch when no one else will:
// nobody waits for the lane, the batch is full, or it is old enough.
// Otherwise a timer ends it, in case the jobs waiting give up.
func (l *lane) leave() {
	if b := l.b; b != nil {
		if l.queued.Load() <= 1 || b.closing || b.members >= l.g.cfg.MaxBatch || time.Since(b.started) >= l.g.cfg.MaxDelay {
			l.finish()
		} else if b.timer == nil {
			b.timer = time.AfterFunc(l.g.cfg.MaxDelay, func() { l.flush(b) })
		}
	}
	l.queued.Add(-1)
	<-l.turn
}

// flush ends b if it is still open.
func (l *lane) flush(b *batch) {
	l.turn <- struct{}{}
	if l.b == b {
		l.finish()
	}
	<-l.turn
}

// finish commits the open batch (or rolls back an empty one) and tells its
// jobs. The caller holds the turn.
func (l *lane) finish() {
	b := l.b
	ctx, cancel := l.stmtCtx(context.Background())
	defer cancel()
	if b.members == 0 {
		_, err := l.conn.Exec(ctx, "ROLLBACK")
		l.end(err)
		return
	}
	// The completions and the commit in one round trip. The jobs' rows are
	// locked by their savepoints, each checked running.
	q := &pgx.Batch{}
	if len(b.complete) > 0 {
		q.Queue(`UPDATE `+l.g.jobTable+` SET state = 'completed', finalized_at = clock_timestamp()
			WHERE id = ANY($1) AND state = 'running'`, b.complete)
	}
	var tag pgconn.CommandTag
	q.Queue("COMMIT").Exec(func(ct pgconn.CommandTag) error {
		tag = ct
		return nil
	})
	err := l.conn.SendBatch(ctx, q).Close()
	if err == nil && tag.String() != "COMMIT" {
		err = pgx.ErrTxCommitRollback
	}
	if err != nil {
		l.g.stats.failed.Add(1)
	} else {
		l.g.stats.commits.Add(1)
		l.g.stats.jobs.Add(int64(b.members))
	}
	l.end(err)
}

// fail ends the open batch after an error that leaves its transaction
// unusable (a lost connection, say): its jobs get err.
func (l *lane) fail(err error) {
	ctx, cancel := l.stmtCtx(context.Background())
	defer cancel()
	if _, rerr := l.conn.Exec(ctx, "ROLLBACK"); rerr != nil {
		_ = l.conn.Conn().Close(ctx)
	}
	if l.b.members > 0 {
		l.g.stats.failed.Add(1)
	}
	l.end(fmt.Errorf("runner: group transaction lost: %w", err))
}

// end releases the connection and tells the batch's jobs its outcome.
func (l *lane) end(err error) {
	b := l.b
	if err != nil && l.conn.Conn().PgConn().TxStatus() != 'I' {
		// Whatever state the session is in, the pool must not reuse it.
		_ = l.conn.Conn().Close(context.Background())
	}
	l.pid.Store(0)
	l.conn.Release()
	l.conn, l.b = nil, nil
	if b.timer != nil {
		b.timer.Stop()
	}
	b.err = err
	close(b.done)
}

// groupTx is one job's transaction: a savepoint in its lane's transaction,
// used while the job holds the lane's turn.
type groupTx struct {
	l      *lane
	b      *batch
	job    *jobRun // set through WorkTx
	closed bool
	nested int
	// settings: the job ran a statement that may change settings (SET,
	// RESET, set_config): they are restored before anyone else's work.
	settings bool
	// lockTimeout: a statement of the job gave up waiting for a lock.
	lockTimeout bool
}

// changesSettings tells whether sql may change a setting of the transaction
// (SET LOCAL, SET CONSTRAINTS, set_config(..., true)), which would carry
// over to the jobs after it in the same transaction.
func changesSettings(sql string) bool {
	s := strings.TrimLeft(sql, " \t\r\n(")
	word := func(w string) bool { return len(s) >= len(w) && strings.EqualFold(s[:len(w)], w) }
	return word("set ") || word("set\t") || word("set\n") || word("reset") ||
		strings.Contains(s, ";") || containsFold(s, "set_config")
}

// containsFold is strings.Contains ignoring ASCII case, without a copy: it
// runs on every statement of a group transaction.
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

// note records what a statement's error says about the job's transaction.
func (t *groupTx) note(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55P03" { // lock_not_available
		t.lockTimeout = true
	}
	return err
}

func (t *groupTx) saw(sql string) {
	if !t.settings && changesSettings(sql) {
		t.settings = true
	}
}

// lockTimedOut tells whether the job's transaction failed for a lock wait
// that timed out, so that it should run again outside the group.
func (t *groupTx) lockTimedOut(err error) bool {
	t.note(err)
	return t.lockTimeout
}

var _ pgx.Tx = (*groupTx)(nil)

func (t *groupTx) check() error {
	if t.closed {
		return pgx.ErrTxClosed
	}
	return nil
}

// Begin starts a savepoint inside the job's transaction.
func (t *groupTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	t.nested++
	sp := &savepoint{parent: t, name: "pgonce_sp_" + strconv.Itoa(t.nested)}
	if _, err := t.Exec(ctx, "SAVEPOINT "+sp.name); err != nil {
		return nil, err
	}
	return sp, nil
}

// Commit ends the job's part and waits for the group transaction's commit.
func (t *groupTx) Commit(ctx context.Context) error { return t.commit(ctx, false) }

// commit ends the job's part, completing the job with the batch if asked,
// and waits for the group transaction's commit.
func (t *groupTx) commit(ctx context.Context, completeJob bool) error {
	if err := t.check(); err != nil {
		return err
	}
	t.closed = true
	l, b := t.l, t.b
	if l.conn.Conn().PgConn().TxStatus() == 'E' {
		// A statement failed and the job went on: like a transaction of its
		// own, nothing of it commits.
		if err := t.rollback(); err != nil {
			return err
		}
		return pgx.ErrTxCommitRollback
	}
	if t.settings {
		// The job may have changed settings: check its deferred
		// constraints now, in its own savepoint, and put back what the
		// batch's last statements rely on; no other job joins after it.
		q := &pgx.Batch{}
		q.Queue("SET CONSTRAINTS ALL IMMEDIATE")
		q.Queue(l.g.timeouts())
		q.Queue("SELECT set_config('search_path', $1, true)", b.searchPath)
		ctx, cancel := l.stmtCtx(ctx)
		err := l.conn.SendBatch(ctx, q).Close()
		cancel()
		if err != nil {
			if rerr := t.rollback(); rerr != nil {
				return rerr
			}
			return err
		}
		b.closing = true
	}
	b.members++
	if completeJob && t.job != nil {
		b.complete = append(b.complete, t.job.id)
	}
	l.leave()
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return fmt.Errorf("runner: waiting for the group commit: %w", ctx.Err())
	}
}

// Rollback undoes the job's part and leaves the rest of the batch alone.
func (t *groupTx) Rollback(context.Context) error {
	if err := t.check(); err != nil {
		return err
	}
	t.closed = true
	return t.rollback()
}

func (t *groupTx) rollback() error {
	l := t.l
	l.g.stats.rolledBack.Add(1)
	ctx, cancel := l.stmtCtx(context.Background())
	_, err := l.conn.Exec(ctx, "ROLLBACK TO SAVEPOINT pgonce_job; RELEASE SAVEPOINT pgonce_job")
	cancel()
	if err != nil {
		l.fail(err)
	}
	l.leave()
	return err
}

func (t *groupTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := t.check(); err != nil {
		return pgconn.CommandTag{}, err
	}
	t.saw(sql)
	ctx, cancel := t.l.stmtCtx(ctx)
	defer cancel()
	tag, err := t.l.conn.Exec(ctx, sql, args...)
	return tag, t.note(err)
}

func (t *groupTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	t.saw(sql)
	ctx, cancel := t.l.stmtCtx(ctx)
	rows, err := t.l.conn.Query(ctx, sql, args...)
	if err != nil {
		cancel()
		return rows, t.note(err)
	}
	return &cancelRows{Rows: rows, cancel: cancel, t: t}, nil
}

func (t *groupTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	rows, err := t.Query(ctx, sql, args...)
	return &row{rows: rows, err: err}
}

func (t *groupTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := t.check(); err != nil {
		return errBatch{err}
	}
	for _, q := range b.QueuedQueries {
		t.saw(q.SQL)
	}
	ctx, cancel := t.l.stmtCtx(ctx)
	return &cancelBatch{BatchResults: t.l.conn.SendBatch(ctx, b), cancel: cancel, t: t}
}

func (t *groupTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.check(); err != nil {
		return 0, err
	}
	ctx, cancel := t.l.stmtCtx(ctx)
	defer cancel()
	return t.l.conn.CopyFrom(ctx, table, columns, src)
}

func (t *groupTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	ctx, cancel := t.l.stmtCtx(ctx)
	defer cancel()
	return t.l.conn.Conn().Prepare(ctx, name, sql)
}

func (t *groupTx) LargeObjects() pgx.LargeObjects {
	panic("runner: large objects are not supported in a group transaction")
}

func (t *groupTx) Conn() *pgx.Conn { return t.l.conn.Conn() }

// savepoint is a transaction nested in a job's transaction.
type savepoint struct {
	parent *groupTx
	name   string
	closed bool
}

var _ pgx.Tx = (*savepoint)(nil)

func (s *savepoint) Begin(ctx context.Context) (pgx.Tx, error) {
	if s.closed {
		return nil, pgx.ErrTxClosed
	}
	return s.parent.Begin(ctx)
}

func (s *savepoint) Commit(ctx context.Context) error {
	if s.closed {
		return pgx.ErrTxClosed
	}
	s.closed = true
	_, err := s.parent.Exec(ctx, "RELEASE SAVEPOINT "+s.name)
	return err
}

func (s *savepoint) Rollback(ctx context.Context) error {
	if s.closed {
		return pgx.ErrTxClosed
	}
	s.closed = true
	if _, err := s.parent.Exec(ctx, "ROLLBACK TO SAVEPOINT "+s.name); err != nil {
		return err
	}
	_, err := s.parent.Exec(ctx, "RELEASE SAVEPOINT "+s.name)
	return err
}

func (s *savepoint) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return s.parent.Exec(ctx, sql, args...)
}

func (s *savepoint) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return s.parent.Query(ctx, sql, args...)
}

func (s *savepoint) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return s.parent.QueryRow(ctx, sql, args...)
}

func (s *savepoint) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return s.parent.SendBatch(ctx, b)
}

func (s *savepoint) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	return s.parent.CopyFrom(ctx, table, columns, src)
}

func (s *savepoint) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	return s.parent.Prepare(ctx, name, sql)
}

func (s *savepoint) LargeObjects() pgx.LargeObjects { return s.parent.LargeObjects() }
func (s *savepoint) Conn() *pgx.Conn                { return s.parent.Conn() }

// cancelRows releases a query's timeout when its rows close.
type cancelRows struct {
	pgx.Rows
	cancel context.CancelFunc
	once   sync.Once
	t      *groupTx
}

func (r *cancelRows) Close() {
	r.Rows.Close()
	r.t.note(r.Rows.Err())
	r.once.Do(r.cancel)
}

func (r *cancelRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.t.note(r.Rows.Err())
	r.once.Do(r.cancel)
	return false
}

// row is QueryRow's result over Query, as pgx's own.
type row struct {
	rows pgx.Rows
	err  error
}

func (r *row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}

type cancelBatch struct {
	pgx.BatchResults
	cancel context.CancelFunc
	t      *groupTx
}

func (b *cancelBatch) Exec() (pgconn.CommandTag, error) {
	tag, err := b.BatchResults.Exec()
	return tag, b.t.note(err)
}

func (b *cancelBatch) Close() error {
	defer b.cancel()
	return b.t.note(b.BatchResults.Close())
}

type errBatch struct{ err error }

func (b errBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.err }
func (b errBatch) Query() (pgx.Rows, error)         { return nil, b.err }
func (b errBatch) QueryRow() pgx.Row                { return &row{err: b.err} }
func (b errBatch) Close() error                     { return b.err }
func (b errBatch) Tx() pgx.Tx                       { return nil }
