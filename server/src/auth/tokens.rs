//! Bearer tokens: random, opaque, kept server-side with an expiry.
//!
//! A token is 32 bytes from the OS random generator, sent as 64 hex characters. The server keeps
//! only its SHA-256 (so a memory dump holds no usable token) with the user name and the expiry.
//! Tokens live in memory: a restart logs everyone out (the clients log in again when
//! `/auth/token/valid` says no).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Most live tokens kept; past that the one closest to expiry is dropped.
const MAX_TOKENS: usize = 100_000;

#[derive(Debug)]
struct Entry {
    username: String,
    expires: Instant,
}

/// The token store.
#[derive(Debug)]
pub struct Tokens {
    ttl: Duration,
    map: Mutex<HashMap<[u8; 32], Entry>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// A store whose tokens last `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// How long a token lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new token for `username`.
    pub fn issue(&self, username: &str) -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TOKENS {
            map.retain(|_, e| e.expires > now);
            if map.len() >= MAX_TOKENS {
                if let Some(k) = map.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k) {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            digest(&token),
            Entry {
                username: username.to_string(),
                expires: now + self.ttl,
            },
        );
        token
    }

    /// The user a live token belongs to; `None` for an unknown, malformed or expired token
    /// (an expired one is forgotten).
    pub fn check(&self, token: &str) -> Option<String> {
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let key = digest(token);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&key) {
            Some(e) if e.expires > Instant::now() => Some(e.username.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Drops expired tokens; returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let before = map.len();
        map.retain(|_, e| e.expires > now);
        before - map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_check_expire() {
        let t = Tokens::new(Duration::from_secs(60));
        let a = t.issue("alice");
        let b = t.issue("alice");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(t.check(&a).as_deref(), Some("alice"));
        assert_eq!(t.check(&a.to_uppercase()), None);
        assert_eq!(t.check("nope"), None);
        assert_eq!(t.check(&"0".repeat(64)), None);

        let short = Tokens::new(Duration::from_millis(1));
        let c = short.issue("bob");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.check(&c), None);
        let _ = short.issue("bob");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.sweep(), 1);
    }
}
