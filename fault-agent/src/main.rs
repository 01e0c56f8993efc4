//! `fault-agent`: Faultline's node agent.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use fault_agent::{
    api::{limits::ApiLimits, tls::TlsFiles},
    capacity::{DEFAULT_MAX_RULES_PER_FAULT, Limits},
    core::CoreConfig,
    dataplane::{self, Pins},
    standalone, store,
    uplinks::UplinkChoice,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "fault-agent",
    version,
    about = "Faultline's agent: eBPF network faults between pods"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn duration(s: &str) -> Result<Duration, String> {
    s.parse::<fault_api::FaultDuration>().map(|d| d.get())
}

fn mark_bit(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"));
    let value = match digits {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    dataplane::check_mark_bit(value)
}

fn daemonset(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!(
            "{s:?}: expected NAMESPACE/NAME, e.g. faultline-system/faultline-node"
        )),
    }
}

fn uplink_choice(values: &[String], default: UplinkChoice) -> Result<UplinkChoice> {
    UplinkChoice::from_args(values, default).map_err(anyhow::Error::msg)
}

fn cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|e| format!("{s:?} is neither a CIDR nor an address: {e}"))
}

/// What both agents that own a datapath take.
#[derive(clap::Args)]
struct DatapathArgs {
    /// How to attach: `auto` (TCX on Linux >= 6.6, else netlink), or `netlink` (a clsact
    /// qdisc and cls_bpf filters, as on older kernels).
    #[arg(long, default_value = "auto", value_parser = ["auto", "netlink"])]
    attach: String,
    /// Addresses the node translates to pod addresses after Faultline's hooks (repeatable,
    /// CIDR or address): the Service CIDR (kube-apiserver's --service-cluster-ip-range),
    /// externalIPs, node addresses that serve NodePorts. They are never taken for a peer of a
    /// broader prefix: the packet is judged after the translation, by its real peer. In node
    /// mode, ClusterIPs, externalIPs, load-balancer IPs and node addresses come from the API too.
    #[arg(long = "service-cidr", value_name = "CIDR", value_parser = cidr)]
    service_cidrs: Vec<ipnet::IpNet>,
    /// Interfaces to other nodes (repeatable), where what local pods send to another node's
    /// Service is judged after the node's NAT: names, `auto` (the default routes' interfaces
    /// and overlay/tunnel devices) or `none`. Default: `auto` in node mode, `none` standalone.
    #[arg(long = "uplink", value_name = "IFACE")]
    uplinks: Vec<String>,
    /// The skb->mark bit the sender's veth sets on a packet it judged, so that the receiver's
    /// veth on the same node does not judge it again (cleared before the pod sees it). One
    /// bit, outside those kubelet, kube-proxy and CNIs use.
    #[arg(long, default_value = "0x40", value_parser = mark_bit)]
    evaluated_mark: u32,
}

/// Limits of the HTTP API (every mode that serves it): each refused with the API's JSON error.
#[derive(clap::Args)]
struct ApiArgs {
    /// Largest request body accepted, in bytes (413 above).
    #[arg(long, default_value_t = ApiLimits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Requests per second accepted from all clients together, sustained (429 above; 0: no limit).
    #[arg(long, default_value_t = ApiLimits::default().rate_per_sec)]
    rate_limit: u32,
    /// Requests accepted at once above the sustained rate (the token bucket's size).
    #[arg(long, default_value_t = ApiLimits::default().rate_burst)]
    rate_burst: u32,
    /// Requests served at once (503 above).
    #[arg(long, default_value_t = ApiLimits::default().max_concurrent)]
    max_concurrent_requests: usize,
    /// Longest time to answer a request (504 after).
    #[arg(long, default_value = "30s", value_parser = duration)]
    request_timeout: Duration,
    /// Append the audit log (JSON lines: who, what, when, result of every change and every
    /// refused attempt) to this file; it always goes to the `audit` log target too.
    #[arg(long, value_name = "PATH")]
    audit_log: Option<PathBuf>,
}

impl ApiArgs {
    /// Opens `--audit-log`, if given.
    fn open_audit_log(&self) -> anyhow::Result<()> {
        self.audit_log
            .as_deref()
            .map_or(Ok(()), fault_agent::audit::open)
    }

