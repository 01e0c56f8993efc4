//! Steady-state conditions on a real agent and real veths: an abort condition (an HTTP probe's
//! failure rate, a Prometheus query on the agent's own counters) ends a fault on a real
//! measured breach, as `aborted` with the measured value, and the path is whole right after;
//! a fault whose condition holds runs its full duration. Pre-flight checks refuse a fault
//! whose HTTP probe fails or whose target is not ready, and nothing is applied.
mod common;
mod prometheus;

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::*;
use fault_api::{Fault, FaultState, client::ClientError};
use fault_testkit::{
    DynamoEnv, Family, Pod, StreamOpts,
    probe::{udp_stream, udp_stream_background},
    serial,
};

/// A minimal HTTP server in a pod's network namespace: every request gets `200 ok`. Stops
/// when dropped.
struct HttpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    url: String,
}

impl HttpServer {
    fn start(pod: &Pod, port: u16) -> Self {
        let listener = pod
            .run(move || TcpListener::bind(("0.0.0.0", port)))
            .expect("enters the pod")
            .expect("binds");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 1024];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
            url: format!("http://{}:{port}/", pod.ipv4()),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls the fault until it leaves `Active` (or `within` passes); returns it and when.
fn wait_ended(env: &DynamoEnv, id: &str, within: Duration) -> (Fault, Duration) {
    wait_ended_with(&env.agent.client(), id, within)
}

fn wait_ended_with(
    client: &fault_api::client::Client,
    id: &str,
    within: Duration,
) -> (Fault, Duration) {
    let start = Instant::now();
    loop {
        let f = client.get_fault(id).expect("fault exists");
        if !f.state.is_live() || start.elapsed() > within {
            return (f, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_http_probe_breach_aborts_the_fault_and_the_path_is_whole_right_after() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = env.pods.clone();
    let server = HttpServer::start(&p.prefill, 8080);
    // Everything prefill receives is cut: the probe from the frontend to prefill fails.
    let t0 = Instant::now();
    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-prefill",
            "--direction",
            "ingress",
            "--partition",
            "--duration",
            "60s",
            "--abort-http",
            &server.url,
            "--abort-http-from",
            "dynamo/frontend-0",
            "--abort-max-failure-percent",
            "25",
            "--abort-window",
            "2s",
            "--abort-interval",
            "100ms",
            "--abort-timeout",
            "300ms",
        ],
    );
    assert!(
        blocked(&p.frontend, &p.prefill, Family::V4),
        "the fault acts"
    );
    let (f, _) = wait_ended(&env, &id, Duration::from_secs(15));
    let took = t0.elapsed();
    let message = f.message.clone().unwrap_or_default();
    eprintln!("{} after {took:?}: {message}", f.state);
    eprintln!("steady: {:?}", f.steady);
    assert_eq!(f.state, FaultState::Aborted, "{f:?}\n{}", env.agent.log());
    assert!(
        message.starts_with(&format!("aborted: http probe {} failed ", server.url)),
        "{message}"
    );
    assert!(message.contains("above 25%"), "{message}");
    let measured = failed_percent(&message);
    assert!(measured > 25.0, "{measured}");
    // A whole window (2 s) of probes first, and no long wait after it.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let m = f
        .steady
        .iter()
        .find(|m| m.condition == "http")
        .expect("an http measurement");
    assert!(m.breached && m.value.is_some_and(|v| v > 25.0), "{m:?}");
    assert!(
        f.counters.dropped > 0,
        "the kernel dropped the probes: {:?}",
        f.counters
    );
    // Recovered like a recover: out of the kernel at once.
    stream_is_whole(&p.frontend, &p.prefill);
    stream_is_whole(&p.decode0, &p.prefill);
}

#[test]
fn a_fault_whose_condition_holds_runs_its_full_duration() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = env.pods.clone();
    let server = HttpServer::start(&p.prefill, 8080);
    let t0 = Instant::now();
    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-prefill",
            "--direction",
            "ingress",
            "--loss",
            "2",
            "--duration",
            "6s",
            "--abort-http",
            &server.url,
            "--abort-http-from",
            "dynamo/frontend-0",
            "--abort-max-failure-percent",
            "50",
            "--abort-window",
            "2s",
            "--abort-interval",
            "100ms",
        ],
    );
    // The loss acts on the same path while the probe keeps passing.
    let during = udp_stream(
        &p.frontend,
        &p.prefill,
        Family::V4,
        &StreamOpts {
            count: 5_000,
            rate_pps: 10_000,
            ..Default::default()
        },
    )
    .unwrap();
    let lost = 100.0 * (during.sent - during.received) as f64 / during.sent as f64;
    eprintln!("during: {during} ({lost:.2}% lost)");
    assert!(lost > 0.5 && lost < 5.0, "{lost}");
    let live = fault(&env.agent, &id);
    let m = live.steady.iter().find(|m| m.condition == "http").cloned();
    eprintln!("while live: {m:?}");
    let m = m.expect("measured while live");
    assert!(!m.breached && m.value.is_some_and(|v| v < 50.0), "{m:?}");
    let gauge = |text: &str| {
        metric_sample(
            text,
            "faultline_abort_condition_value",
            &[("fault_id", id.as_str()), ("condition", "http")],
        )
    };
    let (_, text) = scrape_metrics(&env.agent.api_url(), None);
    assert!(gauge(&text).is_some_and(|v| v < 50.0), "{text}");
    let (f, _) = wait_ended(&env, &id, Duration::from_secs(15));
    let took = t0.elapsed();
    eprintln!(
        "{} after {took:?}: {:?}; steady {:?}",
        f.state, f.message, f.steady
    );
    assert_eq!(f.state, FaultState::Expired, "{f:?}");
    assert!(took >= Duration::from_secs(6), "{took:?}");
    let m = f.steady.iter().find(|m| m.condition == "http").unwrap();
    assert!(!m.breached && m.value.is_some_and(|v| v < 50.0), "{m:?}");
    // The check ends at its next tick after the deadline (an interval, a probe's timeout).
    let start = Instant::now();
    while gauge(&scrape_metrics(&env.agent.api_url(), None).1).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the series goes with the fault"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stream_is_whole(&p.frontend, &p.prefill);
}

