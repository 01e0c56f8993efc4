//! 6. Load: 100 concurrent API clients creating, listing and recovering faults for 60 s
//!    against a standalone agent with its default limits, latency per call type and answers
//!    by status; meanwhile a paced UDP stream between two pods outside every fault, compared
//!    with the same stream before the load.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use fault_api::{
    FaultSpec, PartitionMode, Percent,
    client::{Client, ClientError},
    fault::CleanupRequest,
};
use fault_testkit::{AgentProcess, Family, StreamOpts, StreamReport, Topology, probe};

use super::{Dist, Options, Report, commands, post_line};

/// Statuses the API documents for these calls under load: success, and the limits' refusals
/// (409 capacity/conflict, 429 rate, 503 concurrency).
const DOCUMENTED: &[u16] = &[200, 201, 409, 429, 503];

#[derive(Default)]
struct Calls {
    /// Latency in ms of each answered call, by call type.
    ms: BTreeMap<&'static str, Vec<f64>>,
    /// Answers by (call type, status); transport errors as status 0.
    status: BTreeMap<(&'static str, u16), u64>,
}

impl Calls {
    fn record<T>(&mut self, call: &'static str, took: Duration, r: &Result<T, ClientError>) {
        let status = match r {
            Ok(_) if call == "create" => 201,
            Ok(_) => 200,
            Err(ClientError::Api { status, .. }) => *status,
            Err(ClientError::Transport(_)) => 0,
        };
        self.ms
            .entry(call)
            .or_default()
            .push(took.as_secs_f64() * 1e3);
        *self.status.entry((call, status)).or_default() += 1;
    }
}

/// The fault client `i` creates: loss on one of the target pods towards a /24 of its own
/// (no pod there), so that no two clients' faults meet in one rule.
fn spec_of(i: usize) -> Result<FaultSpec> {
    let mut s = FaultSpec::new("bench");
    s.pod_prefix = Some(format!("t-{}", i % 4));
    s.to_cidrs = vec![format!("198.19.{}.0/24", 100 + i).parse()?];
    if i.is_multiple_of(2) {
        s.partition = Some(PartitionMode::Packets);
    } else {
        s.loss_percent = Some(Percent::new(5.0).map_err(anyhow::Error::msg)?);
    }
    Ok(s)
}

fn stream_line(what: &str, r: &StreamReport) -> String {
    let lat: Vec<f64> = r
        .arrivals
        .iter()
        .map(|a| a.latency_ns() as f64 / 1e3)
        .collect();
    let d = Dist(lat);
    format!(
        "| {what} | {} | {} | {} | {:.0} | {:.0} | {:.0} |",
        r.sent,
        r.received,
        r.sent - r.received.min(r.sent),
        d.median(),
        d.q(0.99),
        d.max()
    )
}

pub fn run(r: &mut Report, opts: &Options) -> Result<()> {
    let (clients, secs) = (100usize, if opts.quick { 10 } else { 60 });
    let mut topo = Topology::named("bench-load")?;
    for i in 0..4 {
        topo.add_pod("bench", &format!("t-{i}"), &[("app", "target")])?;
    }
    let ua = topo.add_pod("bench", "u-a", &[("app", "u")])?;
    let ub = topo.add_pod("bench", "u-b", &[("app", "u")])?;
    let dir = tempfile::tempdir()?;
    let inventory = dir.path().join("inventory.yaml");
    topo.write_inventory(&inventory)?;
    let agent = AgentProcess::start(&inventory)?;
    let pid = agent.pid().context("agent pid")?;
    let rss0 = super::scale::rss_mib(pid)?;
    let stream = |secs: u64, port: u16| StreamOpts {
        count: 1000 * secs,
        rate_pps: 1000,
        port,
        ..StreamOpts::default()
    };
    let baseline = probe::udp_stream(&ua, &ub, Family::V4, &stream(5, 41_200))?;

    let calls = Arc::new(Mutex::new(Calls::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let during =
        probe::udp_stream_background(&ua, &ub, Family::V4, &stream(u64::MAX / 1000, 41_201))?;
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (calls, stop, base) = (calls.clone(), stop.clone(), agent.api_url());
            let spec = spec_of(i);
            std::thread::spawn(move || -> Result<()> {
                let spec = spec?;
                let c = Client::new(&base);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let created = c.create(&spec);
                    calls
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .record("create", t.elapsed(), &created);
                    let t = Instant::now();
                    let listed = c.list(Some("bench"));
                    calls
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .record("list", t.elapsed(), &listed);
                    if let Ok(f) = created {
                        // A recover refused by a limit is retried: the fault must go.
                        loop {
                            let t = Instant::now();
                            let rec = c.recover(&f.id);
                            let retry = matches!(
                                &rec,
                                Err(ClientError::Api {
                                    status: 429 | 503,
                                    ..
                                })
                            );
                            calls
                                .lock()
                                .map_err(|_| anyhow::anyhow!("poisoned"))?
                                .record("recover", t.elapsed(), &rec);
                            if !retry {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let during = during.stop()?;
    let rss1 = super::scale::rss_mib(pid)?;
    let c = agent.client();
    let listed = c.list(Some("bench"))?.faults.len();
    c.cleanup(&CleanupRequest {
        namespace: None,
        all: true,
    })?;
    let tables = c.get_json("/v1/tables")?;
    let calls = Arc::try_unwrap(calls)
        .map_err(|_| anyhow::anyhow!("clients still hold the results"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;

    writeln!(r.out, "## 6. Load\n")?;
    writeln!(
        r.out,
        "{clients} clients (threads with their own HTTP connection, `fault_api::client`) each create a fault (a partition or 5% loss from one of 4 target pods to a /24 of its own), list the namespace's faults and recover it, in a loop, for {secs} s, against a standalone agent with its default limits (`--rate-limit 500`, `--rate-burst 1000`, `--max-concurrent-requests 512`, `--max-faults 1024`, `--request-timeout 30s`). Ended faults stay listed for the retention (1 h), so the list grows through the run. Meanwhile pod u-a sends 1,000 datagrams/s to u-b, outside every fault, measured at u-b; the same stream for 5 s before the load is the baseline.\n"
    )?;
    writeln!(
        r.out,
        "| call | answered | per s | p50 ms | p99 ms | max ms | answers by status |"
    )?;
    writeln!(r.out, "| --- | --- | --- | --- | --- | --- | --- |")?;
    let mut undocumented = 0u64;
    for (call, ms) in &calls.ms {
        let d = Dist(ms.clone());
        let by: Vec<String> = calls
            .status
            .iter()
            .filter(|((c, _), _)| c == call)
            .map(|((_, s), n)| {
                if !DOCUMENTED.contains(s) {
                    undocumented += n;
                }
                format!("{s}: {n}")
            })
            .collect();
        writeln!(
            r.out,
            "| {call} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
            ms.len(),
            ms.len() as f64 / elapsed,
            d.median(),
            d.q(0.99),
            d.max(),
            by.join(", ")
        )?;
    }
    let created = calls.status.get(&("create", 201)).copied().unwrap_or(0);
    writeln!(
        r.out,
        "\n{created} faults created and recovered in {elapsed:.0} s; {listed} listed at the end; after a cleanup the maps hold {} targets and {} rules. Agent RSS {rss0:.1} MiB before, {rss1:.1} MiB after.\n",
        tables["targets"], tables["rules"]
    )?;
    writeln!(
        r.out,
        "| unaffected stream u-a -> u-b | sent | received | lost | one-way p50 us | p99 us | max us |"
    )?;
    writeln!(r.out, "| --- | --- | --- | --- | --- | --- | --- |")?;
    writeln!(r.out, "{}", stream_line("before the load (5 s)", &baseline))?;
    writeln!(r.out, "{}", stream_line("during the load", &during))?;
    let lost = during.sent - during.received.min(during.sent);
    r.target(
        "load: 100 clients for 60 s, no error but the documented ones",
        format!(
            "{undocumented} undocumented answers of {}",
            calls.status.values().sum::<u64>()
        ),
        undocumented == 0,
        "see the answers by status above",
    );
    r.target(
        "load: unaffected traffic unchanged (no datagram lost)",
        format!("{lost} of {} lost during the load", during.sent),
        lost == 0,
        "the 2 cores are shared by the clients, the agent and the stream: a descheduled receiver's socket buffer can overflow",
    );
    writeln!(
        r.out,
        "\nReading: every write goes through the agent's one core (a mutex), so creates and recovers queue behind each other and their latency is the queue's; a list serializes every listed fault (ended ones included) and grows with the run. The unaffected pair's packets take the no-fault path (the gate's array lookup), whatever the number of faults; the latency spread during the load is the two cores being shared with the clients and the agent, not the datapath.\n"
    )?;
    let lines = vec![
        format!("# the agent: {}", agent.command_line()),
        post_line(
            "client i (of 100) in a loop",
            &agent.api_url(),
            &spec_of(0)?,
        )?,
        format!(
            "# then GET {}/v1/faults?namespace=bench and DELETE {}/v1/faults/<id>",
            agent.api_url(),
            agent.api_url()
        ),
    ];
    commands(&mut r.out, &lines)?;
    drop(agent);
    drop(topo);
    Ok(())
}