    fn limits(&self) -> ApiLimits {
        ApiLimits {
            max_body_bytes: self.max_body_bytes,
            rate_per_sec: self.rate_limit,
            rate_burst: self.rate_burst,
            max_concurrent: self.max_concurrent_requests,
            request_timeout: self.request_timeout,
        }
    }
}

/// HTTPS for the API (`standalone`, `api`): a certificate and key given as files, or a folder
/// that may hold them (an optional Secret). Without either the API is plain HTTP.
#[derive(clap::Args)]
struct TlsArgs {
    /// Serve HTTPS with this certificate chain (PEM: the server's certificate, then any
    /// intermediates); needs --tls-key-file. Re-read when it changes.
    #[arg(
        long,
        value_name = "PATH",
        requires = "tls_key_file",
        conflicts_with = "tls_dir"
    )]
    tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM: PKCS#8, PKCS#1 or SEC1); needs --tls-cert-file.
    #[arg(
        long,
        value_name = "PATH",
        requires = "tls_cert_file",
        conflicts_with = "tls_dir"
    )]
    tls_key_file: Option<PathBuf>,
    /// Serve HTTPS iff this folder holds `tls.crt` and `tls.key` (a mounted `kubernetes.io/tls`
    /// Secret); plain HTTP when it holds neither or does not exist; an error with only one.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
}

impl TlsArgs {
    /// The certificate and key to serve, if any (see the flags).
    fn files(&self) -> anyhow::Result<Option<TlsFiles>> {
        Ok(
            match (&self.tls_cert_file, &self.tls_key_file, &self.tls_dir) {
                (Some(cert), Some(key), _) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                (_, _, Some(dir)) => TlsFiles::in_dir(dir)?,
                _ => None,
            },
        )
    }
}

/// What no fault may target or cut off (every mode; see `fault_agent::protect`). Always
/// protected: `kube-system`, `monitoring/prometheus*`, `monitoring/grafana*`, and the agent's own
/// namespace (env `POD_NAMESPACE`, set in the manifests).
#[derive(clap::Args)]
struct ProtectionArgs {
    /// A namespace no fault may target, and whose pods are carved out of every fault's peers
    /// (repeatable).
    #[arg(long = "protected-namespace", value_parser = namespace_arg)]
    namespaces: Vec<String>,
    /// Pods no fault may target or cut off, as `namespace/name-prefix` (repeatable).
    #[arg(long = "protected-pod")]
    pods: Vec<fault_agent::protect::ProtectedPod>,
    /// Addresses (CIDR) no fault may target or cut off (repeatable): e.g. the API server's,
    /// the nodes'.
    #[arg(long = "protected-cidr")]
    cidrs: Vec<ipnet::IpNet>,
}

impl ProtectionArgs {
    fn protection(&self) -> fault_agent::protect::Protection {
        let own = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty());
        fault_agent::protect::Protection::with_defaults(
            own.as_deref(),
            &self.namespaces,
            &self.pods,
            &self.cidrs,
        )
    }
}

/// Where the cluster's kill switch is (see `fault_agent::kube::kill_switch`).
#[derive(clap::Args)]
struct KillSwitchArgs {
    /// The ConfigMap that engages the kill switch on every node (NAMESPACE/NAME). Default:
    /// `faultline-kill-switch` in the agent's namespace (env `POD_NAMESPACE`, else
    /// `faultline-system`).
    #[arg(long = "kill-switch-configmap", value_parser = daemonset)]
    configmap: Option<(String, String)>,
}

impl KillSwitchArgs {
    fn location(&self) -> fault_agent::kube::kill_switch::Location {
        use fault_agent::kube::kill_switch::Location;
        match &self.configmap {
            Some((namespace, name)) => Location {
                namespace: namespace.clone(),
                name: name.clone(),
            },
            None => Location::in_namespace(std::env::var("POD_NAMESPACE").ok().as_deref()),
        }
    }
}

