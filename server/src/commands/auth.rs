//! `ferrolabel auth`: the users file of the auth mode.
//!
//! * `ferrolabel auth add-user --users users.json --username alice --role annotator` reads the
//!   password from standard input (one line; prompted for on a terminal), hashes it with
//!   argon2id and adds or replaces the user in the file (created with mode 0600);
//! * `ferrolabel auth hash-password` prints the hash of the password read the same way, for
//!   writing the file by hand;
//! * `ferrolabel auth audit-log --studies DIR [--datastore-url postgres://...]` prints the audit
//!   log (JSON lines), read-only.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::auth::users::{self, UserEntry};
use crate::auth::Role;

/// `ferrolabel auth` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Add a user to a users file (or replace it); the password is read from standard input.
    AddUser(AddUserArgs),
    /// Print the argon2id hash of a password read from standard input.
    HashPassword,
    /// Print the audit log of a studies folder (one JSON object a line, oldest first).
    AuditLog(AuditLogArgs),
}

/// Arguments of `ferrolabel auth audit-log`.
#[derive(Debug, clap::Args)]
pub struct AuditLogArgs {
    /// The studies folder (its log is in .ferrolabel/datastore.db, table audit_log).
    #[arg(long, env = "MONAI_LABEL_STUDIES")]
    pub studies: PathBuf,
    /// Only entries after this row id.
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// At most this many entries.
    #[arg(long, default_value_t = 100_000)]
    pub limit: u32,
    /// The servers' database when it is not the studies folder's SQLite file:
    /// `postgres://USER@HOST[:PORT]/DB` (a team deployment, docs/team.md).
    #[arg(long, env = "FERROLABEL_DATASTORE_URL", hide_env_values = true)]
    pub datastore_url: Option<String>,
}

/// Arguments of `ferrolabel auth add-user`.
#[derive(Debug, clap::Args)]
pub struct AddUserArgs {
    /// The users file (created if missing).
    #[arg(long, env = "FERROLABEL_AUTH_USERS")]
    pub users: PathBuf,
    /// Login name.
    #[arg(long)]
    pub username: String,
    /// Role, repeatable: user, annotator, reviewer or admin (each implies the ones before it).
    #[arg(long = "role", required = true)]
    pub roles: Vec<String>,
    /// E-mail, reported by /auth/token/valid.
    #[arg(long, default_value = "")]
    pub email: String,
    /// Display name, reported by /auth/token/valid.
    #[arg(long, default_value = "")]
    pub name: String,
}

/// Runs an `auth` subcommand.
pub fn run(cmd: AuthCommand) -> Result<()> {
    match cmd {
        AuthCommand::AddUser(args) => add_user(args),
        AuthCommand::HashPassword => {
            let pw = read_password()?;
            println!("{}", users::hash_password(&pw)?);
            Ok(())
        }
        AuthCommand::AuditLog(args) => audit_log(args),
    }
}

fn audit_log(args: AuditLogArgs) -> Result<()> {
    let db = args
        .studies
        .join(ferrolabel_datastore::PRIVATE_DIR)
        .join("datastore.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let entries = match args
        .datastore_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        Some(url) => rt
            .block_on(ferrolabel_datastore::read_audit_log_url(
                url, args.after, args.limit,
            ))
            .context("cannot read the audit log of --datastore-url")?,
        None => rt
            .block_on(ferrolabel_datastore::read_audit_log(
                &db, args.after, args.limit,
            ))
            .with_context(|| format!("cannot read the audit log in {}", db.display()))?,
    };
    let mut out = std::io::stdout().lock();
    for e in entries {
        serde_json::to_writer(&mut out, &e)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// One line of standard input (prompted on a terminal), without its line end.
fn read_password() -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (shown as typed): ");
        std::io::stderr().flush().ok();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        bail!("empty password (give it on standard input: `echo \"$PW\" | ferrolabel auth ...`)");
    }
    Ok(pw)
}

fn add_user(args: AddUserArgs) -> Result<()> {
    for r in &args.roles {
        if Role::parse(r).is_none() {
            bail!("unknown role {r:?} (use user, annotator, reviewer or admin)");
        }
    }
    let password = read_password()?;
    let entry = UserEntry {
        username: args.username.clone(),
        password_hash: users::hash_password(&password)?,
        roles: args.roles.clone(),
        email: args.email,
        name: args.name,
    };
    let replaced = users::upsert(&args.users, entry)?;
    println!(
        "{} user {:?} in {}",
        if replaced { "replaced" } else { "added" },
        args.username,
        args.users.display()
    );
    Ok(())
}
