package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/pgonce/pgonce/api"
	"github.com/pgonce/pgonce/internal/progress"
)

// Client is an API client of the demo: a principal and its token.
type Client struct {
	Principal string
	Token     string
}

// Payments is the payment workload: clients submit payments with
// Idempotency-Keys and behave as real clients do: they retry after timeouts
// with the same key, double-submit, and sometimes reuse a key with a changed
// amount. Two clients use the same key strings, which must not mix.
type Payments struct {
	// BaseURL is where requests go, unless Targets is set (see Signups).
	BaseURL string
	Targets func() string
	Clients []Client // at least one; payments alternate between them
	RunID   string

	// Payments submitted. Defaults to 2,000.
	Payments int
	// TimeoutShare of payments have their first request cut off after a few
	// milliseconds (the server may or may not have committed it) and then
	// retried with the same key. Defaults to 0.15.
	TimeoutShare float64
	// DoubleShare of payments are submitted 2 or 3 times at once. Defaults to 0.15.
	DoubleShare float64
	// ReplayShare of payments are submitted again after their answer, which
	// must come back byte for byte. Defaults to 0.1.
	ReplayShare float64
	// ReuseShare of payments have their key reused with another amount after
	// their answer, which must be refused with 422. Defaults to 0.05.
	ReuseShare float64
	// Concurrency is the number of payments in progress at once. Defaults to 32.
	Concurrency int
	Seed        uint64
	// Spread dispatches the payments evenly over this long instead of at once.
	Spread time.Duration
	// ExpectOutages makes requests without an answer and 503s part of the
	// run (runners killed, the database restarted): the clients retry them,
	// and the audit counts them without failing on them.
	ExpectOutages bool

	Client   *http.Client
	Progress io.Writer
}

func (p *Payments) defaults() {
	if p.Payments <= 0 {
		p.Payments = 2000
	}
	or := func(v *float64, def float64) {
		if *v <= 0 || *v > 1 {
			*v = def
		}
	}
	or(&p.TimeoutShare, 0.15)
	or(&p.DoubleShare, 0.15)
	or(&p.ReplayShare, 0.1)
	or(&p.ReuseShare, 0.05)
	if p.Concurrency <= 0 {
		p.Concurrency = 32
	}
	if p.Client == nil {
		p.Client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	}
}

// PaymentPlan is one payment a client wants.
type PaymentPlan struct {
	Client   Client
	Key      string
	OrderID  string
	Amount   int64
	Currency string

	timeout, replay, reuse bool
	timeoutAfter           time.Duration
	double                 int
}

// PaymentsResult counts what the clients saw.
type PaymentsResult struct {
	Plans           []PaymentPlan
	Requests        int64
	Accepted        int64 // 202, first answers
	Replays         int64 // answers with Idempotent-Replayed: true
	InFlight409     int64
	Reused422       int64
	ReuseAttempts   int64
	ReplayAttempts  int64
	ClientTimeouts  int64
	Unavailable503  int64
	Unanswered      int64 // no HTTP answer (connection refused or cut) other than the client's own cut-off
	OtherFailures   int64
	FailureSamples  []string
	ReplayMismatch  int64 // a replay whose body differed from the first answer
	PaymentMismatch int64 // a key answered with two payment ids
	NoFinalAnswer   int64 // a plan that never got a 2xx
	TwoFirstAnswers int64 // a key answered twice without Idempotent-Replayed
	OnlyReplayed    int64 // a key whose first answer was lost (cut-off) and came back as a replay
	Elapsed         time.Duration
	PaymentIDs      map[string]int64 // principal + "\x00" + key -> payment id
}

