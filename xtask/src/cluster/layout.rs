//! Names, addresses and paths of the one-machine cluster. Everything it makes carries one of
//! these names, so that `down` finds it all and nothing clashes with the single-host tests
//! (namespaces `fl<hex>-N`, bridges `fl<hex>br`, pods in 198.18.0.0/16 from 198.18.0.10 up,
//! Service-like VIPs in 198.19.0.0/24).
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

/// The node's name (kubelet `--hostname-override`, kube-proxy, the agent's `NODE_NAME`).
pub const NODE_NAME: &str = "faultline-node";
/// The node's own address, on the loopback interface (label [`HOST_IF`]; kernels without the
/// `dummy` driver, like these machines', have no better home for it): every component listens here
/// (nothing on the machine's real interfaces, nothing on 127.0.0.1's usual ports), and it is
/// the node's InternalIP, the API server's advertised address and hostNetwork pods' address.
/// Outside the pod and Service ranges below and outside the single-host tests' ranges.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 208, 1);
/// The label of [`NODE_IP`] on `lo` (so `ip addr` shows whose it is).
pub const HOST_IF: &str = "lo:fln";
/// The CNI bridge (`bridge` plugin); its gateway address is the first of [`POD_CIDR`].
pub const BRIDGE: &str = "fln-br0";
/// Pods' addresses (host-local IPAM). Inside 198.18.0.0/16 but above the single-host tests'
/// pods (198.18.0.10 .. 198.18.39.x), which live on bridges without host addresses.
pub const POD_CIDR: &str = "198.18.128.0/18";
/// Services' cluster IPs; the first is the `kubernetes` Service.
pub const SERVICE_CIDR: &str = "198.19.192.0/20";
/// The `kubernetes` Service's cluster IP (in the API server's certificate).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 192, 1);
/// The API server's port on [`NODE_IP`].
pub const API_PORT: u16 = 6443;
/// etcd's client and peer ports on [`NODE_IP`].
pub const ETCD_PORTS: (u16, u16) = (2379, 2380);
/// The CNI network's name (also the prefix of its files in libcni's cache).
pub const CNI_NETWORK: &str = "faultline-node";
/// containerd's namespace for Kubernetes (the CRI plugin's).
pub const CTR_NAMESPACE: &str = "k8s.io";

/// Persistent state: etcd data, PKI, configs, containerd's root, the kubelet's root, logs.
pub const STATE: &str = "/var/lib/faultline-node";
/// Runtime state: pid files, containerd's state and socket.
pub const RUN: &str = "/run/faultline-node";

/// The components, in start order (stopped in reverse).
pub const COMPONENTS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
];

/// Paths under [`STATE`] and [`RUN`].
pub fn state(rel: &str) -> PathBuf {
    Path::new(STATE).join(rel)
}

/// A path under [`RUN`].
pub fn run(rel: &str) -> PathBuf {
    Path::new(RUN).join(rel)
}

/// The admin kubeconfig (`system:masters`), what `status` prints.
pub fn admin_kubeconfig() -> PathBuf {
    state("admin.kubeconfig")
}

/// The kubeconfig of one component's own identity.
pub fn kubeconfig_of(component: &str) -> PathBuf {
    state(&format!("kubeconfigs/{component}.kubeconfig"))
}

/// containerd's socket.
pub fn containerd_socket() -> PathBuf {
    run("containerd/containerd.sock")
}

/// A component's log file.
pub fn log_of(component: &str) -> PathBuf {
    state(&format!("logs/{component}.log"))
}

/// A component's pid file.
pub fn pid_of(component: &str) -> PathBuf {
    run(&format!("pids/{component}.pid"))
}

/// The API server's URL.
pub fn api_url() -> String {
    format!("https://{NODE_IP}:{API_PORT}")
}

/// Where built binaries and images are cached (outside the repository): the kube binaries
/// in `kube-v1.20.2/bin`, images in `images/`.
pub fn cache_root() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/faultline")
}
