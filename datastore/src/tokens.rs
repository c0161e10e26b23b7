//! The bearer tokens of the auth mode (migration `0005_auth_tokens`), in the database so that
//! every server on it accepts a token any of them issued, and a restart logs nobody out.
//!
//! Only the SHA-256 of a token is stored (hex): the functions here take the token and hash it,
//! so a database dump holds no usable token. A token is live from its issue until its expiry,
//! unless revoked. Times are integer milliseconds since the Unix epoch, passed in by the caller.

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::error::{DatastoreError, Result};
use crate::store::Datastore;

/// What the table holds about one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Whose token it is.
    pub username: String,
    /// When it was issued (ms).
    pub issued_at: i64,
    /// When it expires (ms).
    pub expires_at: i64,
}

/// The hex SHA-256 of `token`, the table's key.
fn key(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Datastore {
    /// Records `token` (by its SHA-256) for `username`, live from `now_ms` until `expires_ms`.
    /// A token already recorded is [`DatastoreError::Conflict`]; an empty token or user name, or
    /// an expiry not after `now_ms`, is [`DatastoreError::Invalid`].
    pub async fn insert_token(
        &self,
        token: &str,
        username: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<()> {
        if token.is_empty() || username.is_empty() || expires_ms <= now_ms {
            return Err(DatastoreError::Invalid(format!(
                "token for {username:?} expiring at {expires_ms} (now {now_ms})"
            )));
        }
        sqlx::query(
            "INSERT INTO auth_tokens (token_sha256, username, issued_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(key(token))
        .bind(username)
        .bind(now_ms)
        .bind(expires_ms)
        .execute(self.pool())
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                DatastoreError::Conflict("token exists".into())
            }
            e => DatastoreError::Db(e),
        })?;
        Ok(())
    }

    /// The live token `token` at `now_ms` (issued, not expired, not revoked), or `None`.
    pub async fn token(&self, token: &str, now_ms: i64) -> Result<Option<TokenInfo>> {
        let row = sqlx::query(
            "SELECT username, issued_at, expires_at FROM auth_tokens \
             WHERE token_sha256 = $1 AND expires_at > $2 AND revoked_at IS NULL",
        )
        .bind(key(token))
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(TokenInfo {
                username: r.try_get("username")?,
                issued_at: r.try_get("issued_at")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    /// Revokes `token` (refused from now on); whether it was live.
    pub async fn revoke_token(&self, token: &str, now_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE auth_tokens SET revoked_at = $1 \
             WHERE token_sha256 = $2 AND revoked_at IS NULL AND expires_at > $1",
        )
        .bind(now_ms)
        .bind(key(token))
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Revokes every live token of `username`; how many.
    pub async fn revoke_user_tokens(&self, username: &str, now_ms: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE auth_tokens SET revoked_at = $1 \
             WHERE username = $2 AND revoked_at IS NULL AND expires_at > $1",
        )
        .bind(now_ms)
        .bind(username)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Deletes the tokens that expired or were revoked by `now_ms`; how many.
    pub async fn purge_tokens(&self, now_ms: i64) -> Result<u64> {
        let done =
            sqlx::query("DELETE FROM auth_tokens WHERE expires_at <= $1 OR revoked_at IS NOT NULL")
                .bind(now_ms)
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected())
    }
}
