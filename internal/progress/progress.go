// Package progress shows the progress of long-running commands: a bar on a
// terminal (github.com/schollz/progressbar), a line every few seconds
// otherwise (CI logs, pipes).
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// Bar counts towards a total.
type Bar struct {
	bar *progressbar.ProgressBar // nil when not a terminal

	mu        sync.Mutex
	w         io.Writer
	desc      string
	total     int64
	done      int64
	start     time.Time
	lastPrint time.Time
	printed   int64 // done when the last line was printed
	finished  bool
}

// LineInterval is how often a line is printed when w is not a terminal.
const LineInterval = 2 * time.Second

// New starts a bar of total steps described by desc, on w. A nil w shows
// nothing.
func New(w io.Writer, total int64, desc string) *Bar {
	b := &Bar{w: w, desc: desc, total: total, start: time.Now(), lastPrint: time.Now(), printed: -1}
	if w == nil {
		return b
	}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		b.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(fmt.Sprintf("%-12s", desc)),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
		)
	}
	return b
}

// Add moves the bar n steps.
func (b *Bar) Add(n int64) { b.Set(b.current() + n) }

func (b *Bar) current() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.done
}

// Set moves the bar to done steps.
func (b *Bar) Set(done int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.finished || b.w == nil {
		b.done = done
		return
	}
	b.done = done
	if b.bar != nil {
		_ = b.bar.Set64(done)
		return
	}
	if time.Since(b.lastPrint) >= LineInterval {
		b.lastPrint = time.Now()
		b.printLine()
	}
}

func (b *Bar) printLine() {
	pct := int64(0)
	if b.total > 0 {
		pct = 100 * b.done / b.total
	}
	b.printed = b.done
	fmt.Fprintf(b.w, "%s: %d/%d (%d%%) %s\n", b.desc, b.done, b.total, pct, time.Since(b.start).Round(time.Second))
}

// Finish closes the bar.
func (b *Bar) Finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.finished || b.w == nil {
		b.finished = true
		return
	}
	b.finished = true
	if b.bar != nil {
		_ = b.bar.Finish()
		return
	}
	if b.printed != b.done || b.done == 0 {
		b.printLine()
	}
}