/// Limits and the protection override (every mode; see `fault_agent::guards`).
#[derive(clap::Args)]
struct GuardArgs {
    /// Longest fault in one namespace, as NAMESPACE=DURATION (repeatable; e.g. team-a=10m).
    /// Only tightens --max-duration; faults there without a duration are capped at it.
    #[arg(long = "max-duration-for", value_name = "NS=DUR", value_parser = fault_agent::guards::parse_namespace_duration)]
    max_duration_for: Vec<(String, Duration)>,
    /// The most target pods one fault may act on (its blast radius's largest count).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_targets: Option<u32>,
    /// Honour a fault's `override_protection` (each use is logged under the `audit` target).
    #[arg(long)]
    allow_protection_override: bool,
}

impl GuardArgs {
    fn guards(&self) -> fault_agent::guards::Guards {
        fault_agent::guards::Guards {
            max_duration_for: self.max_duration_for.iter().cloned().collect(),
            max_targets: self.max_targets.map(|n| n as usize),
            allow_protection_override: self.allow_protection_override,
        }
    }
}

fn namespace_arg(s: &str) -> Result<String, String> {
    fault_api::spec::check_namespace("--protected-namespace", s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

fn max_faults(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    let slots = fault_common::MAX_FAULTS as usize;
    if n == 0 || n > slots {
        return Err(format!(
            "must be in [1, {slots}] (the kernel's fault slots), got {n}"
        ));
    }
    Ok(n)
}

fn max_rules(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    let budget = fault_common::MAX_RULES as usize / 2;
    if n == 0 || n > budget {
        return Err(format!(
            "must be in [1, {budget}] (half of FL_RULES: see DEVELOPERS.md, capacity), got {n}"
        ));
    }
    Ok(n)
}

#[derive(Subcommand)]
enum Command {
    /// Run on a single host: pods are network namespaces listed in an inventory file.
    Standalone {
        /// Inventory YAML (pods: namespace, name, labels, netns). Reloaded when it changes.
        #[arg(long)]
        inventory: PathBuf,
        /// API address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where faults and attachment records are kept (they survive a restart).
        #[arg(long, default_value = "/var/lib/faultline")]
        state_dir: PathBuf,
        /// bpffs folder for this agent's pinned maps and links.
        #[arg(long, default_value = "/sys/fs/bpf/faultline")]
        bpffs: PathBuf,
        /// Longest fault, and the deadline of faults asked without a duration (e.g. 1h, 30m).
        #[arg(long, default_value = "1h", value_parser = duration)]
        max_duration: Duration,
        /// How long ended faults stay listed.
        #[arg(long, default_value = "1h", value_parser = duration)]
        retention: Duration,
        /// How often pods' network namespaces are re-read for address changes.
        #[arg(long, default_value = "1s", value_parser = duration)]
        rescan: Duration,
        #[command(flatten)]
        datapath: DatapathArgs,
        /// File holding the API's bearer token (first line). Without it the API listens on
        /// loopback only, unless --insecure-no-auth.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Serve the API without a token on a non-loopback --listen address.
        #[arg(long)]
        insecure_no_auth: bool,
        #[command(flatten)]
        tls: TlsArgs,
        /// Live faults at once (409 above).
        #[arg(long, default_value_t = fault_common::MAX_FAULTS as usize, value_parser = max_faults)]
        max_faults: usize,
        /// FL_RULES entries one fault may need (409 above).
        #[arg(long, default_value_t = DEFAULT_MAX_RULES_PER_FAULT, value_parser = max_rules)]
        max_rules_per_fault: usize,
        /// /healthz fails once syncs have kept failing this long.
        #[arg(long, default_value = "2m", value_parser = duration)]
        liveness_threshold: Duration,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        protect: ProtectionArgs,
        #[command(flatten)]
        guards: GuardArgs,
    },
    /// Print the API's OpenAPI document (JSON).
    Openapi,
    /// Print the NetworkFault CRD (YAML).
    Crd,
    /// Run on a Kubernetes node (DaemonSet): apply the cluster's NetworkFaults to this node's pods.
    Node {
        /// This node's name (the downward API's spec.nodeName).
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        /// Read-only API and health endpoints.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: SocketAddr,
        /// File holding the read-only API's bearer token (first line): every route but
        /// /healthz, /readyz and /health needs it, /metrics too. Without it the API is open to
        /// any process that reaches --listen.
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        #[arg(long, default_value = "/var/lib/faultline")]
        state_dir: PathBuf,
        #[arg(long, default_value = "/sys/fs/bpf/faultline")]
        bpffs: PathBuf,
        /// How long ended faults stay in the local view.
        #[arg(long, default_value = "1h", value_parser = duration)]
        retention: Duration,
        #[command(flatten)]
        datapath: DatapathArgs,
        /// How often counters are written to the NetworkFault status.
        #[arg(long, default_value = "10s", value_parser = duration)]
        status_interval: Duration,
        /// The agent's own DaemonSet (NAMESPACE/NAME). At SIGTERM the agent removes its
        /// programs, links, qdiscs and pins only if that DaemonSet is gone or being deleted
        /// (an uninstall); otherwise (rolling update, eviction) it leaves them acting for the
        /// next agent. Without it, every exit removes them.
        #[arg(long, env = "FAULTLINE_DAEMONSET", value_parser = daemonset)]
        daemonset: Option<(String, String)>,
        /// Longest fault (as the API's --max-duration): a fault's kernel deadline is at most its
        /// creation plus this, whatever its status says.
        #[arg(long, default_value = "1h", value_parser = duration)]
        max_duration: Duration,
        /// /healthz fails once syncs have kept failing this long.
        #[arg(long, default_value = "2m", value_parser = duration)]
        liveness_threshold: Duration,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        protect: ProtectionArgs,
        #[command(flatten)]
        kill_switch: KillSwitchArgs,
        #[command(flatten)]
        guards: GuardArgs,
    },
    /// Serve the API in a cluster (Deployment): faults are NetworkFault objects; also runs the
    /// controller that owns their status, expiry and garbage collection.
    Api {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Longest fault, and the duration of faults asked without one.
        #[arg(long, default_value = "1h", value_parser = duration)]
        max_duration: Duration,
        /// How long ended NetworkFaults are kept before they are deleted.
        #[arg(long, default_value = "1h", value_parser = duration)]
        retention: Duration,
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[arg(long)]
        insecure_no_auth: bool,
        #[command(flatten)]
        tls: TlsArgs,
        /// How long create and recover wait for the node agents to report.
        #[arg(long, default_value = "5s", value_parser = duration)]
        wait: Duration,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        protect: ProtectionArgs,
        #[command(flatten)]
        kill_switch: KillSwitchArgs,
        #[command(flatten)]
        guards: GuardArgs,
    },
    /// Remove every program, link, qdisc and pin an agent instance left (e.g. after a crash).
    Uninstall {
        #[arg(long, default_value = "/var/lib/faultline")]
        state_dir: PathBuf,
        #[arg(long, default_value = "/sys/fs/bpf/faultline")]
        bpffs: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    fault_agent::memory::tune_allocator();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line per cause, no backtrace: this is what the operator reads.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: container logs and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    fault_agent::failpoint::init()?;
    match cli.command {
        Command::Standalone {
            inventory,
            listen,
            state_dir,
            bpffs,
            max_duration,
            retention,
            rescan,
            datapath,
            token_file,
            insecure_no_auth,
            tls,
            max_faults,
            max_rules_per_fault,
            liveness_threshold,
            api,
            protect,
            guards,
        } => {
            api.open_audit_log()?;
            let cfg = standalone::Config {
                inventory,
                listen,
                state_dir,
                bpffs,
                core: CoreConfig {
                    max_duration,
                    retention,
                    limits: Limits {
                        max_faults,
                        max_rules_per_fault,
                    },
                    protection: protect.protection(),
                    guards: guards.guards(),
                },
                rescan,
                force_netlink: datapath.attach == "netlink",
                evaluated_mark: datapath.evaluated_mark,
                uplinks: uplink_choice(&datapath.uplinks, UplinkChoice::None)?,
                service_cidrs: datapath.service_cidrs,
                token_file,
                insecure: insecure_no_auth,
                tls: tls.files()?,
                api_limits: api.limits(),
                liveness_threshold,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(standalone::run(cfg))
        }
        Command::Node {
            node_name,
            listen,
            token_file,
            state_dir,
            bpffs,
            retention,
            datapath,
            status_interval,
            daemonset,
            max_duration,
            liveness_threshold,
            api,
            protect,
            kill_switch,
            guards,
        } => {
            api.open_audit_log()?;
            let cfg = fault_agent::kube::node::Config {
                node: node_name,
                listen,
                state_dir,
                bpffs,
                core: CoreConfig {
                    max_duration,
                    retention,
                    limits: Limits::default(),
                    protection: protect.protection(),
                    guards: guards.guards(),
                },
                force_netlink: datapath.attach == "netlink",
                evaluated_mark: datapath.evaluated_mark,
                uplinks: uplink_choice(&datapath.uplinks, UplinkChoice::Auto)?,
                service_cidrs: datapath.service_cidrs,
                status_interval,
                daemonset,
                token_file,
                api_limits: api.limits(),
                liveness_threshold,
                kill_switch: kill_switch.location(),
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(fault_agent::kube::node::run(cfg))
        }
        Command::Api {
            listen,
            max_duration,
            retention,
            token_file,
            insecure_no_auth,
            tls,
            wait,
            api,
            protect,
            kill_switch,
            guards,
        } => {
            api.open_audit_log()?;
            let cfg = fault_agent::kube::api_mode::Config {
                listen,
                max_duration,
                retention,
                token_file,
                insecure: insecure_no_auth,
                tls: tls.files()?,
                wait,
                api_limits: api.limits(),
                protection: protect.protection(),
                kill_switch: kill_switch.location(),
                guards: guards.guards(),
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(fault_agent::kube::api_mode::run(cfg))
        }
        Command::Crd => {
            print!("{}", fault_agent::kube::crd_yaml());
            Ok(())
        }
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&fault_agent::api::openapi::document())?
            );
            Ok(())
        }
        Command::Uninstall { state_dir, bpffs } => uninstall(&state_dir, &bpffs),
    }
}

/// `fault-agent uninstall`: removes what the records and pins of a state dir say an agent
/// made, going on past failures; refuses while an agent holds the state dir. What could not
/// be removed stays recorded (a second run retries it) and is listed in the error.
fn uninstall(state_dir: &std::path::Path, bpffs: &std::path::Path) -> Result<()> {
    use fault_agent::failpoint::{Phase, phase};
    let _phase = phase(Phase::Uninstall);
    // No state dir: no agent ever ran on it (an agent creates it), only pins may remain.
    let _lock = if state_dir.exists() {
        Some(store::StateLock::acquire(state_dir)?)
    } else {
        None
    };
    let records = store::load_attachments(state_dir)?;
    let fq = store::load_qdiscs(state_dir)?;
    let left = dataplane::uninstall(&Pins::new(bpffs), &records, &fq);
    if state_dir.exists() {
        let kept: Vec<_> = left.records.iter().map(|(r, _)| r.clone()).collect();
        let kept_fq: Vec<_> = left.fq.iter().map(|(r, _)| r.clone()).collect();
        store::save_attachments(state_dir, &kept)?;
        store::save_qdiscs(state_dir, &kept_fq)?;
    }
    if left.is_empty() {
        eprintln!(
            "removed what the agent made ({} interfaces, {} qdiscs, pins under {})",
            records.len(),
            fq.len(),
            bpffs.display()
        );
        return Ok(());
    }
    let mut lines = Vec::new();
    for (r, e) in &left.records {
        let ns = r
            .netns
            .as_ref()
            .map_or(String::new(), |n| format!(" in {}", n.display()));
        lines.push(format!("  interface {}{ns}: {e:#}", r.ifname));
    }
    for (r, e) in &left.fq {
        lines.push(format!("  fq on {}: {e:#}", r.iface.ifname));
    }
    if let Some(e) = &left.pins {
        lines.push(format!("  pins under {}: {e:#}", bpffs.display()));
    }
    anyhow::bail!(
        "could not remove everything ({} of {} interfaces, {} of {} qdiscs done; what failed stays recorded in {} for another run):\n{}",
        records.len() - left.records.len(),
        records.len(),
        fq.len() - left.fq.len(),
        fq.len(),
        state_dir.display(),
        lines.join("\n")
    )
}
