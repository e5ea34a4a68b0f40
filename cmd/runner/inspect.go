package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/olekukonko/tablewriter"

	"github.com/pgonce/pgonce/internal/inspect"
)

func inspectCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("inspect", "Usage:\n"+
		"  runner inspect [flags]              a summary: queues, jobs by state, duplicates, in-doubt emails, stuck payments, keys, sync lag\n"+
		"  runner inspect [flags] job ID       the story of a job: its attempts and errors, and the email / payment / sync it touched\n"+
		"  runner inspect [flags] key KEY      the story of an Idempotency-Key: stored answers, the payment, its jobs and charges")
	fs.SetOutput(stderr)
	databaseURL := fs.string("database-url", "DATABASE_URL", "", "PostgreSQL URL (required)")
	gatewayURL := fs.string("gateway-url", "GATEWAY_URL", "", "also show the gateway's ledger entries of payments (the reference gateway's GET /v1/charges)")
	gatewayToken := fs.string("gateway-token", "GATEWAY_TOKEN", "", "bearer token for the gateway")
	client := fs.string("client", "", "", "key: only this client's (principal's) key")
	asJSON := fs.bool("json", "", false, "print JSON instead of tables")
	var rest []string
	for i := 0; i < len(args); i++ {
		if !strings.HasPrefix(args[i], "-") {
			rest = append(rest, args[i])
			continue
		}
		if err := fs.parse(args[i:]); err != nil {
			return err
		}
		rest = append(rest, fs.Args()...)
		break
	}
	if *databaseURL == "" {
		return fmt.Errorf("%w: set DATABASE_URL or --database-url", errUsage)
	}
	db, err := openDatabase(ctx, *databaseURL, false, func(string, ...any) {})
	if err != nil {
		return err
	}
	defer db.Close()
	opts := &inspect.Options{GatewayURL: strings.TrimRight(*gatewayURL, "/"), GatewayToken: *gatewayToken, Principal: *client}

	var out any
	switch {
	case len(rest) == 0:
		s, err := inspect.LoadSummary(ctx, db.Pool)
		if err != nil {
			return err
		}
		if !*asJSON {
			return printSummary(stdout, s)
		}
		out = s
	case len(rest) == 2 && rest[0] == "job":
		id, err := strconv.ParseInt(rest[1], 10, 64)
		if err != nil || id <= 0 {
			return fmt.Errorf("%w: job ID must be a positive integer", errUsage)
		}
		st, err := inspect.LoadJob(ctx, db.Pool, id, opts)
		if err != nil {
			return notFound(err)
		}
		if !*asJSON {
			return printStory(stdout, st)
		}
		out = st
	case len(rest) == 2 && rest[0] == "key":
		st, err := inspect.LoadKey(ctx, db.Pool, rest[1], opts)
		if err != nil {
			return notFound(err)
		}
		if !*asJSON {
			return printStory(stdout, st)
		}
		out = st
	default:
		fs.Usage()
		return fmt.Errorf("%w: want no argument, job ID or key KEY", errUsage)
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func notFound(err error) error {
	if errors.Is(err, inspect.ErrNotFound) {
		return fmt.Errorf("%w (nothing in the database mentions it)", err)
	}
	return err
}

func table(w io.Writer, title string, header []string, rows [][]string) error {
	fmt.Fprintln(w, title)
	if len(rows) == 0 {
		fmt.Fprintln(w, "  (none)")
		return nil
	}
	t := tablewriter.NewWriter(w)
	h := make([]any, len(header))
	for i, v := range header {
		h[i] = v
	}
	t.Header(h...)
	for _, r := range rows {
		_ = t.Append(r)
	}
	return t.Render()
}

func dur(d *inspect.Duration) string {
	if d == nil {
		return "-"
	}
	return d.String()
}

func str(s *string) string {
	if s == nil {
		return "-"
	}
	return *s
}

func ts(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05.000")
}

func n(v int64) string { return strconv.FormatInt(v, 10) }

func printSummary(w io.Writer, s *inspect.Summary) error {
	var rows [][]string
	for _, q := range s.Queues {
		rows = append(rows, []string{q.Queue, n(q.Available), n(q.Running), n(q.Waiting), dur(q.OldestAvailable), n(q.CompletedLastHour), n(q.FailedLastHour)})
	}
	if err := table(w, "Queues", []string{"queue", "available", "running", "retrying/scheduled", "oldest available", "completed 1h", "failed 1h"}, rows); err != nil {
		return err
	}
	rows = nil
	for _, j := range s.Jobs {
		rows = append(rows, []string{j.Kind, j.Queue, j.State, n(j.Jobs), j.OldestAge.String()})
	}
	if err := table(w, "\nJobs by kind and state", []string{"kind", "queue", "state", "jobs", "oldest"}, rows); err != nil {
		return err
	}
	rows = nil
	for _, d := range s.Duplicates {
		rows = append(rows, []string{d.Kind, n(d.Inserted), n(d.Duplicates)})
	}
	if err := table(w, "\nEnqueues (flushed every 10 s)", []string{"kind", "inserted", "reported duplicate"}, rows); err != nil {
		return err
	}
	rows = [][]string{
		{"failures in the last hour (discarded or cancelled)", n(s.FailedLastHour)},
		{"emails in doubt (ops_emails_in_doubt)", n(s.EmailsInDoubt)},
		{"payments stuck (ops_payments_stuck)", n(s.PaymentsStuck)},
		{"idempotency keys stored / in flight", n(s.KeysStored) + " / " + n(s.KeysInFlight)},
	}
	if err := table(w, "\nAttention", []string{"what", "count"}, rows); err != nil {
		return err
	}
	rows = nil
	for _, r := range s.Sync {
		rows = append(rows, []string{r.Source, dur(r.Lag), strconv.FormatBool(r.Running), str(r.LastError)})
	}
	return table(w, "\nData sync", []string{"source", "lag", "running", "last error"}, rows)
}

func printStory(w io.Writer, st *inspect.Story) error {
	if len(st.Keys) > 0 {
		var rows [][]string
		for _, k := range st.Keys {
			body := string(k.Body)
			if len(body) > 120 {
				body = body[:120] + "..."
			}
			rows = append(rows, []string{k.Principal, k.Method + " " + k.Path, strconv.Itoa(k.ResponseStatus), ts(&k.CreatedAt), ts(&k.ExpiresAt), str(k.RequestID), body})
		}
		if err := table(w, "Stored answers", []string{"client", "request", "status", "stored", "expires", "request id", "body"}, rows); err != nil {
			return err
		}
	}
	for _, p := range st.Payments {
		rows := [][]string{
			{"payment", n(p.ID)}, {"client / key", p.ClientID + " / " + p.IdempotencyKey}, {"order", p.OrderID},
			{"amount", fmt.Sprintf("%d %s", p.AmountMinor, p.Currency)}, {"status", p.Status}, {"gateway key", p.GatewayKey},
			{"charge", str(p.ChargeID)}, {"failure", str(p.FailureCode)}, {"gateway calls", strconv.Itoa(p.Attempts)},
			{"last error", str(p.LastError)}, {"created / finished", ts(&p.CreatedAt) + " / " + ts(p.FinishedAt)},
		}
		if err := table(w, "\nPayment", []string{"field", "value"}, rows); err != nil {
			return err
		}
	}
	if len(st.Charges) > 0 {
		var rows [][]string
		for _, c := range st.Charges {
			rows = append(rows, []string{c.ID, c.Status, c.IdempotencyKey, fmt.Sprintf("%d %s", c.AmountMinor, c.Currency), c.OrderID, ts(&c.Created)})
		}
		if err := table(w, "\nGateway ledger", []string{"charge", "status", "key", "amount", "order", "created"}, rows); err != nil {
			return err
		}
	}
	for _, j := range st.Jobs {
		var reqID string
		var meta map[string]any
		if json.Unmarshal(j.Metadata, &meta) == nil {
			if v, ok := meta["request_id"].(string); ok {
				reqID = v
			}
		}
		rows := [][]string{
			{"job", n(j.ID)}, {"kind / queue", j.Kind + " / " + j.Queue}, {"state", j.State},
			{"attempt", fmt.Sprintf("%d of %d", j.Attempt, j.MaxAttempts)}, {"args", string(j.Args)},
			{"request id", reqID}, {"created", ts(&j.CreatedAt)}, {"last attempted", ts(j.AttemptedAt) + " by " + strings.Join(j.AttemptedBy, ", ")},
			{"finalized", ts(j.FinalizedAt)},
		}
		for _, e := range j.Errors {
			msg := e.Error
			if len(msg) > 160 {
				msg = msg[:160] + "..."
			}
			rows = append(rows, []string{fmt.Sprintf("error, attempt %d", e.Attempt), ts(&e.At) + " " + msg})
		}
		if err := table(w, "\nJob", []string{"field", "value"}, rows); err != nil {
			return err
		}
	}
	for _, e := range st.Emails {
		rows := [][]string{
			{"email", n(e.ID)}, {"to / type", e.Recipient + " / " + e.EmailType}, {"status", e.Status},
			{"Message-ID", e.MessageID}, {"in doubt", strconv.FormatBool(e.InDoubt)}, {"sent", ts(e.SentAt)}, {"last error", str(e.LastError)},
		}
		for _, a := range e.Attempts {
			outcome := str(a.Outcome)
			if a.Outcome == nil {
				outcome = "NO OUTCOME (in doubt)"
			}
			rows = append(rows, []string{fmt.Sprintf("attempt %d (job %d #%d)", a.ID, a.JobID, a.JobAttempt), ts(&a.StartedAt) + " " + outcome + " " + str(a.Error)})
		}
		if err := table(w, "\nEmail", []string{"field", "value"}, rows); err != nil {
			return err
		}
	}
	if st.Sync != nil {
		rows := [][]string{
			{"source", st.Sync.Source}, {"caught up to", ts(st.Sync.CaughtUpTo)}, {"last completed", ts(st.Sync.LastCompletedAt)},
			{"running since", ts(st.Sync.RunStartedAt)}, {"rows written / unchanged", n(st.Sync.RowsApplied) + " / " + n(st.Sync.RowsUnchanged)},
			{"last error", str(st.Sync.LastError)},
		}
		if err := table(w, "\nData sync", []string{"field", "value"}, rows); err != nil {
			return err
		}
	}
	for _, note := range st.Notes {
		fmt.Fprintln(w, "note:", note)
	}
	return nil
}
