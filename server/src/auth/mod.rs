//! Authentication and authorisation, MONAI Label style (docs/protocol.md §2 and §9,
//! docs/auth.md), the audit log of writes, and TLS.
//!
//! Off by default. Then every request runs as the built-in `admin` (all four roles) and
//! `/auth/` answers 404, which is how the clients detect that auth is off. With
//! `--auth-enable true --auth-users users.json`:
//! * `POST /auth/token` (form `username`, `password`) checks the argon2id hash from the users
//!   file ([`users`]) and answers `{"access_token", "token_type": "Bearer"}`; tokens are random
//!   and opaque, kept in the datastore with an expiry, so that every server on one database
//!   accepts them ([`tokens`]);
//! * every other request is checked against the role table ([`rbac`]) by [`AuthLayer`]: no or a
//!   malformed `Authorization: Bearer` header → `401 {"detail":"Not authenticated"}`, an
//!   unknown or expired token → `401 {"detail":"Could not validate credentials"}` (both with
//!   `WWW-Authenticate: Bearer`), a missing role →
//!   `403 {"detail":"Role \"monailabel-admin\" is required to perform this action"}`.
//!
//! Whatever the mode, [`AuthLayer`] first refuses a path that is not in canonical form with
//! `400 {"detail": ...}` ([`canonical`]: no percent-escaped unreserved characters or `/`, no
//! `//`, no dot segments, no `;`), then checks the role table and classifies the request for
//! the audit log on the path **as the router matches it** (decoded as actix decodes it, not the
//! raw one), and appends label and image writes and deletes to the audit log ([`audit`]).
//! Handlers read the caller with [`Identity::of`].

pub mod audit;
pub mod canonical;
pub mod rbac;
pub mod tls;
pub mod tokens;
pub mod users;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use anyhow::Result;
use ferrolabel_datastore::{blocking, Datastore, TaskFailed};
use serde_json::json;

use rbac::Access;
use tokens::Tokens;
use users::User;

/// A MONAI Label role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `monailabel-user`: read, infer, next sample, sessions.
    User,
    /// `monailabel-annotator`: upload images and labels, edit info, scoring.
    Annotator,
    /// `monailabel-reviewer`: defined by MONAI Label, required by no endpoint.
    Reviewer,
    /// `monailabel-admin`: deletes, training, batch inference, model download, logs.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::User, Role::Annotator, Role::Reviewer, Role::Admin];

    /// MONAI Label's name for it (`monailabel-user`...).
    pub fn name(self) -> &'static str {
        match self {
            Role::User => "monailabel-user",
            Role::Annotator => "monailabel-annotator",
            Role::Reviewer => "monailabel-reviewer",
            Role::Admin => "monailabel-admin",
        }
    }

    /// Parses `user` or `monailabel-user` (any case).
    pub fn parse(s: &str) -> Option<Role> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.strip_prefix("monailabel-").unwrap_or(&s);
        match s {
            "user" => Some(Role::User),
            "annotator" => Some(Role::Annotator),
            "reviewer" => Some(Role::Reviewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The roles granting this one brings: itself and every role below it.
    pub fn implied(self) -> &'static [Role] {
        match self {
            Role::User => &Role::ALL[..1],
            Role::Annotator => &Role::ALL[..2],
            Role::Reviewer => &Role::ALL[..3],
            Role::Admin => &Role::ALL[..],
        }
    }
}

/// Who is calling (a request extension set by [`AuthLayer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name (recorded in datastore info and the audit log).
    pub username: String,
    /// E-mail.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Roles held.
    pub roles: Vec<Role>,
    /// Whether a token proved it (false: auth is off and this is the built-in admin).
    pub authenticated: bool,
}

impl Identity {
    /// The built-in user of the auth-off mode (MONAI Label's default user).
    pub fn builtin_admin() -> Identity {
        Identity {
            username: "admin".into(),
            email: "admin@monailabel.com".into(),
            name: "UNK".into(),
            roles: Role::ALL.to_vec(),
            authenticated: false,
        }
    }

    fn of_user(u: &User) -> Identity {
        Identity {
            username: u.username.clone(),
            email: u.email.clone(),
            name: u.name.clone(),
            roles: u.roles.clone(),
            authenticated: true,
        }
    }

