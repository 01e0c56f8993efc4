//! The cluster's kill switch: one ConfigMap (by default `faultline-kill-switch` in the agents'
//! namespace) that every node agent watches. While it says `engaged`, each node's programs
//! pass every packet (the `FL_CONTROL` flag, see `core::kill_switch`), whatever faults the
//! maps hold; the faults stay, and act again once it is lifted (if they did not expire).
//!
//! The ConfigMap's keys, all strings:
//! - `engaged`: `"true"` or `"false"`. A ConfigMap without it, or with any other value, reads
//!   as engaged (a kill switch fails safe) and the node logs the bad value.
//! - `by`, `reason`: who pulled it and why (as `kubectl create configmap --from-literal` gives
//!   them; `by` defaults to `configmap <ns>/<name>`).
//! - `record`: the API's JSON record ([`KillSwitch`]: engaged and lifted by whom, when, from
//!   where). Written by the API only.
//!
//! Deleting the ConfigMap lifts the switch too. The API (`/v1/kill-switch`) writes it with
//! server-side apply; `kubectl` can create, patch or delete it directly.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use fault_api::kill_switch::{KillSwitch, KillSwitchAction, KillSwitchRequest};
use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt as _, reflector, watcher},
};

use crate::{core::Core, error::AgentError};

/// The ConfigMap's default name.
pub const DEFAULT_NAME: &str = "faultline-kill-switch";
/// The namespace when neither a flag nor `POD_NAMESPACE` gives one.
pub const DEFAULT_NAMESPACE: &str = "faultline-system";
/// Field manager of the API's writes.
const MANAGER: &str = "faultline-kill-switch";

/// Where the kill switch's ConfigMap lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The ConfigMap's namespace (the agents' own, `POD_NAMESPACE`).
    pub namespace: String,
    /// The ConfigMap's name.
    pub name: String,
}

impl Location {
    /// `namespace` (else [`DEFAULT_NAMESPACE`]) and [`DEFAULT_NAME`].
    pub fn in_namespace(namespace: Option<&str>) -> Self {
        Self {
            namespace: namespace
                .filter(|n| !n.is_empty())
                .unwrap_or(DEFAULT_NAMESPACE)
                .to_owned(),
            name: DEFAULT_NAME.to_owned(),
        }
    }

    fn describe(&self) -> String {
        format!("configmap {}/{}", self.namespace, self.name)
    }
}

/// What a ConfigMap asks of the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Whether every datapath must pass all traffic.
    pub engaged: bool,
    /// Who and why, as the ConfigMap gives them.
    pub request: KillSwitchRequest,
    /// A value of `engaged` that is neither `true` nor `false` (read as engaged).
    pub bad_value: Option<String>,
}

/// Reads `cm` (`None`: there is no ConfigMap, the switch is lifted).
pub fn desired(cm: Option<&ConfigMap>, at: &Location) -> Desired {
    let data = cm.and_then(|c| c.data.clone()).unwrap_or_default();
    let text = |k: &str| data.get(k).map(|v| v.trim().to_owned());
    let by = text("by")
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| at.describe());
    let request = KillSwitchRequest {
        by: by.chars().take(fault_api::kill_switch::MAX_TEXT).collect(),
        reason: text("reason").map(|r| r.chars().take(fault_api::kill_switch::MAX_TEXT).collect()),
    };
    let (engaged, bad_value) = match (cm, text("engaged").as_deref()) {
        (None, _) => (false, None),
        (Some(_), Some("false")) => (false, None),
        (Some(_), Some("true")) => (true, None),
        (Some(_), other) => (true, Some(other.unwrap_or("<missing>").to_owned())),
    };
    Desired {
        engaged,
        request,
        bad_value,
    }
}

/// Node side: watches the ConfigMap and sets this node's switch from it at every change (and
/// at the first list). Runs until aborted; a watch that fails (e.g. no permission to read
/// ConfigMaps there) is retried with backoff and logged, and the switch stays as it was.
pub async fn follow(client: Client, at: Location, core: Arc<Mutex<Core>>) {
    let api: Api<ConfigMap> = Api::namespaced(client, &at.namespace);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={}", at.name));
    let (store, writer) = reflector::store::<ConfigMap>();
    let mut stream = std::pin::pin!(reflector(writer, watcher(api, cfg).default_backoff()));
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::InitApply(_) | watcher::Event::Init) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, at = %at.describe(), "kill switch watch failed (retrying)");
                continue;
            }
        }
        let cm = store
            .state()
            .into_iter()
            .find(|c| c.metadata.name.as_deref() == Some(&at.name));
        let want = desired(cm.as_deref(), &at);
        let (c, from) = (core.clone(), at.describe());
        let set = tokio::task::spawn_blocking(move || apply(&c, &want, from)).await;
        match set {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot set the kill switch from the ConfigMap")
            }
            Err(e) => tracing::error!(error = %e, "the kill switch task failed"),
        }
    }
}

