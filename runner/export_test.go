package runner

import "context"

// RequeueOrphans runs the orphan sweep now.
func (r *Runner) RequeueOrphans(ctx context.Context) { r.requeueOrphans(ctx) }
