// Package demo drives the HTTP API with realistic workloads (signups
// submitted more than once, concurrently and in sequence) and audits the
// outcome from the database and the SMTP sink. `runner demo` and the
// integration tests use it.
package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgonce/pgonce/api"
	"github.com/pgonce/pgonce/internal/progress"
)

// Signups is the signup workload: Users users sign up, a share of them more
// than once.
type Signups struct {
	// BaseURL is where requests go, unless Targets is set: then each request
	// (and each retry) goes where it says, as to runners behind a balancer.
	BaseURL string
	Targets func() string
	Token   string // API token; empty for anonymous access
	RunID   string // makes this run's addresses unique: user00001@<RunID>.demo.example

	// Users signing up. Defaults to 2,000.
	Users int
	// DupShare of users submit more than once: half of them in sequence (a
	// retry after the answer), half concurrently (a double-click within
	// milliseconds). Defaults to 1/3.
	DupShare float64
	// Concurrency is the number of users signing up at once. Defaults to 32.
	Concurrency int
	// Seed makes the plan repeatable.
	Seed uint64
	// Spread dispatches the users evenly over this long instead of at once.
	Spread time.Duration
	// Retry resends a request that got no answer or a 5xx (the address is
	// the idempotency key of a signup) until RetryFor has passed.
	RetryFor time.Duration

	Client   *http.Client
	Progress io.Writer

	retried atomic.Int64
}

// SignupResult counts what the clients saw.
type SignupResult struct {
	Requests   int64
	Created    int64 // 201
	Existing   int64 // 200
	Failed     int64 // any other status, or no answer
	Inserted   int64 // welcome_email.duplicate == false
	Duplicates int64 // welcome_email.duplicate == true
	// Retried counts requests resent after no answer or a 5xx.
	Retried int64
	// Answers are the 2xx answers, by user id: the job id each named.
	Answers map[int64][]int64
	// JobMismatches counts users whose answers named more than one job id.
	JobMismatches int64
	// UserMismatches counts users whose answers named more than one user id.
	UserMismatches int64
	// SequentialDups and ConcurrentDups count users of each duplicate pattern.
	SequentialDups, ConcurrentDups int
	FailedSamples                  []string
	Elapsed                        time.Duration
}

// Domain is the email domain of this run's users.
func (s *Signups) Domain() string { return s.RunID + ".demo.example" }

func (s *Signups) defaults() {
	if s.Users <= 0 {
		s.Users = 2000
	}
	if s.DupShare < 0 || s.DupShare > 1 {
		s.DupShare = 1.0 / 3
	}
	if s.Concurrency <= 0 {
		s.Concurrency = 32
	}
	if s.Client == nil {
		s.Client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	}
}

type plan struct {
	email    string
	pattern  int // 0 single, 1 sequential, 2 concurrent
	attempts int
}

// Run sends every signup and waits for every answer.
func (s *Signups) Run(ctx context.Context) (*SignupResult, error) {
	s.defaults()
	rng := rand.New(rand.NewPCG(s.Seed, 7))
	plans := make([]plan, s.Users)
	res := &SignupResult{}
	total := 0
	for i := range plans {
		p := plan{email: fmt.Sprintf("user%05d@%s", i, s.Domain()), attempts: 1}
		if rng.Float64() < s.DupShare {
			p.pattern = 1 + rng.IntN(2)
			p.attempts = 2 + rng.IntN(2)
			if p.pattern == 1 {
				res.SequentialDups++
			} else {
				res.ConcurrentDups++
			}
		}
		total += p.attempts
		plans[i] = p
	}
	bar := progress.New(s.Progress, int64(total), "signups")
	defer bar.Finish()

	var mu sync.Mutex
	work := make(chan plan)
	var wg sync.WaitGroup
	start := time.Now()
	for range s.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				answers := s.signUp(ctx, p, bar)
				mu.Lock()
				res.tally(answers)
				mu.Unlock()
			}
		}()
	}
	var every time.Duration
	if s.Spread > 0 && len(plans) > 0 {
		every = s.Spread / time.Duration(len(plans))
	}
feed:
	for _, p := range plans {
		select {
		case work <- p:
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
	res.Retried = s.retried.Load()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, nil
}

type answer struct {
	status  int
	body    api.CreateUserResponse
	err     string
	retried bool
}

// signUp submits one user's signups per its pattern. Later submissions
// change the address's case: the same user, case-insensitively.
func (s *Signups) signUp(ctx context.Context, p plan, bar *progress.Bar) []answer {
	email := func(i int) string {
		if i%2 == 1 {
			local, domain, _ := strings.Cut(p.email, "@")
			return strings.ToUpper(local) + "@" + domain
		}
		return p.email
	}
	answers := make([]answer, p.attempts)
	switch p.pattern {
	case 2: // concurrent double-submit: all at once, behind a barrier
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for i := range p.attempts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				answers[i] = s.post(ctx, email(i))
				bar.Add(1)
			}()
		}
		close(gate)
		wg.Wait()
	default: // single, or sequential retries
		for i := range p.attempts {
			answers[i] = s.post(ctx, email(i))
			bar.Add(1)
		}
	}
	return answers
}

func (s *Signups) base() string {
	if s.Targets != nil {
		return s.Targets()
	}
	return s.BaseURL
}

// post sends a signup, resending it while it gets no answer or a 5xx and
// RetryFor allows (the retry of a signup whose answer was lost finds the
// user).
func (s *Signups) post(ctx context.Context, email string) answer {
	deadline := time.Now().Add(s.RetryFor)
	for {
		a := s.postOnce(ctx, email)
		if a.status != 0 && a.status < 500 || time.Now().After(deadline) || ctx.Err() != nil {
			return a
		}
		a.retried = true
		s.retried.Add(1)
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *Signups) postOnce(ctx context.Context, email string) answer {
	body, _ := json.Marshal(map[string]string{"email": email, "name": "Demo " + strings.SplitN(email, "@", 2)[0]})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.base()+"/api/users", bytes.NewReader(body))
	if err != nil {
		return answer{err: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	if s.Token != "" {
		req.Header.Set("Authorization", "Bearer "+s.Token)
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		return answer{err: err.Error()}
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode}
	if resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(raw, &a.body); err != nil {
			a.err = "decoding answer: " + err.Error()
		}
	} else {
		a.err = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(raw))
	}
	return a
}

func (r *SignupResult) tally(answers []answer) {
	jobIDs, userIDs := map[int64]bool{}, map[int64]bool{}
	for _, a := range answers {
		r.Requests++
		if a.err != "" {
			r.Failed++
			if len(r.FailedSamples) < 5 {
				r.FailedSamples = append(r.FailedSamples, a.err)
			}
			continue
		}
		if a.status == http.StatusCreated {
			r.Created++
		} else {
			r.Existing++
		}
		if a.body.WelcomeEmail.Duplicate {
			r.Duplicates++
		} else {
			r.Inserted++
		}
		jobIDs[a.body.WelcomeEmail.JobID] = true
		if a.body.User != nil {
			userIDs[a.body.User.ID] = true
			if r.Answers == nil {
				r.Answers = map[int64][]int64{}
			}
			r.Answers[a.body.User.ID] = append(r.Answers[a.body.User.ID], a.body.WelcomeEmail.JobID)
		}
	}
	if len(jobIDs) > 1 {
		r.JobMismatches++
	}
	if len(userIDs) > 1 {
		r.UserMismatches++
	}
}
