package demo

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/olekukonko/tablewriter"

	"github.com/pgonce/pgonce/internal/progress"
	"github.com/pgonce/pgonce/internal/smtpsink"
)

// Check is one line of an audit: a figure, what it must be, and whether it
// is. Info lines have no expectation.
type Check struct {
	Name     string
	Value    string
	Expected string
	OK       bool
	Info     bool
}

// Audit is a list of checks.
type Audit struct {
	Title  string
	Checks []Check
}

func (a *Audit) expect(name string, value, expected int64) {
	a.Checks = append(a.Checks, Check{Name: name, Value: strconv.FormatInt(value, 10), Expected: strconv.FormatInt(expected, 10), OK: value == expected})
}

func (a *Audit) expectAtMost(name string, value, bound int64) {
	a.Checks = append(a.Checks, Check{Name: name, Value: strconv.FormatInt(value, 10), Expected: "<= " + strconv.FormatInt(bound, 10), OK: value <= bound})
}

func (a *Audit) info(name, value string) {
	a.Checks = append(a.Checks, Check{Name: name, Value: value, Info: true, OK: true})
}

// Failed reports whether any check failed.
func (a *Audit) Failed() []Check {
	var failed []Check
	for _, c := range a.Checks {
		if !c.OK {
			failed = append(failed, c)
		}
	}
	return failed
}

// Print writes the audit as a table.
func (a *Audit) Print(w io.Writer) error {
	if a.Title != "" {
		fmt.Fprintln(w, a.Title)
	}
	t := tablewriter.NewWriter(w)
	t.Header("check", "value", "expected", "ok")
	for _, c := range a.Checks {
		ok := "ok"
		switch {
		case c.Info:
			ok = ""
		case !c.OK:
			ok = "FAIL"
		}
		_ = t.Append(c.Name, c.Value, c.Expected, ok)
	}
	return t.Render()
}

// runUsers selects the users of a run by their email domain.
const runUsers = `SELECT id FROM users WHERE email LIKE '%@' || $1`

// WaitForWelcomeEmails waits until every welcome email job of the run's
// users is finished (completed, discarded or cancelled) and there are at
// least users of them, showing progress on w.
func WaitForWelcomeEmails(ctx context.Context, pool *pgxpool.Pool, domain string, users int, w io.Writer) error {
	bar := progress.New(w, int64(users), "delivering")
	defer bar.Finish()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var finished, total int64
		err := pool.QueryRow(ctx, `
			SELECT count(*) FILTER (WHERE state IN ('completed', 'discarded', 'cancelled')), count(*)
			FROM river_job
			WHERE kind = 'welcome_email' AND (args->>'user_id')::bigint IN (`+runUsers+`)`, domain).Scan(&finished, &total)
		if err == nil {
			bar.Set(finished)
			if finished == total && total >= int64(users) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for welcome emails: %d of %d finished: %w", finished, users, ctx.Err())
		case <-tick.C:
		}
	}
}

