//! What each API route asks to do, in Kubernetes RBAC terms: the [`Access`]es a caller
//! authenticated by a `TokenReview` must be allowed (one `SubjectAccessReview` each).
//!
//! | route | verb on `networkfaults.faultline.dev` | namespace |
//! | --- | --- | --- |
//! | `POST /v1/faults`, `POST /api/v1/faults/network/inject` | `create` | the fault's, and its `to_namespace` when another |
//! | `GET /v1/faults?namespace=NS` | `list` | NS |
//! | `GET /v1/faults`, `GET /api/v1/faults` | `list` | all (cluster scope) |
//! | `GET /v1/faults/{id}`, `POST .../{id}/verify`, `GET /api/v1/faults/{id}` | `get` | the fault's |
//! | `DELETE /v1/faults/{id}`, `POST .../{id}/recover` (both APIs) | `delete` | the fault's |
//! | `POST /v1/faults/cleanup`, `POST /api/v1/faults/network/cleanup` | `deletecollection` | the one asked, or all |
//! | `GET /v1/kill-switch` | `get` on `networkfaults/killswitch` | cluster scope |
//! | `POST`, `DELETE /v1/kill-switch` | `update` on `networkfaults/killswitch` | cluster scope |
//! | `GET /v1/pods` | `list` on `pods` (core group) | all |
//! | `GET /v1/schedules` | `list` on `networkfaultschedules` | all |
//! | `POST /v1/schedules` | `create` on `networkfaultschedules`, and what creating its template needs (above) | the template's |
//! | `GET /v1/schedules/{id}` | `get` on `networkfaultschedules` | the schedule's |
//! | `DELETE /v1/schedules/{id}` | `delete` on `networkfaultschedules` | the schedule's |
//! | `POST /v1/schedules/{id}/suspend`, `.../resume` | `patch` on `networkfaultschedules` | the schedule's |
//! | `GET /metrics`, `/v1/capabilities`, `/v1/tables`, `/v1/tables/check` | `get` on that non-resource URL | - |
//!
//! Any other route has no rule: only the static token may call it.
use axum::{
    extract::Query,
    http::{Method, Uri},
};
use fault_api::{FaultSpec, fault::CleanupRequest, seed::InjectRequest};
use serde::Deserialize;

/// The API group of `NetworkFault`.
pub const GROUP: &str = "faultline.dev";

/// What an [`Access`] is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// `networkfaults.faultline.dev`.
    NetworkFaults,
    /// `networkfaults/killswitch`: no such subresource is served; RBAC rules name it to grant
    /// the kill switch.
    KillSwitch,
    /// Core `pods`.
    Pods,
    /// `networkfaultschedules.faultline.dev`.
    Schedules,
    /// A non-resource URL (e.g. `/metrics`).
    Path(String),
}

/// One thing a request does: `verb` on `target` in `namespace` (`None`: every namespace, or
/// cluster scope), on the object `name` when one is named.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Access {
    pub verb: &'static str,
    pub target: Target,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The spec field that asks for it, when not the fault's own namespace (e.g.
    /// `to_namespace`): said in the refusal.
    pub field: Option<&'static str>,
}

impl Access {
    /// `verb` on NetworkFaults in `namespace` (`None`: all namespaces).
    pub fn faults(verb: &'static str, namespace: Option<&str>) -> Self {
        Self {
            verb,
            target: Target::NetworkFaults,
            namespace: namespace.map(str::to_owned),
            name: None,
            field: None,
        }
    }

    /// `verb` on NetworkFaultSchedules in `namespace`, on `name` when one is named.
    pub fn schedules(verb: &'static str, namespace: &str, name: Option<&str>) -> Self {
        Self {
            verb,
            target: Target::Schedules,
            namespace: Some(namespace.to_owned()),
            name: name.map(str::to_owned),
            field: None,
        }
    }

    /// `verb` on `target` in every namespace, or at cluster scope.
    pub fn cluster(verb: &'static str, target: Target) -> Self {
        Self {
            verb,
            target,
            namespace: None,
            name: None,
            field: None,
        }
    }

