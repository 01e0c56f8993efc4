//! Limits (issue 13): capacity (live faults, rules per fault, map room) refused with 409
//! before anything is written; the API's request limits (413, 429, 503, 504) with the JSON
//! error body; readiness and liveness following the syncs; and many clients at once.
mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use fault_api::{
    ApiError, ErrorBody, FaultSpec, PartitionMode, Selector,
    client::{Client, ClientError},
    fault::CleanupRequest,
};
use fault_testkit::{DynamoEnv, Family, StreamOpts, probe, serial};

/// The `capacity` error of a refused create; panics on anything else.
fn capacity_error(r: Result<fault_api::Fault, ClientError>) -> ApiError {
    match r {
        Err(ClientError::Api { status: 409, error }) if error.code == "capacity" => error,
        other => panic!("expected 409 capacity, got {other:?}"),
    }
}

fn spec(prefix: &str) -> FaultSpec {
    let mut s = FaultSpec::new("dynamo");
    s.pod_prefix = Some(prefix.into());
    s.to_selectors = vec!["app=vllm-prefill".parse::<Selector>().unwrap()];
    s.partition = Some(PartitionMode::Packets);
    s
}

/// `n` /32 prefixes in 198.19.0.0/16 (no pod there).
fn cidrs(n: usize) -> Vec<ipnet::IpNet> {
    (0..n)
        .map(|i| {
            let a = std::net::Ipv4Addr::from(0xc613_0000u32 + i as u32);
            ipnet::IpNet::from(std::net::IpAddr::V4(a))
        })
        .collect()
}

#[test]
fn live_faults_and_rules_per_fault_are_refused_with_409_before_any_write() {
    let _s = serial();
    let env =
        DynamoEnv::start_with(&["--max-faults", "3", "--max-rules-per-fault", "100"]).unwrap();
    let c = env.agent.client();
    let p = &env.pods;
    for prefix in ["vllm-decode-0", "vllm-decode-1", "frontend"] {
        c.create(&spec(prefix)).unwrap();
    }
    let tables = c.get_json("/v1/tables").unwrap();
    let e = capacity_error(c.create(&spec("nats")));
    assert!(
        e.message.contains("--max-faults") && e.message.contains("4"),
        "{e:?}"
    );
    assert_eq!(c.list(None).unwrap().faults.len(), 3, "nothing was created");
    assert_eq!(
        c.get_json("/v1/tables").unwrap(),
        tables,
        "nothing was written"
    );
    assert!(reaches(&p.nats, &p.prefill, Family::V4));

    // A fault that needs more rules than --max-rules-per-fault.
    let id = c.list(None).unwrap().faults[0].id.clone();
    c.recover(&id).unwrap();
    let tables = c.get_json("/v1/tables").unwrap();
    let mut wide = spec("nats");
    wide.to_selectors.clear();
    wide.to_cidrs = cidrs(200);
    let e = capacity_error(c.create(&wide));
    assert!(
        e.message.contains("FL_RULES")
            && e.message.contains("200")
            && e.message.contains("--max-rules-per-fault"),
        "{e:?}"
    );
    assert_eq!(
        c.get_json("/v1/tables").unwrap(),
        tables,
        "nothing was written"
    );
    // The live-fault limit counts live faults only: one was recovered, so one more fits.
    c.create(&spec("nats")).unwrap();
    assert!(blocked(&p.nats, &p.prefill, Family::V4));
}

