//! The agent harness against a real `fault-agent`. Ignored by default: it needs the workspace
//! binaries (`cargo build -p fault-agent -p faultctl`, or `FAULTLINE_BIN_DIR`) and an agent
//! that loads on this kernel. Run with `cargo test -p fault-testkit --test agent -- --ignored`.
use std::time::Duration;

use fault_testkit::{AgentProcess, Family, Topology, faultctl, probe::udp_reachable};

#[test]
#[ignore = "needs the fault-agent and faultctl binaries"]
fn an_agent_starts_restarts_and_leaves_nothing() {
    let _serial = fault_testkit::serial();
    let mut topo = Topology::named("testkit-agent").unwrap();
    let a = topo.add_pod("ns", "a", &[("app", "a")]).unwrap();
    let b = topo.add_pod("ns", "b", &[("app", "b")]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.yaml");
    topo.write_inventory(&inventory).unwrap();

    let mut agent = AgentProcess::builder(&inventory)
        .max_duration("10m")
        .start()
        .unwrap();
    let bpffs = agent.bpffs().to_owned();
    assert!(
        bpffs
            .to_string_lossy()
            .starts_with("/sys/fs/bpf/faultline-test-"),
        "{}",
        bpffs.display()
    );
    assert!(agent.pid().is_some());
    assert!(agent.client().ready());
    let out = faultctl(&agent.api_url(), &["list"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let id = agent.client().create_raw(&serde_json::json!({
        "namespace": "ns", "pod_prefix": "a", "partition": true, "duration": "5m"
    }));
    let id = id.unwrap().id;
    assert!(
        !udp_reachable(&a, &b, Family::V4, 9000, Duration::from_millis(300)).unwrap(),
        "partitioned"
    );

    // SIGKILL leaves the datapath in place; a restart on the same state takes over.
    agent.kill().unwrap();
    assert!(agent.pid().is_none());
    assert!(
        !udp_reachable(&a, &b, Family::V4, 9000, Duration::from_millis(300)).unwrap(),
        "outlives the agent"
    );
    agent.restart().unwrap();
    assert!(agent.restart().is_err(), "already running");
    agent.client().recover(&id).unwrap();
    assert!(
        udp_reachable(&a, &b, Family::V4, 9000, Duration::from_secs(2)).unwrap(),
        "recovered"
    );

    let status = agent.terminate().unwrap();
    assert!(status.success(), "exit {status}:\n{}", agent.log_tail(40));
    assert!(!agent.log().is_empty());
    drop(agent);
    assert!(!bpffs.exists(), "{} left", bpffs.display());
}
