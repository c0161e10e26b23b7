-- ferrolabel datastore schema, version 5: the bearer tokens of the auth mode.
--
-- In the database rather than in one server's memory, so that a token issued by one server is
-- accepted by every server on the same database (several servers behind a load balancer), and
-- survives a restart until it expires. Only the SHA-256 of a token is stored, never the token.
-- Roles come from the users file at each request. All times are epoch milliseconds.

CREATE TABLE auth_tokens (
    token_sha256 TEXT    PRIMARY KEY,   -- hex SHA-256 of the bearer token
    username     TEXT    NOT NULL,
    issued_at    INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER                -- set when revoked (refused from then on)
);

-- What the sweep deletes: expired tokens.
CREATE INDEX auth_tokens_expires ON auth_tokens(expires_at);
-- Revoking a user's tokens.
CREATE INDEX auth_tokens_user ON auth_tokens(username);
