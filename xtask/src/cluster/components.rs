//! Command lines of the cluster's components. Every listener is on the node's own address
//! (nothing on 127.0.0.1's usual ports, where single-host agents listen, nor on the machine's
//! real interfaces); insecure ports are off.
use std::{path::PathBuf, process::Command};

use super::layout::{
    self, API_PORT, ETCD_PORTS, NODE_IP, NODE_NAME, POD_CIDR, SERVICE_CIDR, state,
};

/// The cached Kubernetes binaries.
pub fn kube_bin(name: &str) -> PathBuf {
    crate::kube::cache_dir().join("bin").join(name)
}

fn pki(f: &str) -> String {
    state(&format!("pki/{f}")).display().to_string()
}

/// etcd 3.4 (Debian's `etcd-server`).
pub fn etcd() -> Command {
    let (client, peer) = ETCD_PORTS;
    let mut c = Command::new("etcd");
    c.arg("--data-dir")
        .arg(state("etcd"))
        .arg("--name=faultline-node")
        .arg(format!("--listen-client-urls=http://{NODE_IP}:{client}"))
        .arg(format!("--advertise-client-urls=http://{NODE_IP}:{client}"))
        .arg(format!("--listen-peer-urls=http://{NODE_IP}:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://{NODE_IP}:{peer}"
        ))
        .arg(format!(
            "--initial-cluster=faultline-node=http://{NODE_IP}:{peer}"
        ));
    c
}

/// kube-apiserver: Node and RBAC authorization, service accounts, the `kubernetes` Service's
/// endpoint reconciled to the node's address (pods reach the API through its cluster IP).
pub fn apiserver() -> Command {
    let mut c = Command::new(kube_bin("kube-apiserver"));
    c.arg(format!("--etcd-servers=http://{NODE_IP}:{}", ETCD_PORTS.0))
        .arg(format!("--bind-address={NODE_IP}"))
        .arg(format!("--advertise-address={NODE_IP}"))
        .arg(format!("--secure-port={API_PORT}"))
        .arg("--insecure-port=0")
        .arg(format!("--tls-cert-file={}", pki("apiserver.crt")))
        .arg(format!("--tls-private-key-file={}", pki("apiserver.key")))
        .arg(format!("--client-ca-file={}", pki("ca.crt")))
        .arg(format!("--token-auth-file={}", pki("tokens.csv")))
        .arg(format!(
            "--kubelet-client-certificate={}",
            pki("apiserver-kubelet-client.crt")
        ))
        .arg(format!(
            "--kubelet-client-key={}",
            pki("apiserver-kubelet-client.key")
        ))
        .arg("--kubelet-preferred-address-types=InternalIP")
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        .arg(format!("--service-account-key-file={}", pki("sa.pub")))
        .arg(format!(
            "--service-account-signing-key-file={}",
            pki("sa.key")
        ))
        .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
        .arg("--authorization-mode=Node,RBAC")
        .arg("--enable-admission-plugins=NodeRestriction")
        .arg("--profiling=false");
    c
}

/// kube-controller-manager with the controllers a Deployment, a StatefulSet, a DaemonSet and
/// Services need (and the node lifecycle controller, which lifts the new node's `not-ready`
/// taint), acting as each controller's own service account.
pub fn controller_manager() -> Command {
    let mut c = Command::new(kube_bin("kube-controller-manager"));
    c.arg(format!(
        "--kubeconfig={}",
        layout::kubeconfig_of("kube-controller-manager").display()
    ))
    .arg(format!("--bind-address={NODE_IP}"))
    .args(["--secure-port=0", "--port=0", "--leader-elect=false"])
    .arg(
        "--controllers=deployment,replicaset,daemonset,statefulset,endpoint,endpointslice,\
         endpointslicemirroring,serviceaccount,serviceaccount-token,namespace,garbagecollector,podgc,\
         nodelifecycle",
    )
    .arg("--use-service-account-credentials=true")
    .arg(format!(
        "--service-account-private-key-file={}",
        pki("sa.key")
    ))
    .arg(format!("--root-ca-file={}", pki("ca.crt")))
    .arg("--profiling=false");
    c
}

/// kube-scheduler (default profile).
pub fn scheduler() -> Command {
    let mut c = Command::new(kube_bin("kube-scheduler"));
    c.arg(format!(
        "--kubeconfig={}",
        layout::kubeconfig_of("kube-scheduler").display()
    ))
    .arg(format!("--bind-address={NODE_IP}"))
    .args(["--secure-port=0", "--port=0", "--leader-elect=false"])
    .arg("--profiling=false");
    c
}

/// containerd with the config of [`super::config::containerd_toml`].
pub fn containerd(config: &std::path::Path) -> Command {
    let mut c = Command::new("containerd");
    c.arg("--config").arg(config);
    c
}

/// The kubelet against containerd (CRI), cgroupfs driver, no QoS cgroup hierarchy (it works
/// alike on cgroup v1 and v2 and needs nothing from systemd), its own root dir, serving on the
/// node's address with webhook authentication and authorization (`kubectl logs/exec` go
/// through the API server's client certificate).
pub fn kubelet() -> Command {
    let mut c = Command::new(kube_bin("kubelet"));
    c.arg(format!(
        "--kubeconfig={}",
        layout::kubeconfig_of("kubelet").display()
    ))
    .arg("--container-runtime=remote")
    .arg(format!(
        "--container-runtime-endpoint=unix://{}",
        layout::containerd_socket().display()
    ))
    .args(["--cgroup-driver=cgroupfs", "--cgroups-per-qos=false"])
    .arg("--enforce-node-allocatable=")
    .arg("--fail-swap-on=false")
    .arg(format!("--hostname-override={NODE_NAME}"))
    .arg(format!("--node-ip={NODE_IP}"))
    .arg(format!("--root-dir={}", state("kubelet").display()))
    .arg(format!("--cert-dir={}", state("kubelet-pki").display()))
    .arg(format!(
        "--volume-plugin-dir={}",
        state("kubelet-plugins").display()
    ))
    .arg(format!("--address={NODE_IP}"))
    .args(["--port=10250", "--read-only-port=0"])
    .arg(format!("--healthz-bind-address={NODE_IP}"))
    .arg("--healthz-port=10248")
    .args(["--anonymous-auth=false", "--authentication-token-webhook"])
    .arg("--authorization-mode=Webhook")
    .arg(format!("--client-ca-file={}", pki("ca.crt")))
    .args([
        "--image-gc-high-threshold=100",
        "--image-gc-low-threshold=99",
        "--eviction-hard=",
    ])
    .arg("--oom-score-adj=0")
    .arg("--cluster-domain=cluster.local");
    c
}

/// kube-proxy in iptables mode; conntrack settings left as they are.
pub fn kube_proxy() -> Command {
    let mut c = Command::new(kube_bin("kube-proxy"));
    c.arg(format!(
        "--kubeconfig={}",
        layout::kubeconfig_of("kube-proxy").display()
    ))
    .arg("--proxy-mode=iptables")
    .arg(format!("--cluster-cidr={POD_CIDR}"))
    .arg(format!("--hostname-override={NODE_NAME}"))
    .arg(format!("--bind-address={NODE_IP}"))
    .arg(format!("--metrics-bind-address={NODE_IP}:10249"))
    .arg(format!("--healthz-bind-address={NODE_IP}:10256"))
    .args([
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--oom-score-adj=0",
    ]);
    c
}
