//! The kill switch on real packets: ten partition faults on five pods stop acting within a
//! second of `faultctl stop --all`, even though the agent's maps still hold them; they act
//! again after `faultctl stop --lift`; the switch outlives an agent restart; who pulled it is
//! recorded.
mod common;

use std::time::Duration;

use common::{ten_pairs, udp_partition, whole_after, window};

use fault_api::{FaultState, client::Client, kill_switch::KillSwitchRequest};
use fault_testkit::{
    DynamoEnv, Family, StreamOpts, StreamReport, boottime_ns, probe::udp_stream_background, serial,
};

/// Datagrams per second of each of the ten streams.
const PPS: u64 = 400;

#[test]
fn the_kill_switch_makes_ten_faults_pass_within_a_second_and_lifting_it_restores_them() {
    let _s = serial();
    let mut env = DynamoEnv::start().unwrap();
    let client = Client::new(&env.agent.api_url());
    let p = &env.pods;
    // Ten faults on five pods, each with its own stream.
    let pairs = ten_pairs(p);
    let mut ids = Vec::new();
    for (i, (from, _, app)) in pairs.iter().enumerate() {
        ids.push(
            client
                .create(&udp_partition(from, app, 41_000 + i as u16))
                .unwrap()
                .id,
        );
    }
    let streams: Vec<_> = pairs
        .iter()
        .enumerate()
        .map(|(i, (from, to, _))| {
            let opts = StreamOpts {
                count: u64::MAX,
                rate_pps: PPS,
                port: 41_000 + i as u16,
                ..StreamOpts::default()
            };
            udp_stream_background(from, to, Family::V4, &opts).unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    let t_engage = boottime_ns();
    let out = env
        .agent
        .faultctl(&[
            "stop",
            "--all",
            "--by",
            "kill-switch-test",
            "--reason",
            "checkout down",
        ])
        .unwrap();
    let t_engaged = boottime_ns();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ENGAGED") && text.contains("by kill-switch-test"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(2_500));

    // The switch outlives a restart: the kernel flag is pinned, the record is in the state dir.
    env.agent.kill().unwrap();
    env.agent.restart().unwrap();
    let ks = client.kill_switch().unwrap();
    assert!(ks.engaged, "{ks:?}");
    let by = ks.engaged_by.as_ref().unwrap();
    assert_eq!(by.by, "kill-switch-test");
    assert_eq!(by.reason.as_deref(), Some("checkout down"));
    assert!(
        by.from
            .as_deref()
            .is_some_and(|f| f.starts_with("127.0.0.1:")),
        "{by:?}"
    );
    std::thread::sleep(Duration::from_millis(1_000));

    let t_lift = boottime_ns();
    let lifted = client
        .lift_kill_switch(&KillSwitchRequest {
            by: "kill-switch-test".into(),
            reason: None,
        })
        .unwrap();
    let t_lifted = boottime_ns();
    assert!(!lifted.engaged && lifted.lifted_by.is_some(), "{lifted:?}");
    std::thread::sleep(Duration::from_millis(1_500));
    let reports: Vec<StreamReport> = streams.into_iter().map(|s| s.stop().unwrap()).collect();

    let mut slowest = 0;
    for (i, r) in reports.iter().enumerate() {
        let (before_sent, before_got) = window(r, r.first_send_ns, t_engage);
        let (during_sent, during_got) = window(r, t_engaged + 1_000_000_000, t_lift);
        let (after_sent, after_got) = window(r, t_lifted, u64::MAX);
        let whole = whole_after(r, t_engage, t_lift);
        eprintln!(
            "stream {i}: before {before_got}/{before_sent}, engaged (from 1 s on) {during_got}/{during_sent}, after lift {after_got}/{after_sent}, whole {:?} ms after the request",
            whole.map(|ns| ns as f64 / 1e6)
        );
        assert!(
            before_sent > 100 && before_got == 0,
            "stream {i}: the fault acted before"
        );
        assert!(
            during_sent > 500,
            "stream {i}: {during_sent} sent while engaged"
        );
        assert_eq!(during_got, during_sent, "stream {i}: whole while engaged");
        let whole = whole.unwrap_or_else(|| panic!("stream {i} never whole"));
        assert!(
            whole <= 1_000_000_000,
            "stream {i}: whole {whole} ns after the request"
        );
        slowest = slowest.max(whole);
        assert!(
            after_sent > 300 && after_got == 0,
            "stream {i}: the fault acts again after the lift"
        );
    }
    eprintln!(
        "all ten streams whole {:.1} ms after the request at most",
        slowest as f64 / 1e6
    );
    // The faults were never ended by the switch.
    for id in &ids {
        assert_eq!(
            client.get_fault(id).unwrap().state,
            FaultState::Active,
            "{id}"
        );
    }
    client
        .cleanup(&fault_api::fault::CleanupRequest {
            namespace: None,
            all: true,
        })
        .unwrap();
}

#[test]
fn the_kill_switch_refuses_bad_input_naming_the_field() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let client = Client::new(&env.agent.api_url());
    let err = client
        .engage_kill_switch(&KillSwitchRequest {
            by: String::new(),
            reason: None,
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("by") && err.to_string().contains("1 to 256"),
        "{err}"
    );
    assert!(!client.kill_switch().unwrap().engaged);
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut res = http
        .post(format!("{}/v1/kill-switch", env.agent.api_url()))
        .content_type("application/json")
        .send(r#"{"by": "x", "colour": "red"}"#)
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body = res.body_mut().read_to_string().unwrap();
    assert!(body.contains("colour"), "{body}");
    assert!(!client.kill_switch().unwrap().engaged);
}
