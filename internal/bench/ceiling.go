package bench

import (
	"context"
	"fmt"
	"time"
)

// ceiling measures single-row INSERT commits per second from Clients
// connections at once: each call is one autocommitted statement, one WAL
// flush shared with whatever commits at the same moment.
func (b *bench) ceiling(ctx context.Context) error {
	d, err := b.newDB(ctx, "ceiling")
	if err != nil {
		return err
	}
	defer d.Close()
	insert := func(ctx context.Context, i int64) error {
		_, err := d.Pool.Exec(ctx, `INSERT INTO bench_ceiling (v) VALUES ($1)`, i)
		return err
	}
	// Open every connection first and let the server settle.
	if _, err := closedLoop(ctx, b.cfg.Clients, 300*time.Millisecond, insert); err != nil {
		return err
	}
	res, err := closedLoop(ctx, b.cfg.Clients, b.cfg.Duration, insert)
	if err != nil {
		return err
	}
	b.report.add(&Result{
		Key: "ceiling", Section: "ceiling", Name: fmt.Sprintf("single-row INSERT commits, %d clients", b.cfg.Clients),
		Rate: res.Rate(), Unit: "commits", PerCallUs: toUs(res.Mean()), P50Ms: toMs(res.P(0.5)), P99Ms: toMs(res.P(0.99)),
		MachineCPU: res.CPU.MachineBusy, OwnCPU: res.CPU.OwnCores,
	})
	b.logf("ceiling: %.0f commits/s", res.Rate())
	return nil
}