// Run submits every payment and waits for every answer.
func (p *Payments) Run(ctx context.Context) (*PaymentsResult, error) {
	p.defaults()
	if len(p.Clients) == 0 {
		return nil, errors.New("demo: payments need at least one client")
	}
	rng := rand.New(rand.NewPCG(p.Seed, 11))
	currencies := []string{"EUR", "USD", "GBP", "JPY", "CHF"}
	res := &PaymentsResult{PaymentIDs: map[string]int64{}}
	steps := 0
	for i := range p.Payments {
		c := p.Clients[i%len(p.Clients)]
		plan := PaymentPlan{
			Client: c,
			// Neighbouring payments of different clients share a key string.
			Key:      fmt.Sprintf("%s-key-%05d", p.RunID, i/len(p.Clients)),
			OrderID:  fmt.Sprintf("%s-%s-order-%05d", p.RunID, c.Principal, i),
			Amount:   100 + rng.Int64N(100_000),
			Currency: currencies[rng.IntN(len(currencies))],
			timeout:  rng.Float64() < p.TimeoutShare,
			replay:   rng.Float64() < p.ReplayShare,
			reuse:    rng.Float64() < p.ReuseShare,
			double:   1,
		}
		plan.timeoutAfter = time.Duration(500+rng.IntN(10_000)) * time.Microsecond
		if rng.Float64() < p.DoubleShare {
			plan.double = 2 + rng.IntN(2)
		}
		res.Plans = append(res.Plans, plan)
		steps++
	}
	bar := progress.New(p.Progress, int64(steps), "payments")
	defer bar.Finish()

	var mu sync.Mutex
	work := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range p.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				out := p.pay(ctx, res.Plans[i])
				mu.Lock()
				res.tally(res.Plans[i], out)
				mu.Unlock()
				bar.Add(1)
			}
		}()
	}
	var every time.Duration
	if p.Spread > 0 && len(res.Plans) > 0 {
		every = p.Spread / time.Duration(len(res.Plans))
	}
feed:
	for i := range res.Plans {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
		if every > 0 {
			select {
			case <-time.After(every):
			case <-ctx.Done():
				break feed
			}
		}
	}
	close(work)
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res, ctx.Err()
}

type payAnswer struct {
	status   int
	replayed bool
	body     []byte
	err      string
	timedOut bool
}

type payOutcome struct {
	answers    []payAnswer
	firstBody  []byte // the first 2xx body
	paymentIDs map[int64]bool
	final      bool
	replayOK   *bool
	reuse422   *bool
}

// pay runs one plan: its submissions (with retries) and its follow-ups.
func (p *Payments) pay(ctx context.Context, plan PaymentPlan) *payOutcome {
	out := &payOutcome{paymentIDs: map[int64]bool{}}
	var mu sync.Mutex
	record := func(a payAnswer) {
		mu.Lock()
		defer mu.Unlock()
		out.answers = append(out.answers, a)
		if a.status >= 200 && a.status < 300 {
			var pr api.PaymentResponse
			if json.Unmarshal(a.body, &pr) == nil && pr.Payment != nil {
				out.paymentIDs[pr.Payment.ID] = true
			}
			if out.firstBody == nil {
				out.firstBody = a.body
			}
			out.final = true
		}
	}
	body := func(amount int64) []byte {
		b, _ := json.Marshal(map[string]any{"order_id": plan.OrderID, "amount": amount, "currency": plan.Currency})
		return b
	}
	// submit retries until a final answer: 2xx or a 4xx other than 409.
	submit := func(cutoff time.Duration) {
		for attempt := 0; attempt < 300; attempt++ {
			a := p.post(ctx, plan, body(plan.Amount), cutoff)
			record(a)
			cutoff = 0
			if a.status >= 200 && a.status < 300 || (a.status >= 400 && a.status < 500 && a.status != http.StatusConflict) {
				return
			}
			if ctx.Err() != nil {
				return
			}
			time.Sleep(time.Duration(10+min(attempt, 20)*10) * time.Millisecond)
		}
	}
	var first time.Duration
	if plan.timeout {
		first = plan.timeoutAfter
	}
	if plan.double > 1 {
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for range plan.double {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				submit(first)
			}()
		}
		close(gate)
		wg.Wait()
	} else {
		submit(first)
	}
	if !out.final {
		return out
	}
	// followUp sends a follow-up until it gets an answer that says something
	// about the key: a runner killed under the request, a database restart
	// (503) or a 409 are retried like any client would.
	followUp := func(b []byte) payAnswer {
		var a payAnswer
		for attempt := 0; attempt < 100; attempt++ {
			a = p.post(ctx, plan, b, 0)
			record(a)
			transient := a.status == 0 || a.status == http.StatusServiceUnavailable || a.status == http.StatusConflict
			if !transient || ctx.Err() != nil {
				break
			}
			time.Sleep(time.Duration(10+min(attempt, 20)*10) * time.Millisecond)
		}
		return a
	}
	if plan.replay {
		a := followUp(body(plan.Amount))
		ok := a.replayed && bytes.Equal(a.body, out.firstBody)
		out.replayOK = &ok
	}
	if plan.reuse {
		a := followUp(body(plan.Amount + 1))
		ok := a.status == http.StatusUnprocessableEntity
		out.reuse422 = &ok
	}
	return out
}

