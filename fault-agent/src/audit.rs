//! The audit log: one JSON object per line for every change made through the API (inject,
//! recover, cleanup, kill switch, ...) and every refused attempt, in every mode. Each record
//! goes to the `audit` tracing target, and to the file given by `--audit-log` when there is
//! one ([`open`]). Other parts of the agent that take an audited decision (e.g. a protection
//! override) call [`record`] with a [`Record`] of their own.
//!
//! A line looks like (fields absent when unknown):
//! `{"time":"2026-11-30T23:10:02.123Z","user":"alice","groups":["team-a"],"auth":"token-review",
//! "source":"10.0.0.7:51234","method":"POST","path":"/v1/faults","verb":"create",
//! "namespace":"team-a","fault_id":"f-1a2b","status":201}`
use std::{
    fs::File,
    io::Write as _,
    path::Path,
    sync::{Mutex, OnceLock},
};

use anyhow::Context as _;
use serde::Serialize;

/// How the caller was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// The API's own `--token-file` token (the admin, break-glass credential).
    StaticToken,
    /// A Kubernetes bearer token, authenticated by a `TokenReview`.
    TokenReview,
    /// No credential was needed (no token configured: loopback only) or none was accepted.
    None,
}

/// Who did something, as a record names them (see the fields of [`Record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The Kubernetes user name, `static-token`, `anonymous`, or an internal actor's name.
    pub user: String,
    /// The user's groups (Kubernetes users only).
    pub groups: Vec<String>,
    /// How `user` was established.
    pub auth: AuthMethod,
    /// The caller's address (`ip:port`), when known.
    pub source: Option<String>,
}

impl Actor {
    /// A part of the agent acting on its own (e.g. the controller on an object), named `user`.
    pub fn internal(user: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            groups: vec![],
            auth: AuthMethod::None,
            source: None,
        }
    }
}

/// One audit record. Build it with [`Record::now`] and set what is known.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When, RFC 3339 in UTC.
    pub time: jiff::Timestamp,
    /// Who: the Kubernetes user name, `static-token`, or `anonymous`.
    pub user: String,
    /// The user's groups (Kubernetes users only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// How `user` was established.
    pub auth: AuthMethod,
    /// The caller's address (`ip:port`), when the server records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// HTTP method, or the internal action's name.
    pub method: String,
    /// Request path (without the query), or the internal object's name.
    pub path: String,
    /// The Kubernetes verb the request was authorised as (`create`, `delete`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verb: Option<String>,
    /// The namespace acted in; absent for cluster-wide actions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The fault concerned, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_id: Option<String>,
    /// The HTTP status answered (0 for actions outside a request).
    pub status: u16,
    /// Why it was refused or failed (the error body's message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Anything else the recording part wants kept (e.g. the protection overridden).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl Record {
    /// A record stamped now for `user` doing `method` on `path`; the rest unset.
    pub fn now(user: impl Into<String>, auth: AuthMethod, method: &str, path: &str) -> Self {
        Self {
            time: jiff::Timestamp::now(),
            user: user.into(),
            groups: vec![],
            auth,
            source: None,
            method: method.to_owned(),
            path: path.to_owned(),
            verb: None,
            namespace: None,
            fault_id: None,
            status: 0,
            reason: None,
            detail: None,
        }
    }

    /// A record stamped now for `actor` doing `method` on `path`; the rest unset.
    pub fn by(actor: &Actor, method: &str, path: &str) -> Self {
        let mut r = Self::now(actor.user.clone(), actor.auth, method, path);
        r.groups = actor.groups.clone();
        r.source = actor.source.clone();
        r
    }

    /// The record as one line of JSON (no newline).
    pub fn to_line(&self) -> String {
        // Serialising plain strings, numbers and a `Value` cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

static FILE: OnceLock<Mutex<File>> = OnceLock::new();

/// Opens (creating, appending to) the audit log file `path`; later [`record`]s are written
/// there as well. Once per process: a second call is an error.
///
/// Errors: the file cannot be opened for appending, or a file is already open.
pub fn open(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("--audit-log {}: opening for append", path.display()))?;
    FILE.set(Mutex::new(file))
        .map_err(|_| anyhow::anyhow!("--audit-log: the audit log is already open"))
}

/// Records `r`: to the `audit` tracing target (info), and as one line appended to the
/// `--audit-log` file, if open. A failed file write is logged, never returned: the request
/// it describes has already been answered.
pub fn record(r: &Record) {
    let line = r.to_line();
    tracing::info!(target: "audit", "{line}");
    if let Some(f) = FILE.get() {
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        // One write call per line: with O_APPEND, lines of concurrent writers do not mix.
        if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
            tracing::error!(error = %e, "writing the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_line_without_unknown_fields() {
        let mut r = Record::now("alice", AuthMethod::TokenReview, "POST", "/v1/faults");
        r.namespace = Some("team-a".into());
        r.status = 403;
        let line = r.to_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["user"], "alice");
        assert_eq!(v["auth"], "token-review");
        assert_eq!(v["namespace"], "team-a");
        assert_eq!(v["status"], 403);
        assert!(v.get("fault_id").is_none() && v.get("groups").is_none());
        let t: jiff::Timestamp = v["time"].as_str().unwrap().parse().unwrap();
        assert_eq!(t, r.time);
    }
}
