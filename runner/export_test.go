package runner

import "context"

// RequeueOrphans runs the orphan sweep now.
func (r *Runner) RequeueOrphans(ctx context.Context) { r.requeueOrphans(ctx) }

// PretendWaiting counts delta more jobs as waiting for lane i of g.
func PretendWaiting(g *Group, i int, delta int32) { g.lanes[i].queued.Add(delta) }

// Waiting is how many jobs wait for or hold lane i of g.
func Waiting(g *Group, i int) int32 { return g.lanes[i].queued.Load() }

// ChangesSettings is changesSettings.
var ChangesSettings = changesSettings
