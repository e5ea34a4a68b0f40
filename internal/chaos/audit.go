package chaos

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/internal/demo"
	"github.com/pgonce/pgonce/internal/smtpsink"
)

type auditInput struct {
	pool      *pgxpool.Pool
	sink      *smtpsink.Sink
	gw        *gateway.Server
	signups   *demo.Signups
	signupRes *demo.SignupResult
	payments  *demo.Payments
	payRes    *demo.PaymentsResult
	syncs     *demo.Sync
	syncRes   *demo.SyncResult
	stats     *stats
	badStops  []string
	drainErr  error
	restarts  int
	toggles   int
	elapsed   time.Duration
	cfg       *Config
}

// auditRun builds the report: what the run did, then each invariant with its
// count of violations.
func auditRun(ctx context.Context, in *auditInput) (*demo.Audit, int, error) {
	a := &demo.Audit{Title: "Chaos run"}
	info := func(name, value string) {
		a.Checks = append(a.Checks, demo.Check{Name: name, Value: value, Info: true, OK: true})
	}
	expect0 := func(name string, v int64) {
		a.Checks = append(a.Checks, demo.Check{Name: name, Value: strconv.FormatInt(v, 10), Expected: "0", OK: v == 0})
	}
	st := in.stats
	sinkStats := in.sink.Stats()
	gwStats := in.gw.Stats()

	info("duration", in.elapsed.Round(time.Second).String())
	info("runner processes at once", strconv.Itoa(in.cfg.Runners))
	info("runners killed (SIGKILL) / stopped (SIGTERM)", fmt.Sprintf("%d / %d", st.kills, st.terms))
	info("replacements started", strconv.Itoa(st.replacements))
	info("PostgreSQL restarts (fast shutdown)", strconv.Itoa(in.restarts))
	info("gateway and SMTP faults switched", fmt.Sprintf("%d times", in.toggles))
	info("  SMTP faults injected", fmt.Sprintf("%d temporary, %d dropped after data, %d dropped after accepting",
		sinkStats.FaultsInjected[smtpsink.FaultTempReject], sinkStats.FaultsInjected[smtpsink.FaultDropAfterData],
		sinkStats.FaultsInjected[smtpsink.FaultDropAfterAccept]))
	info("  gateway faults injected", faultList(gwStats.FaultsInjected))
	info("kills inside a job (jobs in flight at SIGKILL)", strconv.Itoa(st.jobsInFlight))
	info("  inside a critical section: send / charge / sync page", fmt.Sprintf("%d / %d / %d", st.sendsInFlight, st.chargesInFlight, st.syncsInFlight))
	info("requests: signups (resent) / payments / sync", fmt.Sprintf("%d (%d) / %d / %d",
		in.signupRes.Requests, in.signupRes.Retried, in.payRes.Requests, in.syncRes.Requests))

	// Jobs.
	var inserted, completed, unfinished, running, failed int64
	err := in.pool.QueryRow(ctx, `
		SELECT count(*), count(*) FILTER (WHERE state = 'completed'),
		       count(*) FILTER (WHERE state NOT IN ('completed', 'discarded', 'cancelled')),
		       count(*) FILTER (WHERE state = 'running'),
		       count(*) FILTER (WHERE state IN ('discarded', 'cancelled'))
		FROM river_job WHERE kind <> 'idempotency_purge'`).Scan(&inserted, &completed, &unfinished, &running, &failed)
	if err != nil {
		return nil, 0, fmt.Errorf("auditing jobs: %w", err)
	}
	info("jobs inserted / completed", fmt.Sprintf("%d / %d", inserted, completed))
	expect0("jobs not finished after the drain (lost)", unfinished)
	expect0("jobs left running", running)
	expect0("jobs discarded or cancelled", failed)
	if in.drainErr != nil {
		expect0("drain errors", 1)
	}
	expect0("runners that did not stop cleanly on SIGTERM", int64(len(in.badStops)))

	// Welcome emails: one per user, whatever happened.
	domain := in.signups.Domain()
	var users, withoutOneSent, inDoubt int64
	err = in.pool.QueryRow(ctx, `
		WITH u AS (SELECT id FROM users WHERE email LIKE '%@' || $1)
		SELECT (SELECT count(*) FROM u),
		       (SELECT count(*) FROM u WHERE (SELECT count(*) FROM email_log l WHERE l.user_id = u.id AND l.status = 'sent') <> 1),
		       (SELECT count(*) FROM email_log WHERE in_doubt AND user_id IN (SELECT id FROM u))`, domain).
		Scan(&users, &withoutOneSent, &inDoubt)
	if err != nil {
		return nil, 0, fmt.Errorf("auditing emails: %w", err)
	}
	inDoubtIDs := map[string]bool{}
	rows, err := in.pool.Query(ctx, `SELECT message_id FROM email_log WHERE in_doubt`)
	if err != nil {
		return nil, 0, err
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, 0, err
		}
		inDoubtIDs[id] = true
	}
	rows.Close()
	idsPerRecipient := map[string]map[string]bool{}
	var unflaggedCopies, extraCopies int64
	for id, n := range sinkStats.PerMessageID {
		if n > 1 {
			extraCopies += int64(n - 1)
			if !inDoubtIDs[id] {
				unflaggedCopies++
			}
		}
	}
	for _, m := range in.sink.Messages() {
		if len(m.To) == 0 || !strings.HasSuffix(strings.ToLower(m.To[0]), "@"+domain) {
			continue
		}
		r := strings.ToLower(m.To[0])
		if idsPerRecipient[r] == nil {
			idsPerRecipient[r] = map[string]bool{}
		}
		idsPerRecipient[r][m.MessageID] = true
	}
	var twoIDs int64
	for _, ids := range idsPerRecipient {
		if len(ids) > 1 {
			twoIDs++
		}
	}
	var wrongAnswers int64
	for userID, jobIDs := range in.signupRes.Answers {
		for _, jobID := range jobIDs {
			var ok bool
			err := in.pool.QueryRow(ctx, `
				SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)
				   AND (EXISTS (SELECT 1 FROM email_log WHERE user_id = $1 AND job_id = $2)
				        OR EXISTS (SELECT 1 FROM river_job WHERE id = $2 AND (args->>'user_id')::bigint = $1))`,
				userID, jobID).Scan(&ok)
			if err != nil {
				return nil, 0, err
			}
			if !ok {
				wrongAnswers++
			}
		}
	}
	info("users signed up / emails sent", fmt.Sprintf("%d / %d", users, int64(len(idsPerRecipient))))
	expect0("users missing", int64(in.cfg.Users)-users)
	expect0("signups without a final answer", in.signupRes.Failed)
	expect0("2xx signup answers not backed by a committed row", wrongAnswers)
	expect0("users answered with two job ids", in.signupRes.JobMismatches)
	expect0("users without exactly one sent email_log row", withoutOneSent)
	expect0("users with no welcome email delivered", users-int64(len(idsPerRecipient)))
	expect0("users delivered two different welcome emails", twoIDs)
	info("extra copies with the same Message-ID (resends in doubt)", fmt.Sprintf("%d (emails in doubt: %d)", extraCopies, inDoubt))
	expect0("extra copies of an email not marked in doubt", unflaggedCopies)

	// Payments and the gateway, and the data sync: the demo's audits, whose
	// invariants hold under chaos too.
	payAudit, err := demo.AuditPayments(ctx, in.pool, in.gw.Ledger(), gwStats, in.payments, in.payRes)
	if err != nil {
		return nil, 0, err
	}
	var answeredMissing int64
	for k, id := range in.payRes.PaymentIDs {
		principal, key, _ := strings.Cut(k, "\x00")
		var ok bool
		if err := in.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM payments WHERE id = $1 AND client_id = $2 AND idempotency_key = $3)`,
			id, principal, key).Scan(&ok); err != nil {
			return nil, 0, err
		}
		if !ok {
			answeredMissing++
		}
	}
	expect0("2xx payment answers not backed by a committed row", answeredMissing)
	syncAudit, err := demo.AuditSync(ctx, in.syncs, in.syncRes)
	if err != nil {
		return nil, 0, err
	}
	for _, sub := range []*demo.Audit{payAudit, syncAudit} {
		for _, c := range sub.Checks {
			if c.Info && strings.Contains(c.Name, "/s") {
				continue // rates under chaos say nothing
			}
			a.Checks = append(a.Checks, c)
		}
	}
	violations := 0
	for _, c := range a.Checks {
		if !c.OK {
			violations += violationCount(c)
		}
	}
	return a, violations, nil
}

// violationCount is how far a failed check is off: the distance between
// its value and what it had to be, and at least 1.
func violationCount(c demo.Check) int {
	v, err := strconv.Atoi(c.Value)
	if err != nil {
		return 1
	}
	want, err := strconv.Atoi(strings.TrimPrefix(c.Expected, "<= "))
	if err != nil {
		return 1
	}
	return max(1, v-want, want-v)
}

func faultList(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range []string{"server_error", "timeout_after_charge", "decline", "rate_limit"} {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	return strings.Join(parts, ", ")
}