#[test]
fn a_prometheus_query_on_the_agents_drop_counter_aborts_the_fault() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "steady-state-token\n").unwrap();
    let env = DynamoEnv::start_with(&["--token-file", token_file.to_str().unwrap()]).unwrap();
    let p = env.pods.clone();
    let prom = prometheus::Prometheus::start(env.agent.listen_addr(), &token_file).unwrap();
    let client = fault_api::client::Client::new(&env.agent.api_url())
        .with_token(Some("steady-state-token".into()));
    let stream = udp_stream_background(
        &p.decode0,
        &p.prefill,
        Family::V4,
        &StreamOpts {
            count: 400_000,
            rate_pps: 10_000,
            ..Default::default()
        },
    )
    .unwrap();
    let query = "sum(rate(faultline_fault_dropped_packets_total[3s]))";
    let mut spec = fault_api::FaultSpec::new("dynamo");
    spec.pod_prefix = Some("vllm-decode-0".into());
    spec.to_selectors = vec!["app=vllm-prefill".parse().unwrap()];
    spec.protocol = Some(fault_api::Protocol::Udp);
    spec.loss_percent = Some("50".parse().unwrap());
    spec.duration = Some("60s".parse().unwrap());
    spec.abort = Some(
        serde_json::from_value(serde_json::json!({"prometheus": {
            "server": prom.url(), "query": query, "above": 1000, "for": "2s", "interval": "250ms"
        }}))
        .unwrap(),
    );
    let t0 = Instant::now();
    let created = client.create(&spec).unwrap();
    let id = created.id;
    let (f, _) = wait_ended_with(&client, &id, Duration::from_secs(30));
    let took = t0.elapsed();
    let during = stream.stop().unwrap();
    let message = f.message.clone().unwrap_or_default();
    eprintln!(
        "{} after {took:?}: {message}; steady {:?}",
        f.state, f.steady
    );
    eprintln!("stream during: {during}");
    assert_eq!(f.state, FaultState::Aborted, "{f:?}\n{}", prom.log());
    assert!(
        message.starts_with(&format!("aborted: prometheus query `{query}` = ")),
        "{message}"
    );
    assert!(message.contains("above 1000 for 2s"), "{message}");
    let value: f64 = message
        .split(" = ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    // About half of 10,000 datagrams a second.
    assert!(value > 1000.0 && value < 10_000.0, "{value}");
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(f.counters.dropped > 0);
    stream_is_whole(&p.decode0, &p.prefill);
    // The phase is on the agent's metrics.
    let (_, text) = scrape_metrics(&env.agent.api_url(), Some("steady-state-token"));
    assert_eq!(
        metric_sample(&text, "faultline_faults", &[("phase", "aborted")]),
        Some(1.0),
        "{text}"
    );
}

/// `POST /v1/faults` expecting a 412 `preflight_failed`; returns its message.
fn refused(env: &DynamoEnv, spec: &fault_api::FaultSpec) -> String {
    match env.agent.client().create(spec) {
        Err(ClientError::Api { status, error }) => {
            assert_eq!(
                (status, error.code.as_str()),
                (412, "preflight_failed"),
                "{error:?}"
            );
            eprintln!("refused: {}", error.message);
            error.message
        }
        other => panic!("expected a 412, got {other:?}"),
    }
}

fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "ip {args:?}");
}

