//! Kubernetes authentication and authorisation of API callers: a bearer token is checked with a
//! `TokenReview`, each [`Access`] with a `SubjectAccessReview` for the user it names. Positive
//! answers are cached for [`CACHE_TTL`], at most [`CACHE_ENTRIES`] each, so a burst of
//! requests costs one review; refusals are asked again each time (a new RoleBinding counts at
//! once).
use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{
        NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    },
};
use kube::{Api, Client, api::PostParams};

use super::{
    cache::TtlCache,
    route::{Access, GROUP, Target},
};

/// How long a positive review is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
/// Most tokens, and most (user, access) decisions, cached at once.
pub const CACHE_ENTRIES: usize = 1024;

/// A user the Kubernetes API authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why a caller is not let through.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// The token is not one the Kubernetes API authenticates (401).
    #[error(
        "the bearer token is neither this API's static token nor one the Kubernetes API authenticates (TokenReview: {0})"
    )]
    Unauthenticated(String),
    /// RBAC does not allow it (403).
    #[error("user {user} may not {what} (Kubernetes RBAC{why})")]
    Denied {
        user: String,
        what: String,
        why: String,
    },
    /// The Kubernetes API could not answer the review (502).
    #[error("Kubernetes API: {0}")]
    Upstream(String),
}

/// The `TokenReview` of `token`.
pub fn token_review(token: &str) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: None,
        },
        ..Default::default()
    }
}

/// The user a `TokenReview` answer names, or why it names none.
pub fn user_of(review: TokenReview) -> Result<User, Refusal> {
    let st = review.status.unwrap_or_default();
    let user = st.user.unwrap_or_default();
    match (st.authenticated, user.username) {
        (Some(true), Some(name)) if !name.is_empty() => Ok(User {
            name,
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        }),
        _ => Err(Refusal::Unauthenticated(
            st.error.unwrap_or_else(|| "not authenticated".into()),
        )),
    }
}

/// The `SubjectAccessReview` asking whether `user` may do `access`.
pub fn access_review(user: &User, access: &Access) -> SubjectAccessReview {
    let resource = |group: &str, resource: &str, sub: Option<&str>| ResourceAttributes {
        group: Some(group.to_owned()),
        resource: Some(resource.to_owned()),
        subresource: sub.map(str::to_owned),
        verb: Some(access.verb.to_owned()),
        namespace: access.namespace.clone(),
        name: access.name.clone(),
        ..Default::default()
    };
    let (resource_attributes, non_resource_attributes) = match &access.target {
        Target::NetworkFaults => (Some(resource(GROUP, "networkfaults", None)), None),
        Target::KillSwitch => (
            Some(resource(GROUP, "networkfaults", Some("killswitch"))),
            None,
        ),
        Target::Pods => (Some(resource("", "pods", None)), None),
        Target::Schedules => (Some(resource(GROUP, "networkfaultschedules", None)), None),
        Target::Path(p) => (
            None,
            Some(NonResourceAttributes {
                path: Some(p.clone()),
                verb: Some(access.verb.to_owned()),
            }),
        ),
    };
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: user.uid.clone(),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes,
            non_resource_attributes,
        },
        ..Default::default()
    }
}

/// The answer to a `SubjectAccessReview`: allowed, or the refusal naming user and access.
pub fn decision(user: &User, access: &Access, review: SubjectAccessReview) -> Result<(), Refusal> {
    let st = review.status.unwrap_or_default();
    if st.allowed && st.denied != Some(true) {
        return Ok(());
    }
    let why = [st.reason, st.evaluation_error]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Err(Refusal::Denied {
        user: user.name.clone(),
        what: access.describe(),
        why: if why.is_empty() {
            String::new()
        } else {
            format!(": {why}")
        },
    })
}

/// Reviews tokens and accesses against the cluster's API server, with the caches.
pub struct Reviewer {
    client: Client,
    tokens: Mutex<TtlCache<String, User>>,
    allowed: Mutex<TtlCache<(User, Access), ()>>,
}

impl Reviewer {
    /// A reviewer asking the API server of `client` (it needs `create` on `tokenreviews` and
    /// `subjectaccessreviews`).
    pub fn new(client: Client) -> Self {
        Self {
            client,
            tokens: Mutex::new(TtlCache::new(CACHE_ENTRIES, CACHE_TTL)),
            allowed: Mutex::new(TtlCache::new(CACHE_ENTRIES, CACHE_TTL)),
        }
    }