    /// For messages: `create networkfaults.faultline.dev in namespace team-b`.
    pub fn describe(&self) -> String {
        let what = match &self.target {
            Target::NetworkFaults => format!("networkfaults.{GROUP}"),
            Target::KillSwitch => format!("networkfaults.{GROUP}/killswitch"),
            Target::Pods => "pods".into(),
            Target::Schedules => format!("networkfaultschedules.{GROUP}"),
            Target::Path(p) => return format!("{} the non-resource URL {p}", self.verb),
        };
        let name = self
            .name
            .as_ref()
            .map_or(String::new(), |n| format!(" {n}"));
        let place = match (&self.namespace, &self.target) {
            (Some(ns), _) => format!("in namespace {ns}"),
            (None, Target::KillSwitch) => "(cluster scope)".into(),
            (None, _) => "in all namespaces".into(),
        };
        let field = self
            .field
            .map_or(String::new(), |f| format!(" (asked by the fault's {f})"));
        format!("{} {what}{name} {place}{field}", self.verb)
    }
}

/// The body a create carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// [`FaultSpec`] (`/v1`).
    Native,
    /// The seed's [`InjectRequest`] (`/api/v1`).
    Seed,
}

/// What must be allowed, as far as the method and URL tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// These, all of them.
    Fixed(Vec<Access>),
    /// Creating the fault the body describes ([`for_create`]).
    Create(Form),
    /// The native cleanup: the namespace is in the body ([`for_cleanup`]).
    Cleanup,
    /// `verb` on the existing fault `id`, in its namespace (looked up).
    Fault { id: String, verb: &'static str },
    /// Creating the schedule the body describes ([`for_create_schedule`]).
    CreateSchedule,
    /// `verb` on the existing schedule `id`, in its namespace (looked up).
    Schedule { id: String, verb: &'static str },
    /// No rule for this route: only the static token.
    Unknown,
}

#[derive(Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
}

/// The `namespace` query parameter, decoded as the handlers' `Query` extractor does.
fn namespace_param(uri: &Uri) -> Option<String> {
    Query::<NamespaceQuery>::try_from_uri(uri)
        .ok()
        .and_then(|q| q.0.namespace)
}

/// A path segment, percent-decoded as axum's `Path` does (`team-a%2Fname`).
fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| {
            std::str::from_utf8(h)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        });
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn fault(id: &str, verb: &'static str) -> Need {
    Need::Fault {
        id: decode(id),
        verb,
    }
}

fn schedule(id: &str, verb: &'static str) -> Need {
    Need::Schedule {
        id: decode(id),
        verb,
    }
}

fn path(p: &str) -> Need {
    Need::Fixed(vec![Access::cluster("get", Target::Path(p.to_owned()))])
}

/// What `method` on `uri` needs (see the module docs).
pub fn classify(method: &Method, uri: &Uri) -> Need {
    let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let read = matches!(*method, Method::GET | Method::HEAD);
    let m = if read { "GET" } else { method.as_str() };
    match (m, segments.as_slice()) {
        ("GET", ["v1", "faults"]) => {
            let ns = namespace_param(uri);
            Need::Fixed(vec![Access::faults("list", ns.as_deref())])
        }
        ("GET", ["api", "v1", "faults"]) => Need::Fixed(vec![Access::faults("list", None)]),
        ("POST", ["v1", "faults"]) => Need::Create(Form::Native),
        ("POST", ["api", "v1", "faults", "network", "inject"]) => Need::Create(Form::Seed),
        ("POST", ["v1", "faults", "cleanup"]) => Need::Cleanup,
        ("POST", ["api", "v1", "faults", "network", "cleanup"]) => {
            // Without ?namespace= the handler refuses (422) before anything changes.
            let ns = namespace_param(uri);
            Need::Fixed(
                ns.map(|ns| Access::faults("deletecollection", Some(&ns)))
                    .into_iter()
                    .collect(),
            )
        }
        ("GET", ["v1", "faults", id] | ["api", "v1", "faults", id]) if !id.is_empty() => {
            fault(id, "get")
        }
        ("POST", ["v1", "faults", id, "verify"]) => fault(id, "get"),
        ("DELETE", ["v1", "faults", id]) => fault(id, "delete"),
        ("POST", ["v1", "faults", id, "recover"] | ["api", "v1", "faults", id, "recover"]) => {
            fault(id, "delete")
        }
        ("GET", ["v1", "kill-switch"]) => {
            Need::Fixed(vec![Access::cluster("get", Target::KillSwitch)])
        }
        ("POST" | "DELETE", ["v1", "kill-switch"]) => {
            Need::Fixed(vec![Access::cluster("update", Target::KillSwitch)])
        }
        ("GET", ["v1", "pods"]) => Need::Fixed(vec![Access::cluster("list", Target::Pods)]),
        ("GET", ["v1", "schedules"]) => {
            Need::Fixed(vec![Access::cluster("list", Target::Schedules)])
        }
        ("POST", ["v1", "schedules"]) => Need::CreateSchedule,
        ("GET", ["v1", "schedules", id]) if !id.is_empty() => schedule(id, "get"),
        ("DELETE", ["v1", "schedules", id]) => schedule(id, "delete"),
        ("POST", ["v1", "schedules", id, "suspend" | "resume"]) => schedule(id, "patch"),
        ("GET", ["metrics"] | ["v1", "capabilities" | "tables"] | ["v1", "tables", "check"]) => {
            path(uri.path())
        }
        _ => Need::Unknown,
    }
}

