//! Who may call the API and do what, and the audit record of each change and refusal: one
//! middleware ([`guard`]) in front of every API route (health and the dashboard's files are
//! outside).
//!
//! - **Authentication**: `Authorization: Bearer <token>`. The static `--token-file` token is
//!   the admin (break-glass) credential and may do everything. In cluster mode
//!   (`fault-agent api` with a token file) any other token is checked with a `TokenReview`
//!   ([`review`]); the user is attached to the request ([`Identity`]). Without a token file
//!   nothing is checked (loopback only, or `--insecure-no-auth`).
//! - **Authorisation** (users from a `TokenReview` only): each [`route::Access`] the request
//!   needs is checked with a `SubjectAccessReview`; a refusal is 403 naming user, verb,
//!   resource and namespace.
//! - **Audit**: every request that is not a read, and every 401/403, is recorded with
//!   [`crate::audit::record`] once answered.
pub mod cache;
pub mod review;
pub mod route;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::{Body, Bytes, HttpBody as _},
    extract::{ConnectInfo, Request, State},
    http::{Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::Response,
};

use self::{
    review::{Refusal, Reviewer, User},
    route::{Access, Need},
};
use super::{AppState, auth};
use crate::{
    audit::{self, AuthMethod},
    error::AgentError,
};

/// Largest response body read back for the audit record (fault id, error message).
const AUDIT_BODY_LIMIT: u64 = 1 << 20;

/// Who is calling, attached to each request as an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No token is configured: nobody is checked.
    Anonymous,
    /// The static `--token-file` token: may do everything.
    StaticToken,
    /// A Kubernetes user, from a `TokenReview`.
    User(User),
}

impl Identity {
    fn audit_name(&self) -> (String, Vec<String>, AuthMethod) {
        match self {
            Identity::Anonymous => ("anonymous".into(), vec![], AuthMethod::None),
            Identity::StaticToken => ("static-token".into(), vec![], AuthMethod::StaticToken),
            Identity::User(u) => (u.name.clone(), u.groups.clone(), AuthMethod::TokenReview),
        }
    }
}

/// How the API checks its callers (see the module docs).
pub struct Guard {
    /// The static token, if any.
    pub token: Option<Arc<str>>,
    /// Reviews other tokens (cluster mode with a token file).
    pub reviewer: Option<Reviewer>,
    /// To find the namespace of the fault a request names.
    pub state: Arc<AppState>,
}

/// What the guard learnt of a request, for its audit record.
#[derive(Default)]
struct Facts {
    verb: Option<String>,
    namespace: Option<String>,
    fault_id: Option<String>,
}

impl Facts {
    fn from_accesses(accesses: &[Access]) -> Self {
        let first = accesses.first();
        Self {
            verb: first.map(|a| a.verb.to_owned()),
            namespace: first.and_then(|a| a.namespace.clone()),
            fault_id: first.and_then(|a| a.name.clone()),
        }
    }
}

fn refusal_response(r: &Refusal) -> Response {
    match r {
        Refusal::Unauthenticated(_) => {
            auth::deny(StatusCode::UNAUTHORIZED, "unauthorized", &r.to_string())
        }
        Refusal::Denied { .. } => auth::deny(StatusCode::FORBIDDEN, "forbidden", &r.to_string()),
        Refusal::Upstream(_) => auth::deny(StatusCode::BAD_GATEWAY, "upstream", &r.to_string()),
    }
}

impl Guard {
    /// The caller, or the response refusing it.
    async fn authenticate(&self, parts: &Parts) -> Result<Identity, Response> {
        if self.token.is_none() && self.reviewer.is_none() {
            return Ok(Identity::Anonymous);
        }
        let sent = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(sent) = sent.filter(|t| !t.is_empty()) else {
            return Err(auth::deny(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this API needs a bearer token: send `Authorization: Bearer <token>`",
            ));
        };
        if let Some(t) = &self.token
            && auth::same(sent.as_bytes(), t.as_bytes())
        {
            return Ok(Identity::StaticToken);
        }
        match &self.reviewer {
            Some(r) => r
                .authenticate(sent)
                .await
                .map(Identity::User)
                .map_err(|e| refusal_response(&e)),
            None => Err(auth::deny(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the bearer token sent is not the one this agent accepts",
            )),
        }
    }

