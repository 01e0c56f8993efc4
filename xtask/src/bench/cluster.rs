//! 4b. Scale in a cluster: 10,000 Pod objects in a real kube-apiserver 1.20 (the tests'
//! `KubeEnv`), 100 of them (plus a peer) real network namespaces on `node-a` where a node
//! agent runs, the other 9,900 placed on another node (Pod objects with addresses in
//! 198.19.0.0/16, as a node agent sees the rest of a cluster). Measured: the node agent's
//! start and memory, faults over all 10,000 pods and with 10,000 CIDRs from the API request
//! (`fault-agent api`, which answers once the node agent reports the fault applied), and how
//! long a new matching pod waits to be covered.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use fault_api::{FaultSpec, FaultState, PartitionMode};
use fault_testkit::{AgentProcess, Family, Pod, Topology, kube::KubeEnv, probe::udp_reachable};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::{
    api::core::v1::{Namespace, Pod as KubePod},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

use super::{Options, Report, commands, other_prefixes, post_line, scale::rss_mib};

const NS: &str = "bench";
const NODE: &str = "node-a";
/// Pod objects created at once.
const CONCURRENCY: usize = 32;

/// A Pod object (what the kubelet would report) for `name` on `node` with `ips`.
struct PodObject {
    name: String,
    labels: serde_json::Value,
    node: &'static str,
    ips: Vec<String>,
}

impl PodObject {
    fn local(p: &Pod) -> Self {
        PodObject {
            name: p.name().to_owned(),
            labels: json!(p.labels()),
            node: NODE,
            ips: vec![p.ipv4().to_string(), p.ipv6().to_string()],
        }
    }
}

/// Creates the Pod object and patches its status to Running with its addresses.
async fn play_kubelet(client: &Client, p: &PodObject) -> Result<()> {
    let api: Api<KubePod> = Api::namespaced(client.clone(), NS);
    let pod: KubePod = serde_json::from_value(json!({
        "metadata": {"name": p.name, "labels": p.labels},
        "spec": {"nodeName": p.node, "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]}
    }))?;
    api.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {}", p.name))?;
    let ips: Vec<_> = p.ips.iter().map(|ip| json!({"ip": ip})).collect();
    let status = json!({"status": {"phase": "Running", "podIP": p.ips[0], "hostIP": "127.0.0.1", "podIPs": ips}});
    api.patch_status(&p.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("status of pod {}", p.name))?;
    Ok(())
}

async fn connect(kube: &KubeEnv) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kube.kubeconfig())?;
    let cfg =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}

/// Installs the CRD of `deploy/crd.yaml` and waits until it is served.
async fn install_crd(client: &Client) -> Result<()> {
    let path = crate::util::root().join("deploy/crd.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "networkfaults.faultline.dev",
        &PatchParams::apply("faultline-bench").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    for _ in 0..100 {
        let c = crds.get("networkfaults.faultline.dev").await?;
        let established = c
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("CRD not established within 10 s")
}

/// Address of remote pod `i` (0..65,000): 198.19.{i / 250}.{1 + i % 250}.
fn remote_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, (i / 250) as u8, (1 + i % 250) as u8)
}

fn timed_create(agent: &AgentProcess, spec: &FaultSpec) -> Result<f64> {
    let t = Instant::now();
    let f = agent.client().create(spec)?;
    let took = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        f.state == FaultState::Active,
        "fault {} is {:?}: {}",
        f.id,
        f.state,
        f.message.unwrap_or_default()
    );
    Ok(took)
}