/// The spec a create body describes, parsed as its handler parses it; `None` if it does not
/// parse (the handler then refuses it, 400/422, before anything changes).
pub fn spec_of(form: Form, body: &[u8]) -> Option<FaultSpec> {
    match form {
        Form::Native => FaultSpec::from_json(body).ok(),
        Form::Seed => InjectRequest::from_json(body).ok()?.to_spec().ok(),
    }
}

/// Creating `spec`: `create` in its namespace, and in `to_namespace` when the peers are
/// chosen there. Peers given as CIDRs, or all peers, change only the targets' own traffic
/// and need nothing more.
pub fn for_create(spec: &FaultSpec) -> Vec<Access> {
    let mut v = vec![Access::faults("create", Some(&spec.namespace))];
    if let Some(ns) = spec
        .to_namespace
        .as_deref()
        .filter(|ns| *ns != spec.namespace)
    {
        v.push(Access {
            field: Some("to_namespace"),
            ..Access::faults("create", Some(ns))
        });
    }
    v
}

/// Creating the schedule a `POST /v1/schedules` body describes: `create` on
/// `networkfaultschedules` in its template's namespace, and what creating the template would
/// need ([`for_create`]: the API creates its faults). Nothing for a body that does not parse
/// (the handler refuses it, 400/422, before anything changes).
pub fn for_create_schedule(body: &[u8]) -> Vec<Access> {
    let Ok(s) = fault_api::schedule::ScheduleSpec::from_json(body) else {
        return vec![];
    };
    let mut v = vec![Access::schedules("create", &s.template.namespace, None)];
    v.extend(for_create(&s.template));
    v
}