    /// The caller of `req` (the built-in admin when the layer set none).
    pub fn of(req: &HttpRequest) -> Identity {
        req.extensions()
            .get::<Identity>()
            .cloned()
            .unwrap_or_else(Identity::builtin_admin)
    }

    /// `/auth/token/valid`'s answer.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "username": self.username,
            "email": self.email,
            "name": self.name,
            "roles": self.roles.iter().map(|r| r.name()).collect::<Vec<_>>(),
        })
    }
}

/// How authentication is configured.
#[derive(Debug, Clone)]
pub struct AuthOptions {
    /// The users file.
    pub users_file: PathBuf,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// `client_id` reported by `GET /auth/`.
    pub client_id: String,
}

/// The enabled authentication: users, live tokens, settings.
#[derive(Debug)]
pub struct Auth {
    users: BTreeMap<String, User>,
    tokens: Tokens,
    client_id: String,
    /// Hash checked for unknown user names, so that they take as long as wrong passwords.
    dummy_hash: String,
    /// Bounds concurrent password checks (each takes ~19 MiB and a core for a moment).
    verify_slots: tokio::sync::Semaphore,
}

/// Why a login failed.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    /// Unknown user or wrong password.
    BadCredentials,
    /// The password check could not run.
    Internal(String),
}

impl Auth {
    /// Loads the users file and prepares the token store ([`Auth::attach`] opens it).
    pub fn load(opts: &AuthOptions) -> Result<Auth> {
        let users = users::load(&opts.users_file)?;
        Ok(Auth {
            users,
            tokens: Tokens::new(opts.token_ttl),
            client_id: opts.client_id.clone(),
            dummy_hash: users::hash_password("ferrolabel-dummy-password")?,
            verify_slots: tokio::sync::Semaphore::new(4),
        })
    }

    /// Keeps the bearer tokens in `datastore` (the server's, opened after the users file).
    pub fn attach(&self, datastore: Datastore) {
        self.tokens.attach(datastore);
    }

    /// Number of users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Token lifetime.
    pub fn token_ttl(&self) -> Duration {
        self.tokens.ttl()
    }

    /// `GET /auth/`'s answer.
    pub fn describe(&self) -> serde_json::Value {
        json!({"enabled": true, "client_id": self.client_id, "realm": "ferrolabel"})
    }

    /// Checks a user name and password (off the async workers) and issues a token.
    pub async fn login(&self, username: &str, password: &str) -> Result<String, LoginError> {
        let (hash, known) = match self.users.get(username) {
            Some(u) => (u.password_hash.clone(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let _slot = self
            .verify_slots
            .acquire()
            .await
            .map_err(|e| LoginError::Internal(e.to_string()))?;
        let password = password.to_string();
        let ok = blocking(move || Ok::<_, TaskFailed>(users::verify_password(&password, &hash)))
            .await
            .map_err(|e| LoginError::Internal(e.to_string()))?;
        if ok && known {
            self.tokens
                .issue(username)
                .await
                .map_err(|e| LoginError::Internal(e.to_string()))
        } else {
            Err(LoginError::BadCredentials)
        }
    }

    /// Deletes expired and revoked tokens; how many.
    pub async fn sweep(&self) -> Result<u64, ferrolabel_datastore::DatastoreError> {
        self.tokens.sweep().await
    }

    /// The identity a bearer token stands for (`None`: unknown, expired, revoked, or a user
    /// no longer in the users file).
    async fn identity(&self, token: &str) -> Result<Option<Identity>, Denied> {
        let name = self.tokens.check(token).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot check a token");
            Denied::Unavailable
        })?;
        Ok(name.and_then(|n| self.users.get(&n).map(Identity::of_user)))
    }

    /// Authorises a request: its identity, or why not.
    async fn authorize(&self, req: &ServiceRequest) -> Result<Identity, Denied> {
        let access = rbac::access(req.method(), canonical::routed_path(req));
        if access == Access::Public {
            return Ok(Identity::anonymous());
        }
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_string())
                    .filter(|t| !t.is_empty())
            });
        let Some(token) = token else {
            return Err(Denied::NoToken);
        };
        let Some(identity) = self.identity(&token).await? else {
            return Err(Denied::BadToken);
        };
        if let Access::Role(role) = access {
            if !identity.roles.contains(&role) {
                return Err(Denied::Forbidden(role, identity.username));
            }
        }
        Ok(identity)
    }
}