    /// The user `token` belongs to. Errors: [`Refusal::Unauthenticated`], or
    /// [`Refusal::Upstream`] when the review cannot be made.
    pub async fn authenticate(&self, token: &str) -> Result<User, Refusal> {
        let cached = lock(&self.tokens).get(&token.to_owned(), Instant::now());
        if let Some(u) = cached {
            return Ok(u);
        }
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &token_review(token))
            .await
            .map_err(|e| Refusal::Upstream(format!("TokenReview: {e}")))?;
        let user = user_of(answer)?;
        lock(&self.tokens).insert(token.to_owned(), user.clone(), Instant::now());
        Ok(user)
    }

    /// Whether `user` may do `access`. Errors: [`Refusal::Denied`] naming both, or
    /// [`Refusal::Upstream`].
    pub async fn authorize(&self, user: &User, access: &Access) -> Result<(), Refusal> {
        let key = (user.clone(), access.clone());
        if lock(&self.allowed).get(&key, Instant::now()).is_some() {
            return Ok(());
        }
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &access_review(user, access))
            .await
            .map_err(|e| Refusal::Upstream(format!("SubjectAccessReview: {e}")))?;
        decision(user, access, answer)?;
        lock(&self.allowed).insert(key, (), Instant::now());
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        authentication::v1::{TokenReviewStatus, UserInfo},
        authorization::v1::SubjectAccessReviewStatus,
    };

    use super::*;

    fn alice() -> User {
        User {
            name: "alice".into(),
            uid: Some("u-1".into()),
            groups: vec!["team-a".into(), "system:authenticated".into()],
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn the_review_of_a_fault_access_names_group_resource_verb_and_namespace() {
        let mut a = Access::faults("delete", Some("team-b"));
        a.name = Some("f-1".into());
        let sar = access_review(&alice(), &a);
        let json = serde_json::to_value(&sar).unwrap();
        assert_eq!(
            json["spec"],
            serde_json::json!({
                "user": "alice", "uid": "u-1", "groups": ["team-a", "system:authenticated"],
                "resourceAttributes": {"group": "faultline.dev", "resource": "networkfaults",
                    "verb": "delete", "namespace": "team-b", "name": "f-1"}
            })
        );
        assert_eq!(json["apiVersion"], "authorization.k8s.io/v1");
        assert_eq!(json["kind"], "SubjectAccessReview");
    }

    #[test]
    fn cluster_wide_and_non_resource_reviews_have_no_namespace() {
        let list = access_review(&alice(), &Access::faults("list", None));
        let attrs = list.spec.resource_attributes.unwrap();
        assert_eq!(attrs.namespace, None);
        assert_eq!(attrs.verb.as_deref(), Some("list"));
        let ks = super::super::route::classify(
            &axum::http::Method::POST,
            &"/v1/kill-switch".parse().unwrap(),
        );
        let super::super::route::Need::Fixed(ks) = ks else {
            panic!("{ks:?}")
        };
        let attrs = access_review(&alice(), &ks[0])
            .spec
            .resource_attributes
            .unwrap();
        assert_eq!(
            (attrs.resource.as_deref(), attrs.subresource.as_deref()),
            (Some("networkfaults"), Some("killswitch"))
        );
        assert_eq!(attrs.verb.as_deref(), Some("update"));
        let metrics = access_review(
            &alice(),
            &Access {
                target: Target::Path("/metrics".into()),
                ..Access::faults("get", None)
            },
        );
        assert!(metrics.spec.resource_attributes.is_none());
        let nr = metrics.spec.non_resource_attributes.unwrap();
        assert_eq!(
            (nr.path.as_deref(), nr.verb.as_deref()),
            (Some("/metrics"), Some("get"))
        );
    }

    #[test]
    fn a_refusal_names_user_verb_resource_namespace_and_rbacs_reason() {
        let a = Access::faults("create", Some("team-b"));
        let answer = SubjectAccessReview {
            status: Some(SubjectAccessReviewStatus {
                allowed: false,
                reason: Some("no RBAC policy matched".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = decision(&alice(), &a, answer).unwrap_err();
        assert_eq!(
            e.to_string(),
            "user alice may not create networkfaults.faultline.dev in namespace team-b (Kubernetes RBAC: no RBAC policy matched)"
        );
        let allowed = SubjectAccessReview {
            status: Some(SubjectAccessReviewStatus {
                allowed: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(decision(&alice(), &a, allowed), Ok(()));
    }

    #[test]
    fn token_reviews_carry_the_token_and_yield_the_user_or_the_reason() {
        let tr = token_review("s3cret");
        assert_eq!(tr.spec.token.as_deref(), Some("s3cret"));
        let ok = TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(true),
                user: Some(UserInfo {
                    username: Some("alice".into()),
                    uid: Some("u-1".into()),
                    groups: Some(vec!["team-a".into(), "system:authenticated".into()]),
                    extra: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(user_of(ok).unwrap(), alice());
        let no = TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(false),
                error: Some("invalid bearer token".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            user_of(no).unwrap_err(),
            Refusal::Unauthenticated("invalid bearer token".into())
        );
        assert!(user_of(TokenReview::default()).is_err());
    }
}