/// The native cleanup body: `deletecollection` in its namespace, or in all for `all: true`.
/// Nothing for a body the handler refuses (400/422, before anything changes).
pub fn for_cleanup(body: &[u8]) -> Vec<Access> {
    match serde_json::from_slice::<CleanupRequest>(body) {
        Ok(CleanupRequest {
            namespace: Some(ns),
            all: false,
        }) => vec![Access::faults("deletecollection", Some(&ns))],
        Ok(CleanupRequest {
            namespace: None,
            all: true,
        }) => vec![Access::faults("deletecollection", None)],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(method: Method, uri: &str) -> Need {
        classify(&method, &uri.parse().unwrap())
    }

    fn one(verb: &'static str, ns: Option<&str>) -> Need {
        Need::Fixed(vec![Access::faults(verb, ns)])
    }

    #[test]
    fn each_fault_route_needs_its_verb() {
        assert_eq!(
            need(Method::GET, "/v1/faults?namespace=team-a"),
            one("list", Some("team-a"))
        );
        assert_eq!(need(Method::GET, "/v1/faults"), one("list", None));
        assert_eq!(need(Method::GET, "/api/v1/faults"), one("list", None));
        assert_eq!(
            need(Method::POST, "/v1/faults?verify=true"),
            Need::Create(Form::Native)
        );
        assert_eq!(
            need(Method::POST, "/api/v1/faults/network/inject"),
            Need::Create(Form::Seed)
        );
        assert_eq!(need(Method::POST, "/v1/faults/cleanup"), Need::Cleanup);
        assert_eq!(
            need(
                Method::POST,
                "/api/v1/faults/network/cleanup?namespace=team-b"
            ),
            one("deletecollection", Some("team-b"))
        );
        assert_eq!(
            need(Method::POST, "/api/v1/faults/network/cleanup"),
            Need::Fixed(vec![])
        );
        for (m, uri, verb) in [
            (Method::GET, "/v1/faults/team-a%2Ff-1", "get"),
            (Method::HEAD, "/v1/faults/team-a%2Ff-1", "get"),
            (Method::POST, "/v1/faults/team-a%2Ff-1/verify", "get"),
            (Method::GET, "/api/v1/faults/team-a%2Ff-1", "get"),
            (Method::DELETE, "/v1/faults/team-a%2Ff-1", "delete"),
            (Method::POST, "/v1/faults/team-a%2Ff-1/recover", "delete"),
            (
                Method::POST,
                "/api/v1/faults/team-a%2Ff-1/recover",
                "delete",
            ),
        ] {
            assert_eq!(
                need(m.clone(), uri),
                Need::Fault {
                    id: "team-a/f-1".into(),
                    verb
                },
                "{m} {uri}"
            );
        }
    }

    #[test]
    fn the_kill_switch_pods_and_node_views_are_cluster_scoped() {
        let ks = |verb| Need::Fixed(vec![Access::cluster(verb, Target::KillSwitch)]);
        assert_eq!(need(Method::GET, "/v1/kill-switch"), ks("get"));
        assert_eq!(need(Method::POST, "/v1/kill-switch"), ks("update"));
        assert_eq!(need(Method::DELETE, "/v1/kill-switch"), ks("update"));
        assert_eq!(
            need(Method::GET, "/v1/pods"),
            Need::Fixed(vec![Access::cluster("list", Target::Pods)])
        );
        assert_eq!(need(Method::GET, "/metrics"), path("/metrics"));
        assert_eq!(
            need(Method::GET, "/v1/tables/check"),
            path("/v1/tables/check")
        );
    }

    #[test]
    fn routes_without_a_rule_are_unknown() {
        assert_eq!(need(Method::POST, "/v1/schedules"), Need::CreateSchedule);
        assert_eq!(
            need(Method::GET, "/v1/schedules"),
            Need::Fixed(vec![Access::cluster("list", Target::Schedules)])
        );
        assert_eq!(
            need(Method::POST, "/v1/schedules/team-a%2Fnightly/suspend"),
            Need::Schedule {
                id: "team-a/nightly".into(),
                verb: "patch"
            }
        );
        assert_eq!(
            need(Method::DELETE, "/v1/schedules/nightly"),
            Need::Schedule {
                id: "nightly".into(),
                verb: "delete"
            }
        );
        assert_eq!(need(Method::PUT, "/v1/faults/x"), Need::Unknown);
        assert_eq!(need(Method::GET, "/v1/faults/a/b/c"), Need::Unknown);
    }

    #[test]
    fn a_create_needs_create_where_its_peers_are_chosen() {
        let mut s = FaultSpec::new("team-a");
        assert_eq!(
            for_create(&s),
            vec![Access::faults("create", Some("team-a"))]
        );
        s.to_namespace = Some("team-a".into());
        assert_eq!(for_create(&s).len(), 1, "the same namespace once");
        s.to_namespace = Some("team-b".into());
        let v = for_create(&s);
        assert_eq!(v[1].namespace.as_deref(), Some("team-b"));
        assert_eq!(v[1].verb, "create");
        assert_eq!(
            v[1].describe(),
            "create networkfaults.faultline.dev in namespace team-b (asked by the fault's to_namespace)"
        );
    }

    #[test]
    fn create_bodies_parse_as_their_handlers_parse_them() {
        let native = br#"{"namespace":"team-a","to_namespace":"team-b","partition":true}"#;
        let s = spec_of(Form::Native, native).unwrap();
        assert_eq!(for_create(&s).len(), 2);
        assert!(spec_of(Form::Native, b"{\"nope\":1}").is_none());
        assert!(spec_of(Form::Seed, b"not json").is_none());
    }

    #[test]
    fn cleanup_bodies_name_their_scope() {
        assert_eq!(
            for_cleanup(br#"{"namespace":"team-a"}"#),
            vec![Access::faults("deletecollection", Some("team-a"))]
        );
        assert_eq!(
            for_cleanup(br#"{"all":true}"#),
            vec![Access::faults("deletecollection", None)]
        );
        assert!(for_cleanup(br#"{"namespace":"a","all":true}"#).is_empty());
    }

    #[test]
    fn descriptions_name_verb_resource_and_scope() {
        assert_eq!(
            Access::faults("list", None).describe(),
            "list networkfaults.faultline.dev in all namespaces"
        );
        assert_eq!(
            Access::cluster("update", Target::KillSwitch).describe(),
            "update networkfaults.faultline.dev/killswitch (cluster scope)"
        );
        assert_eq!(
            Access::cluster("get", Target::Path("/metrics".into())).describe(),
            "get the non-resource URL /metrics"
        );
    }
}