/// Sets the core's switch to `want`, when it differs.
fn apply(core: &Mutex<Core>, want: &Desired, from: String) -> Result<(), AgentError> {
    if let Some(v) = &want.bad_value {
        tracing::error!(value = %v, "the kill switch ConfigMap's `engaged` must be \"true\" or \"false\": read as engaged");
    }
    let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
    match (core.kill_switch().engaged, want.engaged) {
        (false, true) => core.engage_kill_switch(&want.request, Some(from)).map(drop),
        (true, false) => core.lift_kill_switch(&want.request, Some(from)).map(drop),
        _ => Ok(()),
    }
}

/// API side: the switch as the ConfigMap holds it (lifted when there is none).
pub async fn read(client: &Client, at: &Location) -> Result<KillSwitch, AgentError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &at.namespace);
    let cm = api
        .get_opt(&at.name)
        .await
        .map_err(super::backend::kube_error)?;
    Ok(record_of(cm.as_ref(), at))
}

/// The record a ConfigMap holds: the API's `record` when it parses and agrees with `engaged`,
/// else one made from its keys.
fn record_of(cm: Option<&ConfigMap>, at: &Location) -> KillSwitch {
    let want = desired(cm, at);
    let kept = cm
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get("record"))
        .and_then(|r| serde_json::from_str::<KillSwitch>(r).ok())
        .filter(|k| k.engaged == want.engaged);
    kept.unwrap_or_else(|| {
        let action = KillSwitchAction {
            by: want.request.by.clone(),
            reason: want.request.reason.clone(),
            at: cm
                .and_then(|c| c.metadata.creation_timestamp.as_ref())
                .and_then(|t| t.0.to_string().parse().ok())
                .unwrap_or_else(Timestamp::now),
            from: Some(at.describe()),
        };
        KillSwitch {
            engaged: want.engaged,
            engaged_by: want.engaged.then(|| action.clone()),
            lifted_by: (!want.engaged && cm.is_some()).then_some(action),
        }
    })
}

/// API side: engages or lifts the switch for every node by writing the ConfigMap, and returns
/// the new record. Engaging an engaged switch keeps the first record. Errors: 422 for a bad
/// `req`; 502 when the API server refused the write (e.g. no permission on ConfigMaps in
/// that namespace).
pub async fn set(
    client: &Client,
    at: &Location,
    engage: bool,
    req: &KillSwitchRequest,
    from: Option<String>,
) -> Result<KillSwitch, AgentError> {
    req.validate().map_err(AgentError::Invalid)?;
    let mut ks = read(client, at).await?;
    let action = KillSwitchAction {
        by: req.by.clone(),
        reason: req.reason.clone(),
        at: Timestamp::now(),
        from,
    };
    match (ks.engaged, engage) {
        (false, true) => ks.engaged_by = Some(action),
        (true, false) => ks.lifted_by = Some(action),
        _ => {}
    }
    ks.engaged = engage;
    let mut data = BTreeMap::from([
        ("engaged".to_owned(), engage.to_string()),
        ("by".to_owned(), req.by.clone()),
        ("reason".to_owned(), req.reason.clone().unwrap_or_default()),
    ]);
    let record = serde_json::to_string(&ks).map_err(|e| AgentError::Internal(e.into()))?;
    data.insert("record".to_owned(), record);
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": at.name, "namespace": at.namespace,
            "labels": {"app.kubernetes.io/part-of": "faultline"}},
        "data": data,
    });
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &at.namespace);
    api.patch(
        &at.name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await
    .map_err(super::backend::kube_error)?;
    let verb = if engage {
        "engaged on every node"
    } else {
        "lifted on every node: faults act again"
    };
    tracing::warn!(target: "audit", by = %req.by, reason = ?req.reason, at = %at.describe(), "kill switch {verb}");
    Ok(ks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn no_configmap_is_lifted_and_a_bad_value_fails_safe() {
        let at = Location::in_namespace(None);
        assert_eq!(at.namespace, "faultline-system");
        assert!(!desired(None, &at).engaged);
        let d = desired(Some(&cm(&[("engaged", "true"), ("by", "alice")])), &at);
        assert!(d.engaged && d.bad_value.is_none());
        assert_eq!(d.request.by, "alice");
        assert!(!desired(Some(&cm(&[("engaged", "false")])), &at).engaged);
        let bad = desired(Some(&cm(&[("engaged", "yes")])), &at);
        assert!(bad.engaged);
        assert_eq!(bad.bad_value.as_deref(), Some("yes"));
        let missing = desired(Some(&cm(&[])), &at);
        assert!(missing.engaged);
        assert_eq!(
            missing.request.by,
            "configmap faultline-system/faultline-kill-switch"
        );
        assert!(missing.request.validate().is_ok());
    }

    #[test]
    fn a_record_that_disagrees_with_engaged_is_replaced_by_the_keys() {
        let at = Location::in_namespace(Some("ops"));
        let lifted = serde_json::to_string(&KillSwitch::default()).unwrap();
        // kubectl patched `engaged` to true but left the API's old record.
        let c = cm(&[("engaged", "true"), ("by", "bob"), ("record", &lifted)]);
        let r = record_of(Some(&c), &at);
        assert!(r.engaged);
        assert_eq!(r.engaged_by.unwrap().by, "bob");
    }
}
