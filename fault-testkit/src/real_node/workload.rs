//! The inference topology as users run it, in namespace `dynamo`: `frontend` (StatefulSet, 1),
//! `vllm-decode` (StatefulSet, 2), `vllm-prefill` (Deployment, 1, behind Service
//! `vllm-prefill`), `nats` (StatefulSet, 1, behind Service `nats`). Labels are those of the
//! single-host topology ([`crate::Dynamo`]), so faults and the Python suite name the same pods.
//! Every container is the workload image running `fault-testenv serve`: TCP echo on 8000
//! (and 4222 on NATS), UDP echo on 9100, with a TCP readiness probe.
use std::time::Duration;

use anyhow::Result;

use super::Cluster;

/// The workload's namespace.
pub const NS: &str = "dynamo";

const COMPONENT: &str = "nvidia.com/dynamo-component-type";

struct Workload {
    kind: &'static str,
    name: &'static str,
    replicas: u32,
    labels: &'static [(&'static str, &'static str)],
    tcp: &'static [u16],
}

const WORKLOADS: &[Workload] = &[
    Workload {
        kind: "StatefulSet",
        name: "frontend",
        replicas: 1,
        labels: &[("app", "frontend"), (COMPONENT, "frontend")],
        tcp: &[8000],
    },
    Workload {
        kind: "StatefulSet",
        name: "vllm-decode",
        replicas: 2,
        labels: &[("app", "vllm-decode"), (COMPONENT, "worker")],
        tcp: &[8000],
    },
    Workload {
        kind: "Deployment",
        name: "vllm-prefill",
        replicas: 1,
        labels: &[("app", "vllm-prefill"), (COMPONENT, "worker")],
        tcp: &[8000],
    },
    Workload {
        kind: "StatefulSet",
        name: "nats",
        replicas: 1,
        labels: &[("app.kubernetes.io/name", "nats"), ("app", "nats")],
        tcp: &[4222, 8000],
    },
];

fn labels_json(l: &[(&str, &str)]) -> serde_json::Value {
    l.iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn workload_json(w: &Workload, image: &str) -> serde_json::Value {
    let mut args = vec!["serve".to_owned()];
    for p in w.tcp {
        args.extend(["--tcp".into(), p.to_string()]);
    }
    args.extend(["--udp".into(), "9100".into()]);
    let ports: Vec<_> = w
        .tcp
        .iter()
        .map(|p| serde_json::json!({"containerPort": p, "protocol": "TCP"}))
        .chain([serde_json::json!({"containerPort": 9100, "protocol": "UDP"})])
        .collect();
    let labels = labels_json(w.labels);
    let mut spec = serde_json::json!({
        "replicas": w.replicas,
        "selector": {"matchLabels": {"app": labels["app"]}},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "terminationGracePeriodSeconds": 2,
                "enableServiceLinks": false,
                "automountServiceAccountToken": false,
                "containers": [{
                    "name": "app",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "args": args,
                    "ports": ports,
                    "readinessProbe": {"tcpSocket": {"port": w.tcp[0]}, "periodSeconds": 1}
                }]
            }
        }
    });
    if w.kind == "StatefulSet" {
        spec["serviceName"] = w.name.into();
        spec["podManagementPolicy"] = "Parallel".into();
    }
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": w.kind,
        "metadata": {"name": w.name, "namespace": NS, "labels": labels},
        "spec": spec
    })
}

fn service_json(name: &str, app: &str, tcp: &[u16]) -> serde_json::Value {
    let ports: Vec<_> = tcp
        .iter()
        .map(|p| serde_json::json!({"name": format!("tcp-{p}"), "port": p, "protocol": "TCP"}))
        .chain([serde_json::json!({"name": "udp-9100", "port": 9100, "protocol": "UDP"})])
        .collect();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"app": app}, "ports": ports}
    })
}

/// Every object of the topology, as one `List` document.
pub fn manifests(image: &str) -> serde_json::Value {
    let mut items = vec![
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    ];
    items.extend(WORKLOADS.iter().map(|w| workload_json(w, image)));
    items.push(service_json("vllm-prefill", "vllm-prefill", &[8000]));
    items.push(service_json("nats", "nats", &[4222]));
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

impl Cluster {
    /// Applies the topology (idempotent) and waits until every workload is rolled out with
    /// its replica count and no pod of the namespace is terminating.
    pub fn deploy_workload(&self, timeout: Duration) -> Result<()> {
        let text = manifests(&self.workload_image).to_string();
        self.kubectl_stdin(&["apply", "-f", "-"], Some(&text))?;
        let t = format!("--timeout={}s", timeout.as_secs());
        for w in WORKLOADS {
            let what = format!("{}/{}", w.kind.to_lowercase(), w.name);
            // A previous test may have scaled it: back to the topology's count.
            self.kubectl(&[
                "-n",
                NS,
                "scale",
                &what,
                &format!("--replicas={}", w.replicas),
            ])?;
            self.kubectl(&["-n", NS, "rollout", "status", &what, &t])?;
        }
        // Pods of an earlier scale-down may still be terminating: wait until they are gone.
        let start = std::time::Instant::now();
        loop {
            let pods = self.pods(NS, "")?;
            if pods.iter().all(|p| p.ready && !p.terminating) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
                anyhow::bail!("pods of {NS} not all Ready within {timeout:?}: {names:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
