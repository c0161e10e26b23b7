-- ferrolabel datastore schema, version 5: the bearer tokens of the auth mode (PostgreSQL
-- dialect of migrations/sqlite/0005_auth_tokens.sql).
--
-- A token issued by one server is accepted by every server on the same database. Only the
-- SHA-256 of a token is stored, never the token. All times are epoch milliseconds.

CREATE TABLE auth_tokens (
    token_sha256 TEXT   PRIMARY KEY,    -- hex SHA-256 of the bearer token
    username     TEXT   NOT NULL,
    issued_at    BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT                 -- set when revoked (refused from then on)
);

CREATE INDEX auth_tokens_expires ON auth_tokens(expires_at);
CREATE INDEX auth_tokens_user ON auth_tokens(username);
