//! Bearer tokens: random, opaque, kept in the datastore with an expiry.
//!
//! A token is 32 bytes from the OS random generator, sent as 64 hex characters. The datastore
//! keeps only its SHA-256 with the user name, issue time and expiry (table `auth_tokens`,
//! [`ferrolabel_datastore::tokens`]), so every server on one database accepts a token any of
//! them issued (several servers behind a load balancer), a restart logs nobody out, and a
//! database dump holds no usable token. The expired ones are deleted by the `token_sweep`
//! periodic job.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrolabel_datastore::{Datastore, DatastoreError};
use rand::RngCore;

/// The token store: a lifetime and, once the server has opened it, the datastore.
#[derive(Debug)]
pub struct Tokens {
    ttl: Duration,
    store: OnceLock<Datastore>,
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether `token` has the shape of one of ours (64 lowercase or uppercase hex digits).
fn well_formed(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Tokens {
    /// A store whose tokens last `ttl`; [`Tokens::attach`] gives it its datastore.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            store: OnceLock::new(),
        }
    }

    /// Keeps the tokens in `datastore` (once; later calls are ignored).
    pub fn attach(&self, datastore: Datastore) {
        let _ = self.store.set(datastore);
    }

    /// How long a token lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn store(&self) -> Result<&Datastore, DatastoreError> {
        self.store
            .get()
            .ok_or_else(|| DatastoreError::Invalid("the token store is not open".into()))
    }

    /// A new token for `username`, recorded in the datastore.
    pub async fn issue(&self, username: &str) -> Result<String, DatastoreError> {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let now = now_ms();
        let ttl = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        self.store()?
            .insert_token(&token, username, now, now.saturating_add(ttl))
            .await?;
        Ok(token)
    }

    /// The user a live token belongs to; `None` for an unknown, malformed, expired or revoked
    /// token.
    pub async fn check(&self, token: &str) -> Result<Option<String>, DatastoreError> {
        if !well_formed(token) || token.bytes().any(|b| b.is_ascii_uppercase()) {
            return Ok(None);
        }
        Ok(self
            .store()?
            .token(token, now_ms())
            .await?
            .map(|t| t.username))
    }

    /// Revokes a token; whether it was live.
    pub async fn revoke(&self, token: &str) -> Result<bool, DatastoreError> {
        if !well_formed(token) {
            return Ok(false);
        }
        self.store()?.revoke_token(token, now_ms()).await
    }

    /// Deletes the expired and revoked tokens; how many.
    pub async fn sweep(&self) -> Result<u64, DatastoreError> {
        self.store()?.purge_tokens(now_ms()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolabel_datastore::DatastoreOptions;

    /// Two servers on one database (two datastore handles): a token issued by one is accepted
    /// by the other, until it is revoked or expires.
    #[tokio::test]
    async fn a_token_from_one_server_is_accepted_by_another() {
        let tmp = tempfile::tempdir().unwrap();
        let open = || Datastore::open(tmp.path(), DatastoreOptions::default());
        let (one, two) = (
            Tokens::new(Duration::from_secs(60)),
            Tokens::new(Duration::ZERO),
        );
        one.attach(open().await.unwrap());
        two.attach(open().await.unwrap());
        let t = one.issue("alice").await.unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(two.check(&t).await.unwrap().as_deref(), Some("alice"));
        assert_eq!(two.check(&t.to_uppercase()).await.unwrap(), None);
        assert_eq!(two.check("nope").await.unwrap(), None);
        assert!(two.revoke(&t).await.unwrap());
        assert_eq!(
            one.check(&t).await.unwrap(),
            None,
            "revoked on the other server"
        );
        assert_eq!(one.sweep().await.unwrap(), 1);
        // a token store that is not open answers an error (503), not "unknown token"
        assert!(Tokens::new(Duration::from_secs(1)).check(&t).await.is_err());
    }
}
