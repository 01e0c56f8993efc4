//! The suite's starting point: the cluster from the environment (`cargo xtask test` brings it
//! up), Faultline deployed from `deploy/` and the inference workload, both idempotently, so
//! each test starts from the same state whatever ran before it.
use std::time::{Duration, Instant};

use fault_api::client::Client;
use fault_testkit::real_node::{
    Cluster,
    deploy::{Faultline, SYSTEM_NS},
    pods::KubePod,
    workload::NS,
};

pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);

/// The cluster with Faultline and the workload running.
pub struct Node {
    pub cluster: Cluster,
    pub faultline: Faultline,
}

/// The workload's pods by role (Ready ones).
pub struct Topo {
    pub frontend: KubePod,
    pub decode: Vec<KubePod>,
    pub prefill: Vec<KubePod>,
    pub nats: KubePod,
}

/// The cluster from the environment, ready; panics with the reason when there is none.
pub fn node() -> Node {
    let cluster = match Cluster::from_env() {
        Ok(Some(c)) => c,
        Ok(None) => panic!(
            "no cluster: FAULTLINE_NODE_KUBECONFIG is unset (run through `cargo xtask test`, or \
             `cargo xtask cluster up` and set the variables `cargo xtask cluster status` prints)"
        ),
        Err(e) => panic!("{e:#}"),
    };
    let t = Instant::now();
    let faultline = cluster
        .deploy_faultline(DEPLOY_TIMEOUT)
        .unwrap_or_else(|e| panic!("deploying Faultline: {e:#}\n{}", diagnose(&cluster)));
    cluster
        .deploy_workload(DEPLOY_TIMEOUT)
        .unwrap_or_else(|e| panic!("deploying the workload: {e:#}\n{}", diagnose(&cluster)));
    eprintln!(
        "node: Faultline and the workload ready ({} ms)",
        t.elapsed().as_millis()
    );
    Node { cluster, faultline }
}

/// What the cluster says about Faultline's and the workload's pods, for failures.
pub fn diagnose(c: &Cluster) -> String {
    let mut s = String::new();
    for args in [
        vec!["get", "pods", "-A", "-o", "wide"],
        vec!["-n", SYSTEM_NS, "get", "events", "--sort-by=.lastTimestamp"],
        vec![
            "-n",
            SYSTEM_NS,
            "logs",
            "daemonset/faultline-node",
            "--tail=40",
        ],
        vec![
            "-n",
            SYSTEM_NS,
            "logs",
            "deployment/faultline-api",
            "--tail=40",
        ],
    ] {
        s.push_str(&format!("--- kubectl {}\n", args.join(" ")));
        s.push_str(&c.kubectl(&args).unwrap_or_else(|e| format!("{e:#}\n")));
    }
    s
}

impl Node {
    /// A client of the in-cluster API through its Service.
    pub fn api(&self) -> Client {
        Client::new(&self.faultline.api_url).with_token(Some(self.faultline.token.clone()))
    }

    /// The workload's Ready pods by role.
    pub fn topo(&self) -> Topo {
        let get = |sel: &str| self.cluster.ready_pods(NS, sel).expect("listing pods");
        let one = |sel: &str| get(sel).into_iter().next().expect("a Ready pod");
        Topo {
            frontend: one("app=frontend"),
            decode: get("app=vllm-decode"),
            prefill: get("app=vllm-prefill"),
            nats: one("app=nats"),
        }
    }

    /// A Service's cluster IP in the workload's namespace.
    pub fn service_ip(&self, name: &str) -> std::net::Ipv4Addr {
        self.cluster
            .kubectl(&[
                "-n",
                NS,
                "get",
                "service",
                name,
                "-o",
                "jsonpath={.spec.clusterIP}",
            ])
            .expect("service")
            .trim()
            .parse()
            .expect("a cluster IP")
    }

    /// `kubectl apply -f -` of a NetworkFault in the workload's namespace.
    pub fn apply_fault(&self, name: &str, spec: serde_json::Value) {
        let obj = serde_json::json!({
            "apiVersion": "faultline.dev/v1alpha1", "kind": "NetworkFault",
            "metadata": {"name": name, "namespace": NS}, "spec": spec
        });
        self.cluster
            .kubectl_stdin(&["apply", "-f", "-"], Some(&obj.to_string()))
            .expect("kubectl apply NetworkFault");
    }

    /// `kubectl delete networkfault NAME`.
    pub fn delete_fault(&self, name: &str) {
        self.cluster
            .kubectl(&[
                "-n",
                NS,
                "delete",
                "networkfault",
                name,
                "--ignore-not-found",
                "--wait=false",
            ])
            .expect("kubectl delete NetworkFault");
    }

    /// Deletes every NetworkFault of the workload's namespace.
    pub fn delete_all_faults(&self) {
        let _ =
            self.cluster
                .kubectl(&["-n", NS, "delete", "networkfaults", "--all", "--wait=false"]);
    }

    /// The NetworkFault's status once its phase is `phase`.
    pub fn wait_phase(&self, name: &str, phase: &str, timeout: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let nf = self
                .cluster
                .json(&["-n", NS, "get", "networkfault", name])
                .expect("kubectl get networkfault");
            if nf["status"]["phase"] == phase {
                return nf["status"].clone();
            }
            assert!(
                start.elapsed() < timeout,
                "{name} not {phase} within {timeout:?}: {}\n{}",
                nf["status"],
                diagnose(&self.cluster)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A NetworkFault name unique to this run (`<base>-<pid>-<n>`): a test reusing a name of an
/// earlier run would meet the node agent's memory of the old object (see
/// `a_networkfault_recreated_under_the_same_name_is_applied_again`).
pub fn unique(base: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{base}-{}-{n}", std::process::id())
}

/// Deletes every NetworkFault of the workload's namespace when dropped, also when the test
/// panics (the next test's [`node`] scales the workload back).
pub struct Cleanup<'a>(pub &'a Node);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.0.delete_all_faults();
    }
}

/// The wall-clock instant `rfc3339` on the `CLOCK_BOOTTIME` axis of stream timestamps, ns.
pub fn boot_ns_of(rfc3339: &str) -> u64 {
    let at: jiff::Timestamp = rfc3339.parse().expect("an RFC 3339 timestamp");
    let (wall, boot) = (jiff::Timestamp::now(), fault_testkit::boottime_ns());
    let ahead = at.duration_since(wall).as_nanos();
    (boot as i128 + ahead) as u64
}
