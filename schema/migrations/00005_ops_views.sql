-- +goose Up
-- Counts of enqueues per runner, kind and minute, flushed by each runner every few seconds (off the enqueue
-- path). Duplicates are not rows anywhere else: River answers them from the existing job.
CREATE TABLE ops_enqueue_counts (
    runner_id  text NOT NULL,
    kind       text NOT NULL,
    minute     timestamptz NOT NULL,
    inserted   bigint NOT NULL DEFAULT 0,
    duplicates bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (runner_id, kind, minute),
    CONSTRAINT ops_enqueue_counts_nonnegative CHECK (inserted >= 0 AND duplicates >= 0)
);
COMMENT ON TABLE ops_enqueue_counts IS 'Enqueues per runner process, job kind and minute: jobs inserted and enqueues reported as duplicates. Flushed by each runner every few seconds and at shutdown; a process killed with SIGKILL loses its last seconds of counts.';

CREATE VIEW ops_jobs AS
SELECT kind, queue, state::text AS state, count(*) AS jobs,
       min(created_at) AS oldest_created_at,
       now() - min(created_at) AS oldest_age,
       min(scheduled_at) FILTER (WHERE state IN ('available', 'retryable', 'scheduled')) AS next_scheduled_at,
       max(attempt) AS max_attempt
FROM river_job
GROUP BY kind, queue, state;
COMMENT ON VIEW ops_jobs IS 'Jobs by kind, queue and state, with the age of the oldest. Completed jobs stay until River''s retention deletes them (24 h by default).';

CREATE VIEW ops_queues AS
SELECT queue,
       count(*) FILTER (WHERE state = 'available') AS available,
       count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state IN ('retryable', 'scheduled')) AS waiting,
       now() - min(scheduled_at) FILTER (WHERE state = 'available') AS oldest_available_age,
       count(*) FILTER (WHERE state IN ('discarded', 'cancelled') AND finalized_at > now() - interval '1 hour') AS failed_last_hour,
       count(*) FILTER (WHERE state = 'completed' AND finalized_at > now() - interval '1 hour') AS completed_last_hour
FROM river_job
GROUP BY queue;
COMMENT ON VIEW ops_queues IS 'Per queue: depth, the age of the oldest available job (how far behind the workers are), and jobs completed and failed (discarded or cancelled) in the last hour.';

CREATE VIEW ops_duplicates AS
SELECT kind, sum(inserted) AS inserted, sum(duplicates) AS duplicates,
       round(100.0 * sum(duplicates) / nullif(sum(inserted) + sum(duplicates), 0), 1) AS duplicate_pct,
       sum(duplicates) FILTER (WHERE minute > now() - interval '1 hour') AS duplicates_last_hour,
       max(minute) AS last_minute
FROM ops_enqueue_counts
GROUP BY kind;
COMMENT ON VIEW ops_duplicates IS 'Enqueues reported as duplicates, per job kind, all time and in the last hour.';

CREATE VIEW ops_emails_in_doubt AS
SELECT l.id AS email_log_id, u.email AS recipient, l.email_type, l.message_id, l.status, l.in_doubt, l.attempts,
       a.id AS attempt_id, a.job_id, a.job_attempt, a.started_at, a.outcome,
       CASE WHEN a.outcome IS NULL THEN 'send without a recorded outcome'
            WHEN a.outcome = 'unknown' THEN 'send outcome unknown'
            ELSE 'delivered after an attempt of unknown outcome' END AS why
FROM email_log l
JOIN users u ON u.id = l.user_id
LEFT JOIN email_attempts a ON a.email_log_id = l.id
     AND (a.outcome IS NULL AND a.started_at < now() - interval '1 minute' OR a.outcome = 'unknown')
WHERE l.in_doubt OR a.id IS NOT NULL;
COMMENT ON VIEW ops_emails_in_doubt IS 'Emails that may have been delivered more than once (same Message-ID) or whose last send has no recorded outcome: a process died between the SMTP send and its commit, or the server''s answer to the message data was lost.';

CREATE VIEW ops_payments_stuck AS
SELECT p.id, p.client_id, p.order_id, p.amount_minor, p.currency, p.status, p.attempts, p.last_error,
       p.created_at, p.updated_at, now() - p.updated_at AS stuck_for, p.job_id, j.state::text AS job_state
FROM payments p
LEFT JOIN river_job j ON j.id = p.job_id
WHERE p.status IN ('pending', 'processing')
  AND (p.updated_at < now() - interval '5 minutes' OR j.id IS NULL OR j.state IN ('discarded', 'cancelled'));
COMMENT ON VIEW ops_payments_stuck IS 'Payments not final for 5 minutes, or whose job is gone, discarded or cancelled: an operator retries the job (POST /api/jobs/{id}/retry) or investigates; the gateway key makes any retry safe.';

CREATE VIEW ops_idempotency_keys AS
SELECT 'stored'::text AS state, principal, key, method, path, response_status, created_at, expires_at,
       expires_at - now() AS expires_in
FROM idempotency_keys
UNION ALL
SELECT 'in flight', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM pg_locks
WHERE locktype = 'advisory' AND classid = 1768187245 AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database());
COMMENT ON VIEW ops_idempotency_keys IS 'Stored Idempotency-Key answers with their expiry, and one row per request in flight (a transaction-scoped advisory lock; the key itself is not known until its transaction commits).';

CREATE VIEW ops_sync_lag AS
SELECT source, now() - caught_up_to AS lag, caught_up_to, last_completed_at,
       run_started_at IS NOT NULL AS running, run_pages, run_rows,
       last_error, last_error_at, pages, rows_applied, rows_unchanged
FROM sync_cursors;
COMMENT ON VIEW ops_sync_lag IS 'Per data source: how far behind the source the destination may be (now - caught_up_to), the sync in progress, and the last error.';

-- +goose Down
DROP VIEW ops_sync_lag;
DROP VIEW ops_idempotency_keys;
DROP VIEW ops_payments_stuck;
DROP VIEW ops_emails_in_doubt;
DROP VIEW ops_duplicates;
DROP VIEW ops_queues;
DROP VIEW ops_jobs;
DROP TABLE ops_enqueue_counts;