/// Regression (issue 13): a fault that needed more rules than FL_RULES holds was written
/// halfway, rolled back and answered 500. Now the compiled tables are counted first: a fault
/// that would take the map past its budget is refused with 409 and nothing is written; the
/// faults admitted before stay and recover cleanly.
#[test]
fn a_fault_that_would_overflow_a_map_is_refused_whole() {
    let _s = serial();
    let env = DynamoEnv::start_with(&[
        "--max-rules-per-fault",
        "131072",
        "--max-body-bytes",
        "4194304",
    ])
    .unwrap();
    let c = env.agent.client();
    // The same 45,000 peers and port on nested sets of targets: each pod gets a table of its
    // own, 90,000 entries each (TCP and UDP); three of them would pass the map's 262,144.
    let peers = cidrs(45_000);
    let mut admitted = Vec::new();
    let mut refused = 0;
    for prefix in ["vllm", "vllm-decode", "vllm-decode-0"] {
        let mut s = spec(prefix);
        s.to_selectors.clear();
        s.to_cidrs = peers.clone();
        s.port = Some(9000);
        s.partition = None;
        s.loss_percent = Some("1".parse().unwrap());
        let before = c.get_json("/v1/tables").unwrap();
        let t = Instant::now();
        match c.create(&s) {
            Ok(f) => admitted.push(f.id),
            Err(ClientError::Api { status: 409, error }) if error.code == "capacity" => {
                assert!(error.message.contains("FL_RULES"), "{error:?}");
                assert_eq!(
                    c.get_json("/v1/tables").unwrap(),
                    before,
                    "nothing was written"
                );
                refused += 1;
            }
            Err(e) => panic!("{prefix}: only 201 or 409 are acceptable, got {e}"),
        }
        eprintln!("{prefix}: answered in {} ms", t.elapsed().as_millis());
    }
    assert!(
        refused >= 1 && !admitted.is_empty(),
        "{admitted:?}, {refused} refused"
    );
    let rules = c.get_json("/v1/tables").unwrap()["rules"].as_u64().unwrap();
    assert!(rules <= u64::from(fault_common::MAX_RULES) / 2, "{rules}");
    for id in admitted.iter().rev() {
        c.recover(id).unwrap();
    }
    assert_eq!(
        c.get_json("/v1/tables").unwrap()["rules"],
        0,
        "recovered cleanly"
    );
    assert!(c.ready());
}

/// Sends raw HTTP and returns (status, headers and body as text).
fn raw(addr: &str, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn error_of(response: &str) -> ApiError {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    let body = body.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c == '\r' || c == '\n');
    let end = body.rfind('}').map_or(0, |i| i + 1);
    serde_json::from_str::<ErrorBody>(&body[..end])
        .unwrap_or_else(|e| panic!("not the JSON error body ({e}): {response}"))
        .error
}

