-- Portable DDL: the same statements run on SQLite and PostgreSQL. Times are integer
-- milliseconds since the Unix epoch; lists are JSON text.

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    groups        TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    disabled      BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL
);

CREATE TABLE requests (
    id                 TEXT PRIMARY KEY,
    profile            TEXT NOT NULL,
    requester          TEXT NOT NULL,
    requester_groups   TEXT NOT NULL,
    reason             TEXT NOT NULL,
    duration_ms        BIGINT NOT NULL,
    state              TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    pending_until      BIGINT NOT NULL,
    approvals          TEXT NOT NULL,
    approvals_required BIGINT NOT NULL,
    decided_at         BIGINT,
    decided_by         TEXT,
    decision_reason    TEXT,
    grant_id           TEXT,
    version            BIGINT NOT NULL
);
CREATE INDEX requests_by_state ON requests (state, pending_until);
CREATE INDEX requests_by_created ON requests (created_at);

CREATE TABLE grants (
    id          TEXT PRIMARY KEY,
    request_id  TEXT NOT NULL,
    profile     TEXT NOT NULL,
    holder      TEXT NOT NULL,
    groups      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    ended_by    TEXT,
    end_reason  TEXT,
    version     BIGINT NOT NULL
);
CREATE INDEX grants_by_state ON grants (state, expires_at);
CREATE INDEX grants_by_holder ON grants (holder);

CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

CREATE TABLE audit_events (
    seq        BIGINT PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    request_id TEXT,
    grant_id   TEXT,
    reason     TEXT,
    details    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_by_grant ON audit_events (grant_id);
CREATE INDEX audit_by_request ON audit_events (request_id);
CREATE INDEX audit_by_time ON audit_events (at);