// AuditSignups checks the signup run against the database and the sink:
// every user exactly one welcome email, no job lost, every duplicate
// submission reported as such.
func AuditSignups(ctx context.Context, pool *pgxpool.Pool, sink *smtpsink.Sink, s *Signups, res *SignupResult) (*Audit, error) {
	a := &Audit{Title: "Signup audit"}
	domain := s.Domain()
	n := int64(s.Users)

	var users, emailRows, sent, inDoubt, attempts, notSent int64
	var jobsCompleted, jobsFailed, jobsUnfinished int64
	var throughputJobs int64
	var span, p50, p99 float64
	err := pool.QueryRow(ctx, `
		WITH u AS (`+runUsers+`),
		     j AS (SELECT * FROM river_job WHERE kind = 'welcome_email' AND (args->>'user_id')::bigint IN (SELECT id FROM u)),
		     l AS (SELECT * FROM email_log WHERE user_id IN (SELECT id FROM u))
		SELECT (SELECT count(*) FROM u),
		       (SELECT count(*) FROM l),
		       (SELECT count(*) FROM l WHERE status = 'sent'),
		       (SELECT count(*) FROM l WHERE in_doubt),
		       (SELECT count(*) FROM email_attempts WHERE email_log_id IN (SELECT id FROM l)),
		       (SELECT count(*) FROM email_attempts WHERE email_log_id IN (SELECT id FROM l) AND outcome = 'not_sent'),
		       (SELECT count(*) FROM j WHERE state = 'completed'),
		       (SELECT count(*) FROM j WHERE state IN ('discarded', 'cancelled')),
		       (SELECT count(*) FROM j WHERE state NOT IN ('completed', 'discarded', 'cancelled')),
		       (SELECT count(*) FROM j WHERE state = 'completed'),
		       coalesce((SELECT extract(epoch FROM max(finalized_at) - min(created_at)) FROM j WHERE state = 'completed'), 0)::float8,
		       coalesce((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at)) FROM l WHERE sent_at IS NOT NULL), 0)::float8,
		       coalesce((SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at)) FROM l WHERE sent_at IS NOT NULL), 0)::float8`,
		domain).Scan(&users, &emailRows, &sent, &inDoubt, &attempts, &notSent,
		&jobsCompleted, &jobsFailed, &jobsUnfinished, &throughputJobs, &span, &p50, &p99)
	if err != nil {
		return nil, fmt.Errorf("auditing: %w", err)
	}

	// What the sink received for this run, and whether each Message-ID is
	// the one email_log recorded for that recipient.
	expectedIDs := map[string]bool{} // Message-ID -> marked in doubt
	rows, err := pool.Query(ctx, `SELECT message_id, in_doubt FROM email_log WHERE user_id IN (`+runUsers+`)`, domain)
	if err != nil {
		return nil, fmt.Errorf("auditing: %w", err)
	}
	for rows.Next() {
		var id string
		var doubt bool
		if err := rows.Scan(&id, &doubt); err != nil {
			rows.Close()
			return nil, err
		}
		expectedIDs[id] = doubt
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var delivered, unknownIDs int64
	perID := map[string]int64{}
	for _, m := range sink.Messages() {
		if len(m.To) == 0 || !strings.HasSuffix(strings.ToLower(m.To[0]), "@"+domain) {
			continue
		}
		delivered++
		perID[m.MessageID]++
		if _, known := expectedIDs[m.MessageID]; !known {
			unknownIDs++
		}
	}
	var extraCopies, unflaggedDuplicates int64
	for id, c := range perID {
		extraCopies += c - 1
		if c > 1 && !expectedIDs[id] {
			unflaggedDuplicates++
		}
	}
	stats := sink.Stats()

	reqs := res.Requests
	a.info("users signing up", strconv.FormatInt(n, 10))
	a.info("  of them submitting twice or more", fmt.Sprintf("%d in sequence, %d at once", res.SequentialDups, res.ConcurrentDups))
	a.info("signup requests sent", strconv.FormatInt(reqs, 10))
	a.expect("requests failed", res.Failed, 0)
	a.expect("users in database", users, n)
	a.expect("answers 201 created", res.Created, n)
	a.expect("answers 200 existing user", res.Existing, reqs-n)
	a.expect("jobs inserted", res.Inserted, n)
	a.expect("reported duplicate (with the job id)", res.Duplicates, reqs-n)
	a.expect("users answered with two job ids", res.JobMismatches, 0)
	a.expect("jobs completed", jobsCompleted, n)
	a.expect("jobs discarded or cancelled", jobsFailed, 0)
	a.expect("jobs not finished", jobsUnfinished, 0)
	a.expect("email_log rows", emailRows, n)
	a.expect("email_log rows sent", sent, n)
	a.info("SMTP messages received", strconv.FormatInt(delivered, 10))
	a.expect("distinct Message-IDs", int64(len(perID)), n)
	a.expect("Message-IDs not in email_log", unknownIDs, 0)
	// Without crashes, a second copy can only follow an answer the sink
	// dropped after taking the data.
	a.expectAtMost("extra copies delivered (same Message-ID)", extraCopies, int64(stats.FaultsInjected[smtpsink.FaultDropAfterData]))
	a.info("emails in doubt (email_log.in_doubt)", strconv.FormatInt(inDoubt, 10))
	a.expect("emails delivered twice but not marked in doubt", unflaggedDuplicates, 0)
	a.info("SMTP temporary rejections injected", strconv.Itoa(stats.FaultsInjected[smtpsink.FaultTempReject]))
	a.info("SMTP drops after data injected", strconv.Itoa(stats.FaultsInjected[smtpsink.FaultDropAfterData]))
	a.info("send attempts", strconv.FormatInt(attempts, 10))
	a.info("  of them failed and retried", strconv.FormatInt(notSent, 10))
	a.info("signup requests/s", fmt.Sprintf("%.0f", float64(reqs)/res.Elapsed.Seconds()))
	if span > 0 {
		a.info("welcome emails/s (first enqueue to last send)", fmt.Sprintf("%.0f", float64(throughputJobs)/span))
	}
	a.info("enqueue to sent, p50 / p99", fmt.Sprintf("%.1f ms / %.1f ms", p50*1000, p99*1000))
	return a, nil
}
