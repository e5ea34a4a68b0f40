package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/olekukonko/tablewriter"
)

// Report is what a run measured.
type Report struct {
	Started  time.Time `json:"started"`
	Elapsed  string    `json:"elapsed"`
	Settings Settings  `json:"settings"`
	Results  []*Result `json:"results"`
	Targets  []*Target `json:"targets"`
}

// Settings are the knobs the run used.
type Settings struct {
	Server        string `json:"server"`
	Clients       int    `json:"clients"`
	Duration      string `json:"phase_duration"`
	Jobs          int    `json:"jobs"`
	Retained      int    `json:"retained"`
	HTTPClients   int    `json:"http_clients"`
	FetchCooldown string `json:"fetch_cooldown"`
	MaxWorkers    int    `json:"max_workers"`
	GroupLanes    int    `json:"group_lanes"`
	GroupMaxBatch int    `json:"group_max_batch"`
}

// Result is one measured figure.
type Result struct {
	// Key names the figure for scripts (e.g. "runner_tx"); stable across runs.
	Key     string `json:"key"`
	Section string `json:"section"`
	Name    string `json:"name"`
	// Rate is how many Units per second.
	Rate float64 `json:"per_second"`
	Unit string  `json:"unit"`
	// PerCallUs is the mean duration of one call (closed loops).
	PerCallUs float64 `json:"per_call_us,omitempty"`
	// P50Ms and P99Ms are latency percentiles in milliseconds: from the
	// enqueueing transaction's commit to the end of the job's work for jobs,
	// of the whole request for HTTP.
	P50Ms float64 `json:"p50_ms,omitempty"`
	P99Ms float64 `json:"p99_ms,omitempty"`
	// LatencyAt is the offered load the job latencies were measured at.
	LatencyAt float64 `json:"latency_at_per_second,omitempty"`
	// VsCeiling and VsRiver are Rate over the commit ceiling's and over bare
	// River's transactional worker's, measured in the same run.
	VsCeiling float64 `json:"vs_ceiling,omitempty"`
	VsRiver   float64 `json:"vs_bare_river_tx,omitempty"`
	// MachineCPU is the share of all cores busy while the figure was
	// measured (Linux), OwnCPU the cores this process used meanwhile: the
	// rest is PostgreSQL's (and whatever else runs on the machine).
	MachineCPU float64 `json:"machine_cpu_busy,omitempty"`
	OwnCPU     float64 `json:"own_cpu_cores,omitempty"`
	Note       string  `json:"note,omitempty"`
}

// Target is one of the goals the figures are held to.
type Target struct {
	Name  string  `json:"name"`
	Want  string  `json:"want"`
	Got   float64 `json:"got"`
	Shown string  `json:"shown"`
	Met   bool    `json:"met"`
}

func (r *Report) add(res *Result) *Result {
	r.Results = append(r.Results, res)
	return res
}

// Result returns the result with key, or nil.
func (r *Report) Result(key string) *Result {
	for _, res := range r.Results {
		if res.Key == key {
			return res
		}
	}
	return nil
}

