package runner

import (
	"math"
	"math/rand/v2"
	"time"

	"github.com/riverqueue/river/rivertype"
)

// Defaults for Backoff.
const (
	BackoffMinDefault = time.Second
	BackoffMaxDefault = time.Hour
)

// Backoff is the default retry policy: the first retry after Min, each next
// one twice as late, never later than Max, each delay moved by up to ±10% so
// that jobs failing together do not retry together. With the defaults and 25
// attempts a job keeps retrying for about 14 hours.
//
// Attempts are River's: a snooze does not count, and a job interrupted by a
// runner's shutdown does not count either (see Runner.Stop).
type Backoff struct {
	// Min is the delay before the first retry. Defaults to BackoffMinDefault (1 s).
	Min time.Duration
	// Max caps every delay. Defaults to BackoffMaxDefault (1 h).
	Max time.Duration
}

// Delay returns the delay before the retry that follows attempt (1-based).
func (b *Backoff) Delay(attempt int) time.Duration {
	lo := b.Min
	if lo <= 0 {
		lo = BackoffMinDefault
	}
	hi := b.Max
	if hi <= 0 {
		hi = BackoffMaxDefault
	}
	hi = max(hi, lo)
	exp := float64(lo) * math.Pow(2, float64(max(attempt, 1)-1))
	d := time.Duration(math.Min(exp, float64(hi)))
	jitter := (rand.Float64()*0.2 - 0.1) * float64(d)
	return min(max(d+time.Duration(jitter), lo), hi)
}

// NextRetry implements river.ClientRetryPolicy.
func (b *Backoff) NextRetry(job *rivertype.JobRow) time.Time {
	return time.Now().UTC().Add(b.Delay(job.Attempt))
}