func (p *Payments) post(ctx context.Context, plan PaymentPlan, body []byte, cutoff time.Duration) payAnswer {
	if cutoff > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cutoff)
		defer cancel()
	}
	base := p.BaseURL
	if p.Targets != nil {
		base = p.Targets()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/payments", bytes.NewReader(body))
	if err != nil {
		return payAnswer{err: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+plan.Client.Token)
	req.Header.Set("Idempotency-Key", plan.Key)
	resp, err := p.Client.Do(req)
	if err != nil {
		return payAnswer{err: err.Error(), timedOut: errors.Is(err, context.DeadlineExceeded)}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return payAnswer{status: resp.StatusCode, err: err.Error(), timedOut: errors.Is(err, context.DeadlineExceeded)}
	}
	return payAnswer{status: resp.StatusCode, replayed: resp.Header.Get("Idempotent-Replayed") == "true", body: raw}
}

func (r *PaymentsResult) tally(plan PaymentPlan, out *payOutcome) {
	firsts := 0
	for _, a := range out.answers {
		if a.err == "" && !a.replayed && a.status >= 200 && a.status < 300 {
			firsts++
		}
		r.Requests++
		switch {
		case a.timedOut:
			r.ClientTimeouts++
		case a.err != "" && a.status == 0:
			r.Unanswered++
			r.sample(a.err)
		case a.err != "":
			r.OtherFailures++
			r.sample(a.err)
		case a.replayed:
			r.Replays++
		case a.status == http.StatusAccepted || a.status == http.StatusOK:
			r.Accepted++
		case a.status == http.StatusConflict:
			r.InFlight409++
		case a.status == http.StatusUnprocessableEntity:
			r.Reused422++
		case a.status == http.StatusServiceUnavailable:
			r.Unavailable503++
		default:
			r.OtherFailures++
			r.sample(strconv.Itoa(a.status) + " " + string(bytes.TrimSpace(a.body)))
		}
	}
	switch {
	case !out.final:
		r.NoFinalAnswer++
	case firsts > 1:
		r.TwoFirstAnswers++
	case firsts == 0:
		r.OnlyReplayed++
	}
	if len(out.paymentIDs) > 1 {
		r.PaymentMismatch++
	}
	for id := range out.paymentIDs {
		r.PaymentIDs[plan.Client.Principal+"\x00"+plan.Key] = id
	}
	if out.replayOK != nil {
		r.ReplayAttempts++
		if !*out.replayOK {
			r.ReplayMismatch++
		}
	}
	if out.reuse422 != nil {
		r.ReuseAttempts++
	}
}

func (r *PaymentsResult) sample(s string) {
	if len(r.FailureSamples) < 5 {
		r.FailureSamples = append(r.FailureSamples, s)
	}
}
