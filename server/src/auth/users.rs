//! The users file: user names, argon2id password hashes, roles.
//!
//! A JSON file (`--auth-users`), written by `ferrolabel auth add-user`:
//!
//! ```json
//! {"users": [
//!   {"username": "alice", "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$...",
//!    "roles": ["annotator"], "email": "alice@example.org", "name": "Alice"}
//! ]}
//! ```
//!
//! Roles are `user`, `annotator`, `reviewer`, `admin` (or MONAI Label's names,
//! `monailabel-user`...). A role brings the ones below it ([`Role::implied`]), as composite
//! roles do in a Keycloak realm: an annotator may also call what needs `user`.
//! Plain-text passwords are refused.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

use super::Role;

/// One entry of the users file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// Login name.
    pub username: String,
    /// PHC string of an argon2 hash (`ferrolabel auth hash-password`).
    pub password_hash: String,
    /// Granted roles (each implies the ones below it).
    pub roles: Vec<String>,
    /// E-mail, reported by `/auth/token/valid`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub email: String,
    /// Display name, reported by `/auth/token/valid`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// The whole users file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// The users.
    pub users: Vec<UserEntry>,
}

/// A checked user: roles expanded, hash parsed once.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub username: String,
    /// PHC hash string.
    pub password_hash: String,
    /// Every role held (granted ones and the ones they imply), sorted.
    pub roles: Vec<Role>,
    /// E-mail.
    pub email: String,
    /// Display name.
    pub name: String,
}

/// Hashes `password` with argon2id (default parameters: 19 MiB, 2 passes) and a random salt.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?
        .to_string())
}

/// Whether `password` matches the PHC hash `hash` (false for a malformed hash).
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Checks one entry and expands its roles.
fn check_entry(e: &UserEntry) -> Result<User> {
    let name = e.username.trim();
    if name.is_empty() || name != e.username || name.chars().any(char::is_control) {
        bail!("user {:?}: the username must be non-empty, without surrounding spaces or control characters", e.username);
    }
    let hash = PasswordHash::new(&e.password_hash).map_err(|err| {
        anyhow::anyhow!(
            "user {name:?}: password_hash is not a PHC hash string ({err}); make one with `ferrolabel auth hash-password` (plain-text passwords are not accepted)"
        )
    })?;
    if !hash.algorithm.as_str().starts_with("argon2") {
        bail!(
            "user {name:?}: password_hash uses {}, only argon2 hashes are accepted",
            hash.algorithm
        );
    }
    if e.roles.is_empty() {
        bail!("user {name:?}: no roles (use user, annotator, reviewer or admin)");
    }
    let mut roles = Vec::new();
    for r in &e.roles {
        let role = Role::parse(r).ok_or_else(|| {
            anyhow::anyhow!(
                "user {name:?}: unknown role {r:?} (use user, annotator, reviewer or admin)"
            )
        })?;
        roles.extend_from_slice(role.implied());
    }
    roles.sort();
    roles.dedup();
    Ok(User {
        username: e.username.clone(),
        password_hash: e.password_hash.clone(),
        roles,
        email: e.email.clone(),
        name: e.name.clone(),
    })
}

/// Reads the users file `path` (may be missing only when `allow_missing`).
pub fn read_file(path: &Path, allow_missing: bool) -> Result<UsersFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if allow_missing && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(UsersFile::default())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a users file ({{\"users\": [{{\"username\", \"password_hash\", \"roles\", \"email\", \"name\"}}]}})",
            path.display()
        )
    })
}

/// Loads and checks the users file: every entry valid, names unique, at least one user.
pub fn load(path: &Path) -> Result<BTreeMap<String, User>> {
    let file = read_file(path, false)?;
    let mut users = BTreeMap::new();
    for e in &file.users {
        let u = check_entry(e).with_context(|| format!("users file {}", path.display()))?;
        if users.insert(u.username.clone(), u).is_some() {
            bail!(
                "users file {}: user {:?} is listed twice",
                path.display(),
                e.username
            );
        }
    }
    if users.is_empty() {
        bail!(
            "users file {} lists no users; add one with `ferrolabel auth add-user`",
            path.display()
        );
    }
    Ok(users)
}

/// Adds `entry` to the users file at `path` (creating it), replacing a user of the same name.
/// The file is replaced atomically and, on Unix, readable by its owner only.
pub fn upsert(path: &Path, entry: UserEntry) -> Result<bool> {
    check_entry(&entry)?;
    let mut file = read_file(path, true)?;
    let replaced = file.users.iter().any(|u| u.username == entry.username);
    file.users.retain(|u| u.username != entry.username);
    file.users.push(entry);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".users-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    serde_json::to_writer_pretty(&mut tmp, &file)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    // tempfile creates the file with mode 0600 on Unix
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, roles: &[&str]) -> UserEntry {
        UserEntry {
            username: name.into(),
            password_hash: hash_password("pw").unwrap(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            email: String::new(),
            name: String::new(),
        }
    }

    #[test]
    fn hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("s3cre", &h));
        assert!(!verify_password("s3cret", "not a hash"));
    }

    #[test]
    fn entries_are_checked() {
        let u = check_entry(&entry("ann", &["annotator"])).unwrap();
        assert_eq!(u.roles, vec![Role::User, Role::Annotator]);
        let u = check_entry(&entry("boss", &["monailabel-admin"])).unwrap();
        assert_eq!(u.roles.len(), 4);
        assert!(check_entry(&entry("x", &["root"])).is_err());
        assert!(check_entry(&entry("x", &[])).is_err());
        assert!(check_entry(&entry(" x", &["user"])).is_err());
        let mut plain = entry("x", &["user"]);
        plain.password_hash = "hunter2".into();
        let err = format!("{:#}", check_entry(&plain).unwrap_err());
        assert!(err.contains("plain-text"), "{err}");
    }

    #[test]
    fn upsert_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/users.json");
        assert!(load(&path).is_err());
        assert!(!upsert(&path, entry("a", &["user"])).unwrap());
        assert!(!upsert(&path, entry("b", &["admin"])).unwrap());
        assert!(upsert(&path, entry("a", &["reviewer"])).unwrap());
        let users = load(&path).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(
            users["a"].roles,
            vec![Role::User, Role::Annotator, Role::Reviewer]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "users file readable by others: {mode:o}");
        }
        std::fs::write(
            &path,
            r#"{"users":[{"username":"a","password":"x","roles":["user"]}]}"#,
        )
        .unwrap();
        assert!(load(&path).is_err());
    }
}