    /// The accesses `need` stands for, given the request body; the fault a route names is
    /// looked up for its namespace (a fault not found: nothing, the handler answers 404).
    async fn accesses(&self, need: Need, body: &Bytes) -> Result<Vec<Access>, AgentError> {
        Ok(match need {
            Need::Fixed(v) => v,
            Need::Create(form) => route::spec_of(form, body)
                .map(|s| route::for_create(&s))
                .unwrap_or_default(),
            Need::Cleanup => route::for_cleanup(body),
            Need::Fault { id, verb } => match self.state.backend.get(id).await {
                Ok(f) => {
                    let name = f.id.rsplit('/').next().map(str::to_owned);
                    vec![Access {
                        name,
                        ..Access::faults(verb, Some(&f.spec.namespace))
                    }]
                }
                Err(AgentError::NotFound(_) | AgentError::Conflict(_)) => vec![],
                Err(e) => return Err(e),
            },
            Need::CreateSchedule => route::for_create_schedule(body),
            Need::Schedule { id, verb } => self.schedule_access(&id, verb).await?,
            Need::Unknown => vec![],
        })
    }

    /// `verb` on the schedule `id` in its namespace (looked up on the cluster API; a schedule
    /// not found: nothing, the handler answers 404).
    async fn schedule_access(
        &self,
        id: &str,
        verb: &'static str,
    ) -> Result<Vec<Access>, AgentError> {
        let super::backend::Backend::Cluster(b) = &self.state.backend else {
            return Ok(vec![]);
        };
        match crate::kube::schedules_api::fetch(b, id).await {
            Ok(o) => {
                let name = o.metadata.name.clone();
                Ok(vec![Access::schedules(
                    verb,
                    &o.namespace(),
                    name.as_deref(),
                )])
            }
            Err(crate::schedule::ScheduleError::NotFound(_)) => Ok(vec![]),
            Err(crate::schedule::ScheduleError::Agent(AgentError::Conflict(_))) => Ok(vec![]),
            Err(crate::schedule::ScheduleError::Agent(e)) => Err(e),
        }
    }

    /// Checks every access for `who`; static token and anonymous callers may do everything.
    /// A refusal comes with the access refused (none for a route without a rule).
    async fn authorize(
        &self,
        who: &Identity,
        need_known: bool,
        accesses: &[Access],
    ) -> Result<(), (Refusal, Option<Access>)> {
        let Identity::User(user) = who else {
            return Ok(());
        };
        let Some(reviewer) = &self.reviewer else {
            return Ok(());
        };
        if !need_known {
            let refusal = Refusal::Denied {
                user: user.name.clone(),
                what: "call this route".into(),
                why: ": no Kubernetes permission maps to it, only the API's static token may"
                    .into(),
            };
            return Err((refusal, None));
        }
        for a in accesses {
            reviewer
                .authorize(user, a)
                .await
                .map_err(|r| (r, Some(a.clone())))?;
        }
        Ok(())
    }
}