pub fn run(r: &mut Report, opts: &Options) -> Result<()> {
    let total = if opts.quick { 1_000 } else { 10_000 };
    let local = 100;
    writeln!(r.out, "## 4b. Scale in a cluster\n")?;
    writeln!(
        r.out,
        "A real kube-apiserver 1.20 holds {total} Pod objects in namespace `bench`: {local} targets and one peer are real network namespaces on `{NODE}`, where a node agent (`fault-agent node`) runs; the other {} targets are Pod objects on another node (addresses in 198.19.0.0/16), which is how a node agent sees the rest of a cluster. Faults go through `fault-agent api`, which creates the NetworkFault and answers once the node agent reports it applied (its maps written). Fault over all pods: the peer's traffic to every target (`--to-selector app=target`, {total} destinations). 10,000 rules: the peer with 10,000 destination CIDRs. New pod: a new local target, from its status carrying an address to the peer's packets to it being cut.\n",
        total - local
    )?;
    let kube = KubeEnv::start()?;
    let rt = tokio::runtime::Runtime::new()?;
    let client = rt.block_on(connect(&kube))?;
    rt.block_on(async {
        install_crd(&client).await?;
        let ns: Api<Namespace> = Api::all(client.clone());
        ns.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await?;
        anyhow::Ok(())
    })?;

    let mut topo = Topology::named("bench-cluster")?;
    let peer = topo.add_pod(NS, "peer-0", &[("app", "peer")])?;
    let mut objects = vec![PodObject::local(&peer)];
    let mut targets = Vec::new();
    for i in 0..local {
        let p = topo.add_pod(NS, &format!("t-{i}"), &[("app", "target")])?;
        objects.push(PodObject::local(&p));
        targets.push(p);
    }
    for i in local..total {
        objects.push(PodObject {
            name: format!("t-{i}"),
            labels: json!({"app": "target"}),
            node: "node-b",
            ips: vec![remote_ip(i).to_string()],
        });
    }
    let t = Instant::now();
    rt.block_on(
        futures::stream::iter(objects.iter().map(|o| play_kubelet(&client, o)))
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>(),
    )?;
    let created = t.elapsed().as_secs_f64();

    let cfg = kube.kubeconfig();
    let t = Instant::now();
    let node = AgentProcess::start_node(&cfg, NODE, &[])?;
    let ready = t.elapsed().as_secs_f64();
    let pid = node.pid().context("node agent pid")?;
    let rss0 = rss_mib(pid)?;
    let api = AgentProcess::start_api(&cfg, &["--wait", "30s"])?;
    anyhow::ensure!(
        udp_reachable(
            &peer,
            &targets[0],
            Family::V4,
            9000,
            Duration::from_millis(200)
        )?,
        "peer cannot reach t-0 before any fault"
    );

    let mut all = FaultSpec::new(NS);
    all.pod_prefix = Some("peer-0".into());
    all.to_selectors = vec!["app=target".parse().map_err(anyhow::Error::msg)?];
    all.partition = Some(PartitionMode::Packets);
    let all_ms = timed_create(&api, &all)?;
    anyhow::ensure!(
        !udp_reachable(
            &peer,
            &targets[local - 1],
            Family::V4,
            9000,
            Duration::from_millis(100)
        )?,
        "t-{} still reachable after the fault over all pods",
        local - 1
    );
    let rss1 = rss_mib(pid)?;

    let mut rules = FaultSpec::new(NS);
    rules.pod_prefix = Some("peer-0".into());
    rules.to_cidrs = other_prefixes(10_000);
    rules.loss_percent = Some("1".parse().map_err(anyhow::Error::msg)?);
    let rules_ms = timed_create(&api, &rules)?;
    let rss2 = rss_mib(pid)?;

    let newcomer = topo.add_pod(NS, "t-new", &[("app", "target")])?;
    anyhow::ensure!(
        udp_reachable(
            &peer,
            &newcomer,
            Family::V4,
            9000,
            Duration::from_millis(200)
        )?,
        "new pod cut before it exists in the API"
    );
    let t = Instant::now();
    rt.block_on(play_kubelet(&client, &PodObject::local(&newcomer)))?;
    let mut covered = f64::NAN;
    while t.elapsed() < Duration::from_secs(30) {
        if !udp_reachable(
            &peer,
            &newcomer,
            Family::V4,
            9000,
            Duration::from_millis(20),
        )? {
            covered = t.elapsed().as_secs_f64() * 1e3;
            break;
        }
    }
    let api_rss = api.pid().map(rss_mib).transpose()?.unwrap_or(f64::NAN);
    writeln!(
        r.out,
        "| Pod objects (local) | created s | node agent ready s | node RSS MiB | fault over all pods ms | RSS MiB after | 10,000 rules ms | RSS MiB after | new pod covered ms | API process RSS MiB |"
    )?;
    writeln!(
        r.out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )?;
    writeln!(
        r.out,
        "| {total} ({}) | {created:.1} | {ready:.1} | {rss0:.1} | {all_ms:.1} | {rss1:.1} | {rules_ms:.1} | {rss2:.1} | {covered:.0} | {api_rss:.1} |\n",
        local + 1
    )?;
    writeln!(
        r.out,
        "Reading: the node agent holds every Pod of the cluster (it resolves selectors on any node) but attaches only to its own; a fault over all {total} pods is one NetworkFault object, one compile and one batch of map writes on the node that has the source pod, and the API answers when that node has reported it in the object's status, so the time includes two API-server round trips and a watch event each way.\n"
    )?;
    commands(
        &mut r.out,
        &[
            "# kube-apiserver 1.20 + etcd from `cargo xtask kube-build`; Pods created (POST), then their status merge-patched to Running with their addresses, as a kubelet would".into(),
            format!("KUBECONFIG=<kubeconfig> {}", node.command_line()),
            format!("KUBECONFIG=<kubeconfig> {}", api.command_line()),
            post_line("fault over all pods", &api.api_url(), &all)?,
            post_line("10,000 rules", &api.api_url(), &rules)?,
        ],
    )?;
    drop(api);
    drop(node);
    drop(topo);
    Ok(())
}
