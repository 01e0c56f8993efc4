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

impl Topology {
    /// Adds the inference pods (see [`Dynamo`]) to the topology, in namespace `dynamo`.
    pub fn dynamo(&mut self) -> Result<Dynamo> {
        let ns = DYNAMO_NAMESPACE;
        Ok(Dynamo {
            frontend: self.add_pod(
                ns,
                "frontend-0",
                &[("app", "frontend"), (COMPONENT, "frontend")],
            )?,
            decode0: self.add_pod(
                ns,
                "vllm-decode-0",
                &[("app", "vllm-decode"), (COMPONENT, "worker")],
            )?,
            decode1: self.add_pod(
                ns,
                "vllm-decode-1",
                &[("app", "vllm-decode"), (COMPONENT, "worker")],
            )?,
            prefill: self.add_pod(
                ns,
                "vllm-prefill-0",
                &[("app", "vllm-prefill"), (COMPONENT, "worker")],
            )?,
            nats: self.add_pod(
                ns,
                "nats-0",
                &[("app.kubernetes.io/name", "nats"), ("app", "nats")],
            )?,
        })
    }
}