#[test]
fn preflight_refuses_a_failing_probe_or_an_unready_target_and_applies_nothing() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = env.pods.clone();
    let spec = |json: serde_json::Value| -> fault_api::FaultSpec {
        let mut s = fault_api::FaultSpec::new("dynamo");
        s.pod_prefix = Some("vllm-decode".into());
        s.to_selectors = vec!["app=vllm-prefill".parse().unwrap()];
        s.partition = Some(fault_api::PartitionMode::Packets);
        s.preflight = Some(serde_json::from_value(json).unwrap());
        s
    };
    // Nothing listens on prefill:8081.
    let url = format!("http://{}:8081/", p.prefill.ipv4());
    let m = refused(
        &env,
        &spec(serde_json::json!({"http": {"url": url, "from_pod": "dynamo/frontend-0"}})),
    );
    assert!(
        m.starts_with("pre-flight check http failed: GET ") && m.contains("from dynamo/frontend-0"),
        "{m}"
    );
    assert!(m.contains("wanted a 2xx or 3xx status"), "{m}");

    // decode-0's host-side veth down: not ready.
    let host_if = p.decode0.host_ifname().to_owned();
    ip(&["link", "set", &host_if, "down"]);
    let m = refused(&env, &spec(serde_json::json!({"targets_ready": true})));
    ip(&["link", "set", &host_if, "up"]);
    assert!(
        m.contains("1 of 2 target pods not ready; dynamo/vllm-decode-0: host veth")
            && m.contains(&format!("{host_if} is down")),
        "{m}"
    );
    let m = refused(&env, &spec(serde_json::json!({"min_ready_targets": 3})));
    assert!(m.contains("2 of 2 target pods ready, need 3"), "{m}");
    assert!(
        env.agent.client().list(None).unwrap().faults.is_empty(),
        "nothing recorded"
    );
    wait_reachable(&p.decode0, &p.prefill); // nothing applied

    // The same checks holding: applied.
    let server = HttpServer::start(&p.prefill, 8080);
    wait_reachable(&p.decode0, &p.prefill);
    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode",
            "--to-selector",
            "app=vllm-prefill",
            "--partition",
            "--preflight-targets-ready",
            "--preflight-min-ready",
            "2",
            "--preflight-http",
            &server.url,
            "--preflight-http-from",
            "dynamo/frontend-0",
        ],
    );
    assert_eq!(fault(&env.agent, &id).state, FaultState::Active);
    assert!(blocked(&p.decode0, &p.prefill, Family::V4));
    // faultctl names the check too, and exits non-zero.
    let out = env
        .agent
        .faultctl(&[
            "inject",
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode",
            "--partition",
            "--preflight-min-ready",
            "3",
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("pre-flight check min_ready_targets failed"),
        "{err}"
    );
}

/// After a veth went down and up, the path may take a moment (bridge port states).
fn wait_reachable(from: &Pod, to: &Pod) {
    let start = Instant::now();
    while !reaches(from, to, Family::V4) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "path back within 10 s"
        );
    }
}

#[test]
fn abort_checks_resume_after_an_agent_restart() {
    let _s = serial();
    let mut env = DynamoEnv::start().unwrap();
    let p = env.pods.clone();
    let server = HttpServer::start(&p.prefill, 8080);
    // The fault cuts decode-0 from prefill; the probe (frontend to prefill) is not on its path.
    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--to-selector",
            "app=vllm-prefill",
            "--partition",
            "--duration",
            "60s",
            "--abort-http",
            &server.url,
            "--abort-http-from",
            "dynamo/frontend-0",
            "--abort-max-failure-percent",
            "25",
            "--abort-window",
            "1s",
            "--abort-interval",
            "100ms",
        ],
    );
    std::thread::sleep(Duration::from_millis(1_500));
    let f = fault(&env.agent, &id);
    assert_eq!(f.state, FaultState::Active);
    assert!(f.steady.iter().all(|m| !m.breached), "{:?}", f.steady);
    // SIGTERM: the checks stop with the agent (they hold its core), which exits cleanly.
    let t = Instant::now();
    let status = env.agent.terminate().unwrap();
    assert!(status.success(), "{status:?}\n{}", env.agent.log());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    env.agent.restart().unwrap();
    assert_eq!(fault(&env.agent, &id).state, FaultState::Active);
    assert!(
        blocked(&p.decode0, &p.prefill, Family::V4),
        "kept across the restart"
    );
    // The service goes down: the restarted agent's checks see it and abort the fault.
    drop(server);
    let (f, took) = wait_ended(&env, &id, Duration::from_secs(10));
    let message = f.message.clone().unwrap_or_default();
    eprintln!("{} {took:?} after the server stopped: {message}", f.state);
    assert_eq!(f.state, FaultState::Aborted, "{f:?}\n{}", env.agent.log());
    assert!(failed_percent(&message) > 25.0, "{message}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    stream_is_whole(&p.decode0, &p.prefill);
}
