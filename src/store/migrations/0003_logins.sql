-- Browser sessions. The cookie carries a random secret; only its SHA-256 is stored, so a copy
-- of the database opens no session.
CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL,
    email      TEXT,
    groups     TEXT NOT NULL,
    idp        TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ended_at   BIGINT
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

-- One-time values of the login flows (used states, CLI login codes, device logins), each
-- taken at most once and gone after its expiry.
CREATE TABLE login_flows (
    key        TEXT PRIMARY KEY,
    payload    TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX login_flows_by_expiry ON login_flows (expires_at);