/// Whether a request to `method` is recorded whatever its answer (a change, or an attempt).
fn is_change(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The middleware: authenticate, authorise, run, audit (see the module docs).
pub async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let mut rec = Recorder::new(&parts);
    let who = match g.authenticate(&parts).await {
        Ok(w) => w,
        Err(res) => return rec.finish(res, Facts::default()).await,
    };
    rec.identify(&who);
    let need = match route::classify(&parts.method, &parts.uri) {
        // Only a reviewed user needs the fault's namespace now; the audit finds it in the answer.
        Need::Fault { id, verb } if !matches!(who, Identity::User(_)) => {
            Need::Fixed(vec![Access {
                name: Some(id),
                ..Access::faults(verb, None)
            }])
        }
        Need::Schedule { id, .. } if !matches!(who, Identity::User(_)) => {
            Need::Fixed(vec![Access {
                name: Some(id),
                ..Access::cluster("get", route::Target::Schedules)
            }])
        }
        need => need,
    };
    let need_known = need != Need::Unknown;
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            let res = auth::deny(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("reading the request body: {e}"),
            );
            return rec.finish(res, Facts::default()).await;
        }
    };
    let accesses = match g.accesses(need, &body).await {
        Ok(a) => a,
        Err(e) => {
            let res = axum::response::IntoResponse::into_response(e);
            return rec.finish(res, Facts::default()).await;
        }
    };
    if let Err((r, refused)) = g.authorize(&who, need_known, &accesses).await {
        // The record names the access refused (e.g. the peers' namespace).
        let facts = Facts::from_accesses(refused.as_slice());
        return rec.finish(refusal_response(&r), facts).await;
    }
    let facts = Facts::from_accesses(&accesses);
    parts.extensions.insert(who);
    let res = next.run(Request::from_parts(parts, Body::from(body))).await;
    rec.finish(res, facts).await
}

/// The audit record of one request, completed when it is answered.
struct Recorder {
    record: audit::Record,
    change: bool,
}

impl Recorder {
    fn new(parts: &Parts) -> Self {
        let mut record = audit::Record::now(
            "anonymous",
            AuthMethod::None,
            parts.method.as_str(),
            parts.uri.path(),
        );
        record.source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.to_string());
        Self {
            record,
            change: is_change(&parts.method),
        }
    }

    fn identify(&mut self, who: &Identity) {
        let (user, groups, auth) = who.audit_name();
        (self.record.user, self.record.groups, self.record.auth) = (user, groups, auth);
    }

    /// Records the request if it is a change or was refused; returns `res` unchanged.
    async fn finish(mut self, res: Response, facts: Facts) -> Response {
        let status = res.status();
        let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
        if !self.change && !refused {
            return res;
        }
        // Only a whole body already in memory and small is read back (a fault with 45,000
        // peer CIDRs is not parsed twice); the answer passes on unchanged either way.
        let small = res
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n <= AUDIT_BODY_LIMIT);
        let (res, answer) = if small {
            let (parts, body) = res.into_parts();
            match axum::body::to_bytes(body, usize::MAX).await {
                Ok(bytes) => {
                    let answer = serde_json::from_slice(&bytes).unwrap_or_default();
                    (Response::from_parts(parts, Body::from(bytes)), answer)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "audit: reading the answer back");
                    (
                        Response::from_parts(parts, Body::empty()),
                        Default::default(),
                    )
                }
            }
        } else {
            (res, serde_json::Value::Null)
        };
        let r = &mut self.record;
        r.status = status.as_u16();
        r.verb = facts.verb;
        r.namespace = facts.namespace.or_else(|| answered_namespace(&answer));
        r.fault_id = answered_id(&answer).or(facts.fault_id);
        if status.is_client_error() || status.is_server_error() {
            r.reason = answer["error"]["message"].as_str().map(str::to_owned);
        }
        audit::record(r);
        res
    }
}

/// The fault id in an answer (native `id`, seed `fault_id`).
fn answered_id(v: &serde_json::Value) -> Option<String> {
    v["id"]
        .as_str()
        .or_else(|| v["fault_id"].as_str())
        .map(str::to_owned)
}

/// The namespace in an answer (native `spec.namespace`, seed `namespace`).
fn answered_namespace(v: &serde_json::Value) -> Option<String> {
    v["spec"]["namespace"]
        .as_str()
        .or_else(|| v["namespace"].as_str())
        .map(str::to_owned)
}

/// The caller as the audit log names them: the identity the guard established (anonymous
/// before it ran) and the peer address.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for audit::Actor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let (user, groups, auth) = parts
            .extensions
            .get::<Identity>()
            .unwrap_or(&Identity::Anonymous)
            .audit_name();
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.to_string());
        Ok(Self {
            user,
            groups,
            auth,
            source,
        })
    }
}
