package runner

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

type requestIDKey struct{}

// WithRequestID returns ctx carrying the id of the request being served:
// every job enqueued with it records the id in its metadata (request_id), so
// an operator can follow a request into the jobs it caused.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestID returns the request id ctx carries, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// insertMiddleware stamps jobs with the request id and counts inserts and
// duplicates per kind for ops_enqueue_counts.
type insertMiddleware struct {
	river.MiddlewareDefaults
	counts *enqueueCounts
}

func (m *insertMiddleware) InsertMany(ctx context.Context, params []*rivertype.JobInsertParams, doInner func(context.Context) ([]*rivertype.JobInsertResult, error)) ([]*rivertype.JobInsertResult, error) {
	if id := RequestID(ctx); id != "" {
		for _, p := range params {
			p.Metadata = withMetadata(p.Metadata, "request_id", id)
		}
	}
	res, err := doInner(ctx)
	if err == nil {
		for _, r := range res {
			m.counts.add(r.Job.Kind, r.UniqueSkippedAsDuplicate)
		}
	}
	return res, err
}

func withMetadata(raw []byte, key string, value any) []byte {
	m := map[string]any{}
	if len(raw) > 0 {
		_ = json.Unmarshal(raw, &m)
	}
	m[key] = value
	out, err := json.Marshal(m)
	if err != nil {
		return raw
	}
	return out
}

// enqueueCounts buffers counts in memory; flush writes them in one statement.
type enqueueCounts struct {
	mu     sync.Mutex
	counts map[string]*[2]int64 // kind -> inserted, duplicates
}

func (c *enqueueCounts) add(kind string, duplicate bool) {
	if duplicate {
		c.addN(kind, 0, 1)
	} else {
		c.addN(kind, 1, 0)
	}
}

func (c *enqueueCounts) addN(kind string, inserted, duplicates int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts == nil {
		c.counts = map[string]*[2]int64{}
	}
	n := c.counts[kind]
	if n == nil {
		n = &[2]int64{}
		c.counts[kind] = n
	}
	n[0] += inserted
	n[1] += duplicates
}

func (c *enqueueCounts) take() map[string]*[2]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.counts
	c.counts = nil
	return out
}

// EnqueueCountsFlushInterval is how often a runner writes its enqueue counts
// to ops_enqueue_counts.
const EnqueueCountsFlushInterval = 10 * time.Second

// flushCounts writes the buffered counts; on failure they are put back.
func (r *Runner) flushCounts(ctx context.Context) {
	counts := r.counts.take()
	if len(counts) == 0 {
		return
	}
	var kinds []string
	var inserted, duplicates []int64
	for k, n := range counts {
		kinds, inserted, duplicates = append(kinds, k), append(inserted, n[0]), append(duplicates, n[1])
	}
	_, err := r.pool.Exec(ctx, `
		INSERT INTO ops_enqueue_counts AS c (runner_id, kind, minute, inserted, duplicates)
		SELECT $1, u.kind, date_trunc('minute', now()), u.inserted, u.duplicates
		FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS u(kind, inserted, duplicates)
		ON CONFLICT (runner_id, kind, minute) DO UPDATE
			SET inserted = c.inserted + EXCLUDED.inserted, duplicates = c.duplicates + EXCLUDED.duplicates`,
		r.config.ID, kinds, inserted, duplicates)
	if err != nil {
		r.logger.Debug("runner: writing enqueue counts failed; keeping them for the next flush", "error", err)
		for k, n := range counts {
			r.counts.addN(k, n[0], n[1])
		}
	}
}

// runFlusher flushes the counts every interval until stop is closed, then
// once more.
func (r *Runner) runFlusher(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(EnqueueCountsFlushInterval)
	defer t.Stop()
	lastSweep := time.Now()
	for {
		select {
		case <-stop:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			r.flushCounts(ctx)
			cancel()
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			r.flushCounts(ctx)
			if !r.config.InsertOnly && !r.stopping.Load() && time.Since(lastSweep) >= OrphanAfter {
				r.requeueOrphans(ctx)
				lastSweep = time.Now()
			}
			cancel()
		}
	}
}
