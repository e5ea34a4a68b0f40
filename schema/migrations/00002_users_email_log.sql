-- +goose Up
CREATE TABLE users (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email      text NOT NULL,
    name       text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_format CHECK (email = btrim(email) AND length(email) BETWEEN 3 AND 254 AND strpos(email, '@') > 1),
    CONSTRAINT users_name_length CHECK (length(name) <= 200)
);
-- One user per address whatever its case: Alice@Example.com and alice@example.com are the same user, and so are
-- Émile@ and émile@, ΣΑΣ@ and σας@. lower() under the ICU root collation lowers every script the same way whatever
-- the database's LC_CTYPE (under C, plain lower() lowers ASCII only).
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email COLLATE "und-x-icu"));

COMMENT ON TABLE users IS 'Signed-up users. POST /api/users finds or creates a row here and enqueues its welcome email in the same transaction.';
COMMENT ON COLUMN users.email IS 'Address as first submitted; unique case-insensitively in every script (index users_email_lower_key on lower(email COLLATE "und-x-icu")).';

CREATE TABLE email_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id),
    email_type  text NOT NULL,
    status      text NOT NULL DEFAULT 'queued',
    message_id  text NOT NULL,
    job_id      bigint,
    attempts    integer NOT NULL DEFAULT 0,
    in_doubt    boolean NOT NULL DEFAULT false,
    last_error  text,
    lease_until timestamptz,
    lease_attempt_id bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    CONSTRAINT email_log_user_type_key UNIQUE (user_id, email_type),
    CONSTRAINT email_log_message_id_key UNIQUE (message_id),
    CONSTRAINT email_log_email_type_format CHECK (email_type ~ '^[a-z][a-z0-9_]{0,62}$'),
    CONSTRAINT email_log_status_valid CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    CONSTRAINT email_log_sent_at_iff_sent CHECK ((status = 'sent') = (sent_at IS NOT NULL)),
    CONSTRAINT email_log_attempts_nonnegative CHECK (attempts >= 0),
    CONSTRAINT email_log_lease_whole CHECK ((lease_until IS NULL) = (lease_attempt_id IS NULL))
);

COMMENT ON TABLE email_log IS 'One row per (user, email type): the permanent record that makes an email go out at most once, whatever happens to the jobs. Created in the same transaction as the job that sends it.';
COMMENT ON COLUMN email_log.status IS 'queued: no send attempted yet; sending: attempted, not yet delivered (a retry is due, or the job gave up: see last_error); sent: the SMTP server accepted it (set in the transaction that completed the job); failed: rejected permanently, never retried.';
COMMENT ON COLUMN email_log.message_id IS 'Message-ID header, derived deterministically from (kind, user_id, email_type): every delivery of this email carries it, so a receiver can drop a second copy.';
COMMENT ON COLUMN email_log.job_id IS 'River job (river_job.id) that sends it. No foreign key: River deletes finished jobs after its retention period, this row stays.';
COMMENT ON COLUMN email_log.attempts IS 'SMTP send attempts whose outcome was recorded.';
COMMENT ON COLUMN email_log.lease_until IS 'While set and in the future, the send attempt lease_attempt_id (email_attempts.id) holds the email: it is talking SMTP, and another run of the email waits. A process that dies mid-send leaves the lease to expire.';
COMMENT ON COLUMN email_log.in_doubt IS 'True when a send was made after an attempt whose outcome is unknown (a crash between send and commit, or an SMTP error after the message data was sent): the recipient may hold two copies, both with message_id.';

CREATE TABLE email_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email_log_id bigint NOT NULL REFERENCES email_log (id) ON DELETE CASCADE,
    job_id       bigint NOT NULL,
    job_attempt  integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    outcome      text,
    error        text,
    CONSTRAINT email_attempts_outcome_valid CHECK (outcome IN ('delivered', 'not_sent', 'unknown', 'skipped')),
    CONSTRAINT email_attempts_finished_iff_outcome CHECK ((outcome IS NULL) = (finished_at IS NULL))
);
CREATE INDEX email_attempts_email_log_id_idx ON email_attempts (email_log_id);
CREATE INDEX email_attempts_unresolved_idx ON email_attempts (started_at) WHERE outcome IS NULL;

COMMENT ON TABLE email_attempts IS 'Every send attempt, committed before the SMTP conversation starts. An attempt whose outcome stays NULL ended without recording one (the process died or lost the database between send and commit): it may have delivered the email. These are the in-doubt sends.';
COMMENT ON COLUMN email_attempts.outcome IS 'delivered: accepted by the SMTP server; not_sent: failed before the server could accept it; unknown: failed after the message data was sent; skipped: the email had already been sent by another attempt; NULL: no outcome recorded (in doubt).';

-- +goose Down
DROP TABLE email_attempts;
DROP TABLE email_log;
DROP TABLE users;
