//! Watching faults from the terminal, on real packets: `faultctl get ID` shows the counters of
//! the agent's node rising while a UDP stream crosses a loss fault, and `faultctl watch`
//! prints packet rates while it runs and the fault's end after recover.
use std::time::Duration;

use fault_api::{FaultSpec, client::Client};
use fault_testkit::{
    DynamoEnv, Family, StreamHandle, StreamOpts, probe::udp_stream_background, serial,
};

/// The node name a single-host agent reports: its host name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

fn faultctl(env: &DynamoEnv, args: &[&str]) -> String {
    let out = env.agent.faultctl(args).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "faultctl {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `(matched, dropped)` of `node`'s line of `faultctl get` (`  node: matched N dropped M ...`).
fn node_counters(get: &str, node: &str) -> (u64, u64) {
    let line = get
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{node}:")))
        .unwrap_or_else(|| panic!("no line for node {node}:\n{get}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |w: &str| -> u64 {
        let i = words.iter().position(|x| *x == w).unwrap();
        words[i + 1].parse().unwrap()
    };
    (after("matched"), after("dropped"))
}

/// The rows of `id` in `faultctl watch` output (one per refresh), split in columns.
fn rows_of<'a>(watch: &'a str, id: &str) -> Vec<Vec<&'a str>> {
    watch
        .lines()
        .filter(|l| l.starts_with(id))
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// The last four columns of a row: phase, time left, matched/s, dropped/s.
fn tail<'a>(r: &[&'a str]) -> Vec<&'a str> {
    r[r.len() - 4..].to_vec()
}

fn loss_fault(client: &Client) -> String {
    let mut spec = FaultSpec::new("dynamo");
    spec.pod_prefix = Some("vllm-decode-0".into());
    spec.to_selectors = vec!["app=vllm-prefill".parse().unwrap()];
    spec.protocol = Some(fault_api::Protocol::Udp);
    spec.loss_percent = Some("30".parse().unwrap());
    client.create(&spec).unwrap().id
}

fn stream(env: &DynamoEnv) -> StreamHandle {
    let opts = StreamOpts {
        count: u64::MAX,
        rate_pps: 2_000,
        ..StreamOpts::default()
    };
    udp_stream_background(&env.pods.decode0, &env.pods.prefill, Family::V4, &opts).unwrap()
}

#[test]
fn faultctl_get_shows_per_node_counters_rising_and_watch_shows_rates_then_the_end() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let client = Client::new(&env.agent.api_url());
    let node = host_name();
    let id = loss_fault(&client);
    let running = stream(&env);

    std::thread::sleep(Duration::from_millis(500));
    let first = faultctl(&env, &["get", &id]);
    std::thread::sleep(Duration::from_secs(1));
    let second = faultctl(&env, &["get", &id]);
    let (m1, d1) = node_counters(&first, &node);
    let (m2, d2) = node_counters(&second, &node);
    eprintln!("faultctl get, 1 s apart:\n{first}\n{second}");
    assert!(
        m2 > m1 && d2 > d1,
        "counters of {node} rise: {m1}/{d1} then {m2}/{d2}"
    );
    // The node's line is the whole fault's on a single host.
    let json: fault_api::Fault =
        serde_json::from_str(&faultctl(&env, &["get", &id, "-o", "json"])).unwrap();
    assert_eq!(json.nodes.keys().collect::<Vec<_>>(), vec![&node]);
    assert_eq!(json.nodes[&node], json.counters);

    let watch = faultctl(&env, &["watch", "--count", "3", "--interval", "500ms"]);
    let report = running.stop().unwrap();
    eprintln!("faultctl watch:\n{watch}\nstream: {report}");
    assert_eq!(
        watch.matches("MATCHED/S").count(),
        3,
        "three tables: {watch}"
    );
    let rows = rows_of(&watch, &id);
    assert_eq!(rows.len(), 3, "{watch}");
    // ID NAMESPACE KIND(loss 30%) PHASE LEFT MATCHED/S DROPPED/S; the first has no rate yet.
    assert_eq!(rows[0][rows[0].len() - 1], "-");
    for r in &rows[1..] {
        let n = r.len();
        assert_eq!(r[n - 4], "Active", "{r:?}");
        let matched: f64 = r[n - 2].parse().unwrap();
        let dropped: f64 = r[n - 1].parse().unwrap();
        // 2,000 datagrams a second, 30% dropped: wide bounds for a loaded machine.
        assert!(
            matched > 500.0 && dropped > 100.0,
            "rates while the stream runs: {r:?}"
        );
        assert!(dropped < matched, "{r:?}");
    }

    client.recover(&id).unwrap();
    let after = faultctl(
        &env,
        &["get", &id, "-w", "--count", "2", "--interval", "100ms"],
    );
    eprintln!("faultctl get -w after recover:\n{after}");
    let rows = rows_of(&after, &id);
    assert_eq!(rows.len(), 2, "{after}");
    // Ended: no time left, and no packet counted any more.
    assert_eq!(tail(&rows[0]), ["Recovered", "-", "-", "-"], "{after}");
    assert_eq!(tail(&rows[1]), ["Recovered", "-", "0.0", "0.0"], "{after}");
}

#[test]
fn faultctl_watch_refuses_an_interval_out_of_range_naming_the_flag() {
    let out = fault_testkit::faultctl(
        "http://127.0.0.1:9",
        &["watch", "--interval", "10ms", "--count", "1"],
    )
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--interval") && err.contains("100ms"), "{err}");
}