// finish computes the ratios and checks the targets.
func (r *Report) finish() {
	ceiling, river := r.Result("ceiling"), r.Result("river_tx")
	for _, res := range r.Results {
		if res.Unit != "jobs" && res.Key != "ceiling" {
			continue
		}
		if ceiling != nil && ceiling.Rate > 0 {
			res.VsCeiling = res.Rate / ceiling.Rate
		}
		if river != nil && river.Rate > 0 && res.Unit == "jobs" {
			res.VsRiver = res.Rate / river.Rate
		}
	}
	ratio := func(name, want string, a, b *Result, atLeast float64) {
		if a == nil || b == nil || b.Rate == 0 {
			return
		}
		got := a.Rate / b.Rate
		r.Targets = append(r.Targets, &Target{Name: name, Want: want, Got: got, Shown: fmt.Sprintf("%.2fx", got), Met: got >= atLeast})
	}
	// The like-for-like transactional job: bare River's worker written
	// with the runner. The welcome-email and payment jobs also hold an SMTP
	// conversation or an HTTP call and two transactions each; their ratios
	// are in the table.
	if job := r.Result("runner_tx"); job != nil {
		ratio("transactional jobs end to end vs bare River's transactional worker", ">= 2x", job, river, 2)
		ratio("transactional jobs end to end vs the commit ceiling", ">= 0.8x", job, ceiling, 0.8)
	}
	if dup, fresh := r.Result("enqueue_duplicate"), r.Result("enqueue_unique_new"); dup != nil && fresh != nil && dup.PerCallUs > 0 {
		got := dup.PerCallUs / fresh.PerCallUs
		r.Targets = append(r.Targets, &Target{Name: "duplicate enqueue cost vs new-key enqueue", Want: "<= 1.2x",
			Got: got, Shown: fmt.Sprintf("%.2fx", got), Met: got <= 1.2})
	}
	replay, fresh := r.Result("http_replay"), r.Result("http_new")
	ratio("replays vs new requests (requests/s)", ">= 3x", replay, fresh, 3)
	if replay != nil {
		r.Targets = append(r.Targets, &Target{Name: "replay p99 on loopback", Want: "< 5 ms", Got: replay.P99Ms,
			Shown: fmt.Sprintf("%.2f ms", replay.P99Ms), Met: replay.P99Ms < 5})
	}
	ratio("welcome emails with millions of rows retained vs none", ">= 0.8x", r.Result("growth_retained"), r.Result("welcome_email"), 0.8)
}

// PrintJSON writes the report as JSON.
func (r *Report) PrintJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// Print writes the report as tables.
func (r *Report) Print(w io.Writer) error {
	s := r.Settings
	fmt.Fprintf(w, "PostgreSQL %s; %d clients (pool size), fetch cooldown %s, %d workers per queue, group commit %d lanes x %d jobs; phases of %s\n",
		s.Server, s.Clients, s.FetchCooldown, s.MaxWorkers, s.GroupLanes, s.GroupMaxBatch, s.Duration)
	t := tablewriter.NewWriter(w)
	t.Header("section", "measure", "rate", "per call", "p50", "p99", "x ceiling", "x bare River tx", "cpu busy / ours")
	for _, res := range r.Results {
		name := res.Name
		if res.Note != "" {
			name += " (" + res.Note + ")"
		}
		p50, p99 := ms(res.P50Ms), ms(res.P99Ms)
		if res.LatencyAt > 0 {
			p50 += fmt.Sprintf(" @%.0f/s", res.LatencyAt)
		}
		if err := t.Append(res.Section, name, fmt.Sprintf("%.0f %s/s", res.Rate, res.Unit), us(res.PerCallUs), p50, p99,
			ratio(res.VsCeiling), ratio(res.VsRiver), cpuShown(res)); err != nil {
			return err
		}
	}
	if err := t.Render(); err != nil {
		return err
	}
	if len(r.Targets) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t = tablewriter.NewWriter(w)
	t.Header("target", "want", "got", "met")
	met := 0
	for _, tg := range r.Targets {
		ok := "MISSED"
		if tg.Met {
			ok, met = "yes", met+1
		}
		if err := t.Append(tg.Name, tg.Want, tg.Shown, ok); err != nil {
			return err
		}
	}
	if err := t.Render(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d of %d targets met; run took %s\n", met, len(r.Targets), r.Elapsed)
	return nil
}

func ms(v float64) string {
	if v == 0 {
		return ""
	}
	return strconv.FormatFloat(v, 'f', 2, 64) + " ms"
}

func us(v float64) string {
	if v == 0 {
		return ""
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + " µs"
}

func ratio(v float64) string {
	if v == 0 {
		return ""
	}
	return strconv.FormatFloat(v, 'f', 2, 64) + "x"
}

func cpuShown(r *Result) string {
	if r.MachineCPU == 0 {
		return ""
	}
	return fmt.Sprintf("%.0f%% / %.2f", 100*r.MachineCPU, r.OwnCPU)
}

func toMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func toUs(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
