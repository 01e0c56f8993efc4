//! Pre-flight checks (single host): run before a fault is created, outside the core's lock
//! (the pods are read under it, then released). What "ready" means here: the target pod's
//! network namespace is known and each of its host-side veths is up with carrier
//! (`IFF_UP` and `IFF_RUNNING`, read with `getifaddrs` in the agent's namespace), i.e. both
//! ends of the veth are up.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use fault_api::{FaultSpec, FieldError, conditions::Preflight};
use nix::net::if_::InterfaceFlags;

use crate::{core::Core, error::AgentError, pods::Pod, resolve};

/// Validates `spec`, runs its pre-flight checks and finds the namespace its abort probe runs
/// from. Errors: [`AgentError::Invalid`] for a bad spec or an unknown `from_pod`,
/// [`AgentError::Precondition`] naming the failed check and what it measured.
pub async fn prepare(
    spec: &FaultSpec,
    core: &Arc<Mutex<Core>>,
) -> Result<Option<PathBuf>, AgentError> {
    spec.validate().map_err(AgentError::Invalid)?;
    if spec.preflight.is_none() && spec.abort.is_none() {
        return Ok(None);
    }
    let c = core.clone();
    let pods = tokio::task::spawn_blocking(move || crate::api::lock(&c).pods().to_vec())
        .await
        .map_err(|e| AgentError::Internal(anyhow::anyhow!("core task: {e}")))?;
    let netns = abort_netns(spec, &pods).map_err(AgentError::Invalid)?;
    if let Some(p) = &spec.preflight {
        let spec = spec.clone();
        let p = p.clone();
        tokio::task::spawn_blocking(move || run(&spec, &p, &pods))
            .await
            .map_err(|e| AgentError::Internal(anyhow::anyhow!("pre-flight task: {e}")))??;
    }
    Ok(netns)
}

/// The network namespace of the abort probe's `from_pod` (`None`: the agent's own).
pub fn abort_netns(spec: &FaultSpec, pods: &[Pod]) -> Result<Option<PathBuf>, FieldError> {
    match spec.abort.as_ref().and_then(|a| a.http.as_ref()) {
        Some(h) => pod_netns("abort.http.from_pod", h.from_pod.as_deref(), pods),
        None => Ok(None),
    }
}

fn pod_netns(field: &str, pod: Option<&str>, pods: &[Pod]) -> Result<Option<PathBuf>, FieldError> {
    let Some(name) = pod else { return Ok(None) };
    pods.iter()
        .find(|p| format!("{}/{}", p.namespace, p.name) == name)
        .and_then(|p| p.netns.clone())
        .map(Some)
        .ok_or_else(|| {
            FieldError::new(
                field,
                format!("no pod {name} with a network namespace on this host"),
            )
        })
}

/// The checks, in order: targets ready, enough ready targets, the HTTP probe (blocking).
fn run(spec: &FaultSpec, p: &Preflight, pods: &[Pod]) -> Result<(), AgentError> {
    if p.workload.is_some() {
        return Err(AgentError::Unsupported(FieldError::new(
            "preflight.workload",
            "workload checks read a Deployment or StatefulSet: cluster mode only (`fault-agent api`); on a single host use min_ready_targets alone",
        )));
    }
    let failed = |check: &str, what: String| {
        AgentError::Precondition(format!("pre-flight check {check} failed: {what}"))
    };
    let flags = interface_flags();
    let targets: Vec<(&Pod, Result<(), String>)> = pods
        .iter()
        .filter(|pod| pod.is_local() && resolve::matches_target(spec, pod))
        .map(|pod| (pod, ready(pod, &flags)))
        .collect();
    if p.targets_ready {
        if targets.is_empty() {
            return Err(failed("targets_ready", "no target pod on this host".into()));
        }
        if let Some((pod, Err(why))) = targets.iter().find(|(_, r)| r.is_err()) {
            let not = targets.iter().filter(|(_, r)| r.is_err()).count();
            return Err(failed(
                "targets_ready",
                format!(
                    "{not} of {} target pods not ready; {}/{}: {why}",
                    targets.len(),
                    pod.namespace,
                    pod.name
                ),
            ));
        }
    }
    if let Some(min) = p.min_ready_targets {
        let ok = targets.iter().filter(|(_, r)| r.is_ok()).count();
        if (ok as u64) < u64::from(min) {
            return Err(failed(
                "min_ready_targets",
                format!("{ok} of {} target pods ready, need {min}", targets.len()),
            ));
        }
    }
    if let Some(h) = &p.http {
        let netns = pod_netns("preflight.http.from_pod", h.from_pod.as_deref(), pods)
            .map_err(AgentError::Invalid)?;
        let from = h
            .from_pod
            .as_deref()
            .map_or(String::new(), |p| format!(" from {p}"));
        if let Err(e) = super::probe::http_ok(h, netns.as_deref()) {
            let want = h
                .expect_status
                .map_or("a 2xx or 3xx status".into(), |s| format!("status {s}"));
            return Err(failed(
                "http",
                format!("GET {}{from}: {e}; wanted {want}", h.url),
            ));
        }
    }
    Ok(())
}

/// Flags of the agent namespace's interfaces by name.
fn interface_flags() -> BTreeMap<String, InterfaceFlags> {
    nix::ifaddrs::getifaddrs()
        .map(|all| {
            all.map(|i| (i.interface_name, i.flags))
                .collect::<BTreeMap<_, _>>()
        })
        .unwrap_or_default()
}

/// Whether a local pod is ready (see the module docs), with why not.
fn ready(pod: &Pod, flags: &BTreeMap<String, InterfaceFlags>) -> Result<(), String> {
    if pod.netns.is_none() {
        return Err("its network namespace was not found".into());
    }
    if let Some(problem) = &pod.problem {
        return Err(problem.clone());
    }
    for h in &pod.host_ifs {
        match flags.get(&h.name) {
            None => return Err(format!("host veth {} is gone", h.name)),
            Some(f) if !f.contains(InterfaceFlags::IFF_UP) => {
                return Err(format!("host veth {} is down", h.name));
            }
            Some(f) if !f.contains(InterfaceFlags::IFF_RUNNING) => {
                return Err(format!("host veth {} has no carrier", h.name));
            }
            Some(_) => {}
        }
    }
    Ok(())
}
