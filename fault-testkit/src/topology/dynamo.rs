//! The standard inference topology (namespace `dynamo`) used by the demo and many tests: a
//! frontend, two decode workers, a prefill worker and NATS.
use anyhow::Result;

use super::{Pod, Topology};

/// Kubernetes namespace of the inference pods.
pub const DYNAMO_NAMESPACE: &str = "dynamo";

const COMPONENT: &str = "nvidia.com/dynamo-component-type";

/// The pods of the inference topology, by role.
#[derive(Debug, Clone)]
pub struct Dynamo {
    /// `frontend-0` {app: frontend, nvidia.com/dynamo-component-type: frontend}.
    pub frontend: Pod,
    /// `vllm-decode-0` {app: vllm-decode, nvidia.com/dynamo-component-type: worker}.
    pub decode0: Pod,
    /// `vllm-decode-1` {app: vllm-decode, nvidia.com/dynamo-component-type: worker}.
    pub decode1: Pod,
    /// `vllm-prefill-0` {app: vllm-prefill, nvidia.com/dynamo-component-type: worker}.
    pub prefill: Pod,
    /// `nats-0` {app.kubernetes.io/name: nats, app: nats}.
    pub nats: Pod,
}

impl Dynamo {
    /// All five pods, in the order frontend, decode0, decode1, prefill, nats.
    pub fn all(&self) -> [&Pod; 5] {
        [
            &self.frontend,
            &self.decode0,
            &self.decode1,
            &self.prefill,
            &self.nats,
        ]
    }
}

/// The inference pods: name and labels, in the order of [`Dynamo::all`].
const PODS: [(&str, &[(&str, &str)]); 5] = [
    (
        "frontend-0",
        &[("app", "frontend"), (COMPONENT, "frontend")],
    ),
    (
        "vllm-decode-0",
        &[("app", "vllm-decode"), (COMPONENT, "worker")],
    ),
    (
        "vllm-decode-1",
        &[("app", "vllm-decode"), (COMPONENT, "worker")],
    ),
    (
        "vllm-prefill-0",
        &[("app", "vllm-prefill"), (COMPONENT, "worker")],
    ),
    (
        "nats-0",
        &[("app.kubernetes.io/name", "nats"), ("app", "nats")],
    ),
];

impl Dynamo {
    /// Makes the inference pods, in the order of [`Dynamo::all`], with `add(name, labels)`
    /// (their Kubernetes namespace is [`DYNAMO_NAMESPACE`]).
    pub(crate) fn build(
        mut add: impl FnMut(&str, &[(&str, &str)]) -> Result<Pod>,
    ) -> Result<Dynamo> {
        let mut next = |i: usize| add(PODS[i].0, PODS[i].1);
        Ok(Dynamo {
            frontend: next(0)?,
            decode0: next(1)?,
            decode1: next(2)?,
            prefill: next(3)?,
            nats: next(4)?,
        })
    }
}

impl Topology {
    /// Adds the inference pods (see [`Dynamo`]) to the topology, in namespace `dynamo`.
    pub fn dynamo(&mut self) -> Result<Dynamo> {
        Dynamo::build(|name, labels| self.add_pod(DYNAMO_NAMESPACE, name, labels))
    }
}
