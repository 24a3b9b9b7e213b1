-- The newest event's seq and hash, written in the same transaction as each append, so that
-- cutting events off the end of the chain is detected too.
CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY,
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
    SELECT 1, seq, hash FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events);
