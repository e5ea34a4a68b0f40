-- +goose Up
CREATE TABLE payments (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id       text NOT NULL,
    idempotency_key text NOT NULL,
    gateway_key     text NOT NULL,
    order_id        text NOT NULL,
    amount_minor    bigint NOT NULL,
    currency        text NOT NULL,
    description     text NOT NULL DEFAULT '',
    status          text NOT NULL DEFAULT 'pending',
    charge_id       text,
    failure_code    text,
    failure_message text,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    job_id          bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT payments_client_key UNIQUE (client_id, idempotency_key),
    CONSTRAINT payments_gateway_key UNIQUE (gateway_key),
    CONSTRAINT payments_key_length CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    CONSTRAINT payments_order_id_format CHECK (order_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    CONSTRAINT payments_amount_positive CHECK (amount_minor > 0),
    CONSTRAINT payments_currency_iso CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT payments_status_valid CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    CONSTRAINT payments_charge_iff_completed CHECK ((status = 'completed') = (charge_id IS NOT NULL)),
    CONSTRAINT payments_failure_iff_failed CHECK ((status = 'failed') = (failure_code IS NOT NULL)),
    CONSTRAINT payments_finished_iff_terminal CHECK ((status IN ('completed', 'failed')) = (finished_at IS NOT NULL)),
    CONSTRAINT payments_attempts_nonnegative CHECK (attempts >= 0)
);
-- At most one payment per order that is not failed: a new key cannot charge an order twice.
CREATE UNIQUE INDEX payments_one_live_per_order ON payments (client_id, order_id) WHERE status <> 'failed';
CREATE INDEX payments_processing_idx ON payments (updated_at) WHERE status IN ('pending', 'processing');

COMMENT ON TABLE payments IS 'One row per payment a client asked for. The permanent record of (client, Idempotency-Key): it outlives the key''s cached response (idempotency_keys), so a key can never charge twice.';
COMMENT ON COLUMN payments.client_id IS 'The authenticated API principal that created the payment; keys and orders are scoped by it.';
COMMENT ON COLUMN payments.idempotency_key IS 'The Idempotency-Key header of the request that created it.';
COMMENT ON COLUMN payments.gateway_key IS 'Idempotency-Key sent to the payment gateway on every attempt, derived from (client_id, idempotency_key): a retried charge is recognised by the gateway and not made twice.';
COMMENT ON COLUMN payments.amount_minor IS 'Amount in the currency''s minor unit (cents), > 0.';
COMMENT ON COLUMN payments.status IS 'pending: accepted, no gateway call yet; processing: a gateway call is under way or its outcome was not final (a retry is due, or the job gave up: see last_error); completed: charged (charge_id); failed: declined (failure_code). completed and failed are final (trigger payments_status_guard).';
COMMENT ON COLUMN payments.attempts IS 'Gateway calls started (counted just before each call, so a call whose answer was lost still counts).';
COMMENT ON COLUMN payments.job_id IS 'River job (river_job.id) that processes it. No foreign key: River deletes finished jobs after its retention period.';

-- The status machine, enforced by the database: pending -> processing -> completed | failed (processing may
-- be skipped), final states never change, and what was asked for never changes.
-- +goose StatementBegin
CREATE FUNCTION payments_status_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.client_id, NEW.idempotency_key, NEW.gateway_key, NEW.order_id, NEW.amount_minor, NEW.currency)
       IS DISTINCT FROM (OLD.client_id, OLD.idempotency_key, OLD.gateway_key, OLD.order_id, OLD.amount_minor, OLD.currency) THEN
        RAISE EXCEPTION 'payment %: what was asked for (client, key, order, amount, currency) never changes', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status IN ('completed', 'failed') AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'payment %: status % is final, cannot become %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status = 'processing' AND NEW.status = 'pending' THEN
        RAISE EXCEPTION 'payment %: cannot go back from processing to pending', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
-- +goose StatementEnd
CREATE TRIGGER payments_status_guard BEFORE UPDATE ON payments FOR EACH ROW EXECUTE FUNCTION payments_status_guard();

CREATE TABLE idempotency_keys (
    principal        text NOT NULL,
    key              text NOT NULL,
    method           text NOT NULL,
    path             text NOT NULL,
    fingerprint      bytea NOT NULL,
    response_status  integer NOT NULL,
    response_headers jsonb NOT NULL DEFAULT '{}',
    response_body    bytea NOT NULL,
    request_id       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (principal, key),
    CONSTRAINT idempotency_keys_key_length CHECK (length(key) BETWEEN 1 AND 255),
    CONSTRAINT idempotency_keys_stored_status CHECK (response_status BETWEEN 200 AND 399),
    CONSTRAINT idempotency_keys_fingerprint_sha256 CHECK (length(fingerprint) = 32),
    CONSTRAINT idempotency_keys_expires_after_created CHECK (expires_at > created_at)
);
CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);

COMMENT ON TABLE idempotency_keys IS 'Responses stored for Idempotency-Key requests, replayed byte for byte to a retry with the same key and the same request. A row exists only once its request committed: a request in flight holds a transaction-scoped advisory lock instead (pg_locks, locktype advisory, classid 1768187245, objsubid 2). Only 2xx/3xx responses are stored; errors are not, so a retry runs afresh. Expired rows are deleted by the idempotency_purge periodic job.';
COMMENT ON COLUMN idempotency_keys.principal IS 'The authenticated API client: a key is only ever seen by the client that sent it.';
COMMENT ON COLUMN idempotency_keys.fingerprint IS 'SHA-256 of method, path, query and the canonical JSON body (key order and whitespace do not matter). The same key with another fingerprint is refused (422).';
COMMENT ON COLUMN idempotency_keys.response_headers IS 'The headers replayed with the body (Content-Type, Location, ...).';

-- +goose Down
DROP TABLE idempotency_keys;
DROP TABLE payments;
DROP FUNCTION payments_status_guard();