/// Regression (issue 13): the API had no request timeout, concurrency or rate limit and
/// axum's implicit 2 MB body limit. Each limit now answers with its documented status and the
/// API's JSON error body; health endpoints stay outside them.
#[test]
fn api_limits_answer_413_429_503_504_with_the_json_error() {
    let _s = serial();
    let env = DynamoEnv::start_with(&[
        "--max-body-bytes",
        "4096",
        "--max-concurrent-requests",
        "1",
        "--request-timeout",
        "1s",
        "--rate-limit",
        "20",
        "--rate-burst",
        "20",
    ])
    .unwrap();
    let addr = env.agent.listen_addr().to_string();
    let c = env.agent.client();

    // 413: a body over --max-body-bytes, refused on its announced length before it is read
    // (so only the headers are sent here).
    let (status, res) = raw(
        &addr,
        "POST /v1/faults HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 413, "{res}");
    let e = error_of(&res);
    assert!(
        e.code == "too_large" && e.message.contains("--max-body-bytes"),
        "{e:?}"
    );

    // 503 while one request is served (a body that never finishes), 504 when it times out.
    let held = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            raw(
                &addr,
                "POST /v1/faults HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{",
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    match c.list(None) {
        Err(ClientError::Api { status: 503, error }) => {
            assert!(
                error.code == "overloaded" && error.message.contains("--max-concurrent-requests"),
                "{error:?}"
            )
        }
        other => panic!("expected 503 overloaded, got {other:?}"),
    }
    assert!(c.ready(), "/readyz answers outside the limits");
    let (status, res) = held.join().unwrap();
    assert_eq!(status, 504, "{res}");
    let e = error_of(&res);
    assert!(
        e.code == "timeout" && e.message.contains("--request-timeout"),
        "{e:?}"
    );
    assert!(
        c.list(None).unwrap().faults.is_empty(),
        "the timed-out create wrote nothing"
    );

    // 429 past the rate, with Retry-After; /healthz is not limited.
    let mut limited = None;
    for _ in 0..60 {
        let (status, res) = raw(
            &addr,
            "GET /v1/faults HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        if status == 429 {
            limited = Some(res);
            break;
        }
        assert_eq!(status, 200, "{res}");
    }
    let res = limited.expect("60 requests at once pass a rate of 20/s");
    assert!(res.to_ascii_lowercase().contains("retry-after:"), "{res}");
    let e = error_of(&res);
    assert!(
        e.code == "rate_limited" && e.message.contains("--rate-limit"),
        "{e:?}"
    );
    let (status, _) = raw(
        &addr,
        "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
}

/// Regression (issue 13): readiness was set once and never cleared, and liveness always
/// answered ok, even when every sync failed. Here the state dir refuses writes (its
/// `qdiscs.json` is made a directory), so the reconcile at a fault's expiry fails.
#[test]
fn readiness_and_liveness_follow_the_syncs() {
    let _s = serial();
    let env = DynamoEnv::start_with(&["--liveness-threshold", "2s"]).unwrap();
    let c = env.agent.client();
    let addr = env.agent.listen_addr().to_string();
    let get = |path: &str| -> (u16, String) {
        raw(
            &addr,
            &format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        )
    };
    assert_eq!(get("/healthz").0, 200);
    let jam = env.agent.state_dir().join("qdiscs.json");
    std::fs::remove_file(&jam).ok();
    std::fs::create_dir_all(jam.join("jammed")).unwrap();
    let mut s = spec("vllm-decode-0");
    s.duration = Some("1s".parse().unwrap());
    c.create(&s).unwrap();
    let start = Instant::now();
    while c.ready() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still ready though the sync failed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, why) = get("/readyz");
    assert_eq!(status, 503);
    assert!(why.contains("qdiscs.json"), "{why}");
    while get("/healthz").0 == 200 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still live after the threshold"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, why) = get("/healthz");
    assert!(why.contains("--liveness-threshold"), "{why}");

    std::fs::remove_dir_all(&jam).unwrap();
    let start = Instant::now();
    while !c.ready() || get("/healthz").0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not ready again after the fix"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Twenty clients create, list and recover faults for 5 s (the load benchmark with 100
/// clients for 60 s is `cargo xtask bench --only load`): every answer is a success or a
/// documented refusal, traffic outside the faults loses nothing, and nothing is left after.
#[test]
fn twenty_clients_at_once_get_only_documented_answers() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = &env.pods;
    let opts = StreamOpts {
        count: u64::MAX,
        rate_pps: 500,
        port: 41_013,
        ..Default::default()
    };
    let stream = probe::udp_stream_background(&p.frontend, &p.nats, Family::V4, &opts).unwrap();
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let base = env.agent.api_url();
    let clients: Vec<_> = (0..20u32)
        .map(|i| {
            let (statuses, stop, base) = (statuses.clone(), stop.clone(), base.clone());
            std::thread::spawn(move || {
                let c = Client::new(&base);
                let count = |r: Result<u16, ClientError>| {
                    let status = match r {
                        Ok(s) => s,
                        Err(ClientError::Api { status, .. }) => status,
                        Err(ClientError::Transport(e)) => panic!("transport error: {e}"),
                    };
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                };
                let mut s = spec(if i % 2 == 0 {
                    "vllm-decode-0"
                } else {
                    "vllm-decode-1"
                });
                s.to_selectors.clear();
                s.to_cidrs = vec![format!("198.19.{i}.0/24").parse().unwrap()];
                while !stop.load(Ordering::Relaxed) {
                    match c.create(&s) {
                        Ok(f) => {
                            count(Ok(201));
                            count(c.list(Some("dynamo")).map(|_| 200));
                            count(c.recover(&f.id).map(|_| 200));
                        }
                        Err(e) => count(Err(e)),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let report = stream.stop().unwrap();
    let statuses = statuses.lock().unwrap().clone();
    eprintln!("answers by status: {statuses:?}; stream {report}");
    assert!(
        statuses.keys().all(|s| [200, 201, 429, 503].contains(s)),
        "only successes and documented refusals: {statuses:?}"
    );
    assert!(
        statuses.get(&201).copied().unwrap_or(0) >= 20,
        "{statuses:?}"
    );
    assert_eq!(
        report.received, report.sent,
        "unaffected traffic lost datagrams: {report}"
    );
    let c = env.agent.client();
    c.cleanup(&CleanupRequest {
        namespace: None,
        all: true,
    })
    .unwrap();
    let t = c.get_json("/v1/tables").unwrap();
    assert_eq!(
        (t["rules"].as_u64(), t["targets"].as_u64()),
        (Some(0), Some(0)),
        "{t}"
    );
}