/// Why a request was refused.
#[derive(Debug)]
enum Denied {
    /// No (usable) `Authorization: Bearer` header: 401.
    NoToken,
    /// An unknown or expired token: 401.
    BadToken,
    /// The user (named) lacks the role: 403.
    Forbidden(Role, String),
    /// The token store could not be read: 503.
    Unavailable,
}

impl Denied {
    /// The user name the token proved (`""` for none).
    fn username(&self) -> &str {
        match self {
            Denied::Forbidden(_, u) => u,
            _ => "",
        }
    }

    /// The answer.
    fn response(&self) -> HttpResponse {
        match self {
            Denied::NoToken => unauthorized("Not authenticated"),
            Denied::BadToken => unauthorized("Could not validate credentials"),
            Denied::Forbidden(role, _) => HttpResponse::build(StatusCode::FORBIDDEN).json(json!({
                "detail": format!("Role \"{}\" is required to perform this action", role.name())
            })),
            Denied::Unavailable => HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE)
                .json(json!({ "detail": "the token store is unavailable" })),
        }
    }
}

impl Identity {
    /// The identity of a public request with auth on: nobody.
    fn anonymous() -> Identity {
        Identity {
            username: String::new(),
            email: String::new(),
            name: String::new(),
            roles: Vec::new(),
            authenticated: false,
        }
    }
}

/// `401 {"detail": detail}` with `WWW-Authenticate: Bearer`.
pub fn unauthorized(detail: &str) -> HttpResponse {
    HttpResponse::build(StatusCode::UNAUTHORIZED)
        .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
        .json(json!({ "detail": detail }))
}

/// The middleware: authorises each request (when auth is on), sets its [`Identity`], and
/// appends audited requests to the audit log once answered.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Option<Arc<Auth>>,
    datastore: Rc<Datastore>,
}

impl AuthLayer {
    /// The layer; `auth` is `None` when authentication is off.
    pub fn new(auth: Option<Arc<Auth>>, datastore: Datastore) -> Self {
        Self {
            auth,
            datastore: Rc::new(datastore),
        }
    }

    /// The middleware (for `actix_web::middleware::from_fn`): checks the path, authorises
    /// the request (the token is looked up in the datastore), sets its [`Identity`], and
    /// appends audited requests to the audit log once answered.
    pub async fn handle(
        self,
        req: ServiceRequest,
        next: Next<impl MessageBody + 'static>,
    ) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
        if let Err(why) = canonical::check(req.path()) {
            tracing::warn!(method = %req.method(), path = req.path(), reason = %why, "non-canonical path refused");
            let res = HttpResponse::build(StatusCode::BAD_REQUEST).json(json!({ "detail": why }));
            return Ok(req.into_response(res));
        }
        let audited = audit::classify(req.method(), canonical::routed_path(&req));
        let record = move |username: &str, req: &HttpRequest, status: StatusCode| {
            audited.map(|a| {
                a.entry(
                    username,
                    req.method(),
                    req.path(),
                    req.query_string(),
                    status.as_u16(),
                )
            })
        };
        let identity = match &self.auth {
            None => Identity::builtin_admin(),
            Some(auth) => match auth.authorize(&req).await {
                Ok(identity) => identity,
                Err(denied) => {
                    if let Denied::Forbidden(role, user) = &denied {
                        tracing::info!(user = %user, role = role.name(), "forbidden: role missing");
                    }
                    let res = denied.response();
                    let entry = record(denied.username(), req.request(), res.status());
                    let res = req.into_response(res);
                    if let Some(e) = entry {
                        audit::append(&self.datastore, e).await;
                    }
                    return Ok(res);
                }
            },
        };
        let username = identity.username.clone();
        req.extensions_mut().insert(identity);
        let res = next.call(req).await?.map_into_boxed_body();
        if let Some(e) = record(&username, res.request(), res.status()) {
            audit::append(&self.datastore, e).await;
        }
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_imply() {
        assert_eq!(Role::parse("Annotator"), Some(Role::Annotator));
        assert_eq!(Role::parse("monailabel-admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::User.implied(), &[Role::User]);
        assert_eq!(Role::Admin.implied().len(), 4);
        assert!(!Role::Annotator.implied().contains(&Role::Admin));
    }
}
