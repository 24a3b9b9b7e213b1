-- Notices to Slack and webhooks come from the audit log: every request and grant change is
-- sealed there in the transaction that makes it, so reading the log in seq order misses
-- none. `notice_cursor` is how far it has been read; it moves in the same transaction that
-- queues the notices read, so a crash neither loses nor repeats any. It starts at the end
-- of the log as it stands: history is not announced.
CREATE TABLE notice_cursor (
    id  BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL
);
INSERT INTO notice_cursor (id, seq) SELECT 1, COALESCE(MAX(seq), 0) FROM audit_events;

-- One delivery owed to one target. Notices of a lane (one request's notices to one target:
-- a Slack message and its updates, or a receiver's webhooks) go out in audit order, one at
-- a time. `id` is the webhook-id, the same on every retry, so receivers can drop repeats.
-- `claim` names the attempt under way: only its worker may record how it ended, so one
-- whose lease ran out cannot overwrite the attempt of the replica that took over.
CREATE TABLE notices (
    id            TEXT PRIMARY KEY,
    target        TEXT NOT NULL,
    lane          TEXT NOT NULL,
    event         TEXT NOT NULL,
    audit_seq     BIGINT NOT NULL,
    request_id    TEXT,
    payload       TEXT NOT NULL,
    state         TEXT NOT NULL,
    attempts      BIGINT NOT NULL,
    next_at       BIGINT NOT NULL,
    claimed_until BIGINT NOT NULL,
    claim         TEXT,
    first_tried_at BIGINT,
    last_error    TEXT,
    created_at    BIGINT NOT NULL,
    done_at       BIGINT
);
CREATE INDEX notices_due ON notices (state, next_at);
CREATE INDEX notices_by_lane ON notices (lane, state, audit_seq);
CREATE INDEX notices_by_request ON notices (request_id);
CREATE INDEX notices_by_done ON notices (done_at);

-- The Slack message that announces a request in one place (a target's channel, or an
-- approver's direct messages), kept current with chat.update.
CREATE TABLE slack_messages (
    request_id TEXT NOT NULL,
    place      TEXT NOT NULL,
    channel    TEXT NOT NULL,
    ts         TEXT NOT NULL,
    PRIMARY KEY (request_id, place)
);

-- A chat account proven to belong to a jitgate user: buttons pressed there count as theirs.
CREATE TABLE chat_links (
    provider  TEXT NOT NULL,
    chat_user TEXT NOT NULL,
    user_name TEXT NOT NULL,
    linked_at BIGINT NOT NULL,
    PRIMARY KEY (provider, chat_user)
);
CREATE UNIQUE INDEX chat_links_by_user ON chat_links (provider, user_name);

-- When each user last logged in (a password, an identity provider, or a renewal that asked
-- the provider again): a chat account's presses count only for a user seen lately.
CREATE TABLE user_logins (
    name TEXT PRIMARY KEY,
    at   BIGINT NOT NULL
);
