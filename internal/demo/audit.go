package demo

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/olekukonko/tablewriter"

	"github.com/pgonce/pgonce/gateway"
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
	a.info("SMTP drops after accepting injected", strconv.Itoa(stats.FaultsInjected[smtpsink.FaultDropAfterAccept]))
	a.info("send attempts", strconv.FormatInt(attempts, 10))
	a.info("  of them failed and retried", strconv.FormatInt(notSent, 10))
	a.info("signup requests/s", fmt.Sprintf("%.0f", float64(reqs)/res.Elapsed.Seconds()))
	if span > 0 {
		a.info("welcome emails/s (first enqueue to last send)", fmt.Sprintf("%.0f", float64(throughputJobs)/span))
	}
	a.info("enqueue to sent, p50 / p99", fmt.Sprintf("%.1f ms / %.1f ms", p50*1000, p99*1000))
	return a, nil
}

// WaitForPayments waits until every payment of the run is final (completed
// or failed) or its job is finished, showing progress on w.
func WaitForPayments(ctx context.Context, pool *pgxpool.Pool, runID string, payments int, w io.Writer) error {
	bar := progress.New(w, int64(payments), "charging")
	defer bar.Finish()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var final, total int64
		err := pool.QueryRow(ctx, `
			SELECT count(*) FILTER (WHERE p.status IN ('completed', 'failed')
			                         OR j.state IN ('discarded', 'cancelled')), count(*)
			FROM payments p LEFT JOIN river_job j ON j.id = p.job_id
			WHERE p.order_id LIKE $1 || '-%'`, runID).Scan(&final, &total)
		if err == nil {
			bar.Set(final)
			if final == total && total >= int64(payments) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for payments: %d of %d final: %w", final, payments, ctx.Err())
		case <-tick.C:
		}
	}
}

