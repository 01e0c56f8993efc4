//! Section 6, on a real node: the time from an API request through the `fault-injection-api` Service
//! (kube-proxy's DNAT to the API pod, which writes a NetworkFault to the API server and
//! answers once the node agent pod reports it applied) to the first packet affected, and from
//! the recover request to the first packet through; between two pods of the inference
//! workload that got their veths from the CNI. The one-machine cluster of `cargo xtask
//! cluster` runs for the section and is removed after it.
use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use fault_testkit::real_node::{Cluster, measure, workload::NS};

use super::{Options, Report};
use crate::{cluster, image};

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

fn measure(r: &mut Report, opts: &Options, c: &Cluster) -> Result<()> {
    let f = c.deploy_faultline(TIMEOUT)?;
    c.deploy_workload(TIMEOUT)?;
    let target = c
        .ready_pods(NS, "app=vllm-decode")?
        .into_iter()
        .next()
        .context("no decode pod")?
        .handle()?;
    let peer = c
        .ready_pods(NS, "app=vllm-prefill")?
        .into_iter()
        .next()
        .context("no prefill pod")?
        .handle()?;
    let api = fault_api::client::Client::new(&f.api_url).with_token(Some(f.token.clone()));
    let n = if opts.quick { 10 } else { 50 };
    let cycles = measure::api_cycles(&api, NS, &target, &peer, "app=vllm-prefill", n, 2000)?;
    let apply: Vec<f64> = cycles.iter().map(|c| c.apply_ms).collect();
    let lift: Vec<f64> = cycles.iter().map(|c| c.lift_ms).collect();
    let q = measure::quantile;
    writeln!(
        r.out,
        "| request | cycles | p50 ms | p99 ms | max ms |\n| --- | --- | --- | --- | --- |"
    )?;
    writeln!(
        r.out,
        "| POST /v1/faults -> first datagram lost | {} | {:.0} | {:.0} | {:.0} |",
        apply.len(),
        q(&apply, 0.5),
        q(&apply, 0.99),
        q(&apply, 1.0)
    )?;
    writeln!(
        r.out,
        "| DELETE /v1/faults/{{id}} -> first datagram through | {} | {:.0} | {:.0} | {:.0} |\n",
        lift.len(),
        q(&lift, 0.5),
        q(&lift, 0.99),
        q(&lift, 1.0)
    )?;
    let p99 = q(&apply, 0.99);
    r.target(
        "API request (through the Service) to first packet affected, p99 <= 300 ms, real node",
        format!("p50 {:.0} ms, p99 {p99:.0} ms ({} cycles)", q(&apply, 0.5), apply.len()),
        p99 <= 300.0,
        "the API pod writes the NetworkFault, the controller sets its expiry, the node agent's watch delivers it and the agent reports back through the API server before the request returns",
    );
    writeln!(
        r.out,
        "Command lines of this run:\n\n```sh\ncargo xtask cluster up\n# Faultline: kubectl apply -k <overlay of deploy/ setting the image {}>\n# API: POST {}/v1/faults {{\"namespace\":\"{NS}\",\"pod_prefix\":\"{}\",\"to_selectors\":[\"app=vllm-prefill\"],\"partition\":\"packets\",\"duration\":\"5m\"}} ; DELETE {}/v1/faults/<id>\n# stream: UDP, 2,000 datagrams/s, {} -> {}\n```\n",
        c.faultline_image,
        f.api_url,
        target.name(),
        f.api_url,
        target.name(),
        peer.name()
    )?;
    Ok(())
}

/// The section: cluster up, images, measure, cluster down (also on failure).
pub fn run(r: &mut Report, opts: &Options) -> Result<()> {
    writeln!(r.out, "## 6. API request to first packet on a real node\n")?;
    writeln!(
        r.out,
        "A one-machine Kubernetes 1.20 node (`cargo xtask cluster up`: kubelet, containerd + runc, CNI bridge, kube-proxy in iptables mode), Faultline installed with `kubectl apply -k` of `deploy/` (its image built from `deploy/Containerfile`), the inference workload as StatefulSets and a Deployment. The request goes from this host to the API's Service (cluster IP); the partition is the decode pod's egress to the prefill pods; a 2,000 datagram/s stream decode -> prefill (0.5 ms resolution) tells when it acts.\n"
    )?;
    let info = cluster::up()?;
    let result = (|| {
        let img = image::faultline(&image::musl_binaries()?)?;
        cluster::import(&img)?;
        let c = Cluster {
            kubeconfig: info.kubeconfig.clone(),
            faultline_image: img.reference.clone(),
            workload_image: info.workload_image.clone(),
        };
        measure(r, opts, &c)
    })();
    let down = cluster::down();
    result.and(down)
}
