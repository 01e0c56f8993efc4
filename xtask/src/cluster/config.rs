//! Configuration files of containerd and of the CNI network, written under the state dir.
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use super::layout::{self, BRIDGE, CNI_NETWORK, POD_CIDR};

/// Where the CNI plugins are (Debian's `containernetworking-plugins`).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// containerd's config: its own root, state and socket (nothing in /var/lib/containerd or
/// /run/containerd), the CRI plugin with runc (cgroupfs driver, which cgroup v1 and v2 both
/// have) and the CNI network below. `restrict_oom_score_adj`: a root without CAP_SYS_RESOURCE
/// (as on these machines) cannot lower a process's oom_score_adj, and runc fails every sandbox
/// without it.
pub fn containerd_toml(sandbox_image: &str) -> String {
    let root = layout::state("containerd");
    let state = layout::run("containerd");
    let sock = layout::containerd_socket();
    let opt = layout::state("containerd-opt");
    let cni_conf = layout::state("cni");
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"#,
        root = root.display(),
        state = state.display(),
        sock = sock.display(),
        opt = opt.display(),
        cni_conf = cni_conf.display(),
    )
}

/// The CNI network: a `bridge` (gateway on the bridge, no masquerading: pods only talk to the
/// node and each other) with `host-local` addresses from [`POD_CIDR`] (its allocations kept
/// under the state dir), and `portmap`. containerd adds `loopback` itself.
pub fn cni_conflist() -> String {
    let ipam_dir = layout::state("cni-ipam");
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir,
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

/// Writes both files; returns containerd's config path.
pub fn write(sandbox_image: &str) -> Result<PathBuf> {
    let cni = layout::state("cni");
    std::fs::create_dir_all(&cni)?;
    std::fs::write(cni.join("10-faultline-node.conflist"), cni_conflist())
        .context("writing the CNI conflist")?;
    let path = layout::state("containerd.toml");
    std::fs::write(&path, containerd_toml(sandbox_image)).context("writing containerd.toml")?;
    Ok(path)
}
