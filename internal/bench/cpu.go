package bench

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuSample is a reading of the machine's and this process's CPU time, to
// say what a phase was limited by (on Linux; elsewhere it reads zeros).
type cpuSample struct {
	at      time.Time
	busy    float64 // machine-wide busy CPU seconds (all cores)
	own     float64 // this process's CPU seconds
	machine bool    // busy could be read
}

func sampleCPU() cpuSample {
	s := cpuSample{at: time.Now()}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		s.own = tv(ru.Utime) + tv(ru.Stime)
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		if len(f) > 5 && f[0] == "cpu" {
			var total, idle float64
			for i, v := range f[1:] {
				n, _ := strconv.ParseFloat(v, 64)
				total += n
				if i == 3 || i == 4 { // idle, iowait
					idle += n
				}
			}
			s.busy = (total - idle) / 100 // USER_HZ
			s.machine = true
		}
	}
	return s
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// cpuUse is what a phase used: the share of the machine's cores that were
// busy, and the cores this process used.
type cpuUse struct {
	MachineBusy float64 // 0..1 of all cores
	OwnCores    float64 // cores' worth used by this process
}

func (a cpuSample) until(b cpuSample) cpuUse {
	wall := b.at.Sub(a.at).Seconds()
	if wall <= 0 {
		return cpuUse{}
	}
	u := cpuUse{OwnCores: (b.own - a.own) / wall}
	if a.machine && b.machine {
		u.MachineBusy = (b.busy - a.busy) / wall / float64(runtime.NumCPU())
	}
	return u
}