// AuditPayments checks the payment run against the database, the answers
// the clients got and the gateway's ledger: one payment per key, one charge
// per payment, never a second charge for an order.
func AuditPayments(ctx context.Context, pool *pgxpool.Pool, ledger []gateway.Charge, gw gateway.Stats, p *Payments, res *PaymentsResult) (*Audit, error) {
	a := &Audit{Title: "Payment audit"}
	n := int64(len(res.Plans))

	type row struct {
		id                 int64
		client, key, gwKey string
		order, currency    string
		amount             int64
		status             string
		chargeID           *string
		attempts           int
	}
	rows, err := pool.Query(ctx, `
		SELECT id, client_id, idempotency_key, gateway_key, order_id, currency, amount_minor, status, charge_id, attempts
		FROM payments WHERE order_id LIKE $1 || '-%'`, p.RunID)
	if err != nil {
		return nil, fmt.Errorf("auditing payments: %w", err)
	}
	var payments []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.id, &r.client, &r.key, &r.gwKey, &r.order, &r.currency, &r.amount, &r.status, &r.chargeID, &r.attempts); err != nil {
			rows.Close()
			return nil, err
		}
		payments = append(payments, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}

	perKey := map[string]int{}
	byGatewayKey := map[string]row{}
	var completed, failed, stuck, attempts int64
	for _, r := range payments {
		perKey[r.client+"\x00"+r.key]++
		byGatewayKey[r.gwKey] = r
		attempts += int64(r.attempts)
		switch r.status {
		case "completed":
			completed++
		case "failed":
			failed++
		default:
			stuck++
		}
	}
	var keysWithTwo int64
	for _, c := range perKey {
		if c > 1 {
			keysWithTwo++
		}
	}
	// Answers must name the payment stored under the key.
	var wrongPayment int64
	for k, id := range res.PaymentIDs {
		found := false
		for _, r := range payments {
			if r.client+"\x00"+r.key == k && r.id == id {
				found = true
				break
			}
		}
		if !found {
			wrongPayment++
		}
	}

	// The gateway's ledger, restricted to this run's payments.
	chargesPerKey, chargesPerOrder := map[string]int{}, map[string]int{}
	var charges, declines, orphanCharges, mismatchedCharges int64
	for _, c := range ledger {
		r, ours := byGatewayKey[c.IdempotencyKey]
		if !ours {
			continue
		}
		if c.Status != gateway.StatusSucceeded {
			declines++
			continue
		}
		charges++
		chargesPerKey[c.IdempotencyKey]++
		chargesPerOrder[r.client+"\x00"+c.OrderID]++
		if r.status != "completed" || r.chargeID == nil || *r.chargeID != c.ID {
			orphanCharges++
		}
		if c.AmountMinor != r.amount || c.Currency != r.currency || c.OrderID != r.order {
			mismatchedCharges++
		}
	}
	var secondCharges, keysCharged2 int64
	for _, c := range chargesPerOrder {
		if c > 1 {
			secondCharges++
		}
	}
	for _, c := range chargesPerKey {
		if c > 1 {
			keysCharged2++
		}
	}
	var completedWithoutCharge int64
	for _, r := range payments {
		if r.status == "completed" && chargesPerKey[r.gwKey] != 1 {
			completedWithoutCharge++
		}
	}

	a.info("payments submitted (keys)", strconv.FormatInt(n, 10))
	a.info("payment requests sent", strconv.FormatInt(res.Requests, 10))
	a.expect("payments in database", int64(len(payments)), n)
	a.expect("keys with two payments", keysWithTwo, 0)
	a.expect("keys without a final 2xx answer", res.NoFinalAnswer, 0)
	a.expect("keys answered twice as new (no Idempotent-Replayed)", res.TwoFirstAnswers, 0)
	a.expect("first answers (202) + first answers lost to a client cut-off", res.Accepted+res.OnlyReplayed, n)
	a.expect("keys answered with two payment ids", res.PaymentMismatch, 0)
	a.expect("answers naming another payment", wrongPayment, 0)
	a.info("replays (Idempotent-Replayed)", strconv.FormatInt(res.Replays, 10))
	a.expect("replays differing from the first answer", res.ReplayMismatch, 0)
	a.info("409 key in flight (retried)", strconv.FormatInt(res.InFlight409, 10))
	a.expect("422 key reused with another amount", res.Reused422, res.ReuseAttempts)
	a.info("client timeouts (retried with the same key)", strconv.FormatInt(res.ClientTimeouts, 10))
	if p.ExpectOutages {
		a.info("requests without an answer / 503 (retried)", fmt.Sprintf("%d / %d", res.Unanswered, res.Unavailable503))
		a.expect("requests failed otherwise (4xx/5xx not due)", res.OtherFailures, 0)
	} else {
		a.expect("other failed requests", res.OtherFailures+res.Unavailable503+res.Unanswered, 0)
	}
	a.expect("payments completed + declined", completed+failed, n)
	a.expect("payments stuck (pending/processing)", stuck, 0)
	a.expect("gateway charges", charges, completed)
	a.expect("gateway keys charged twice", keysCharged2, 0)
	a.expect("orders charged twice", secondCharges, 0)
	a.expect("charges without their completed payment", orphanCharges, 0)
	a.expect("completed payments without exactly one charge", completedWithoutCharge, 0)
	a.expect("charges with another amount/currency/order", mismatchedCharges, 0)
	a.info("declines (final, not retried)", strconv.FormatInt(declines, 10))
	a.info("gateway calls recorded (payments.attempts)", strconv.FormatInt(attempts, 10))
	a.info("gateway: requests / replays of a key", fmt.Sprintf("%d / %d", gw.Requests, gw.Replays))
	a.info("gateway faults injected", faultSummary(gw.FaultsInjected))
	a.info("payment requests/s", fmt.Sprintf("%.0f", float64(res.Requests)/res.Elapsed.Seconds()))
	return a, nil
}

func faultSummary(m map[string]int) string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	var parts []string
	for _, k := range names {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
