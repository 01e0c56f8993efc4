//! The state dir and cleanup under damage and misuse (issue 13, known defects): the lock
//! against two agents (or `uninstall`) on one state dir, damaged state files, `uninstall`
//! going on past a failure, and the fq root qdisc only ever replacing `noqueue` and only ever
//! deleting its own.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use fault_agent::dataplane::qdisc::{self, Root};
use fault_api::FaultState;
use fault_testkit::{DynamoEnv, Family, bin_path, serial};

fn partition(agent: &fault_testkit::AgentProcess, pod_prefix: &str) -> String {
    inject(
        agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            pod_prefix,
            "--to-selector",
            "app=vllm-prefill",
            "--partition",
        ],
    )
}

fn tcx_programs(dev: &str) -> usize {
    use aya::programs::{SchedClassifier, TcAttachType};
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .map(|t| SchedClassifier::query_tcx(dev, t).map_or(0, |(_, p)| p.len()))
        .sum()
}

/// Waits up to `timeout` for `child` to exit (killing it after that): its status (`None`:
/// it had to be killed) and what it wrote to stderr.
fn exit_within(
    mut child: std::process::Child,
    timeout: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}

/// Regression: nothing stopped a second agent (or `uninstall`) from working on a state dir an
/// agent was using; each would undo the other's work.
#[test]
fn a_second_agent_or_uninstall_on_a_state_dir_in_use_is_refused_naming_the_holder() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = &env.pods;
    partition(&env.agent, "vllm-decode-0");
    let pid = env.agent.pid().unwrap();
    let other_pins = PathBuf::from(format!(
        "{}/faultline-test-second-{}",
        fault_testkit::agent::BPFFS,
        std::process::id()
    ));
    let second = Command::new(bin_path("fault-agent").unwrap())
        .args(["standalone", "--listen", "127.0.0.1:0", "--inventory"])
        .arg(env.inventory())
        .arg("--state-dir")
        .arg(env.agent.state_dir())
        .arg("--bpffs")
        .arg(&other_pins)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, err) = exit_within(second, Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a second agent started on the state dir ({status:?}): {err}"
    );
    assert!(
        err.contains(&format!("in use by fault-agent pid {pid}")),
        "names the holder: {err}"
    );
    assert!(!other_pins.exists(), "the refused agent made no pins");

    let out = env.agent.uninstall().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "uninstall ran under a live agent");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(env.agent.bpffs().exists(), "pins untouched");
    assert!(
        blocked(&p.decode0, &p.prefill, Family::V4),
        "the fault still acts"
    );
    assert_eq!(tcx_programs(p.decode0.host_ifname()), 2);
}

/// Regression: an unparsable `faults.json` stopped the agent. Now each fault has its own
/// file; a damaged one is moved aside with an error naming it, that fault's kernel entries
/// are cleared (its deadline is unknown), the others stay.
#[test]
fn a_damaged_fault_file_loses_that_fault_only_with_a_clear_message() {
    let _s = serial();
    let mut env = DynamoEnv::start().unwrap();
    let p = env.pods.clone();
    let lost = partition(&env.agent, "vllm-decode-0");
    let kept = partition(&env.agent, "vllm-decode-1");
    env.agent.kill().unwrap();
    let faults = env.agent.state_dir().join("faults");
    let file = faults.join(format!("{lost}.json"));
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 3]).unwrap();
    // Garbage in the attachment records too: they are rebuilt from what is found.
    std::fs::write(
        env.agent.state_dir().join("attachments.json"),
        b"\x00\x17garbage",
    )
    .unwrap();
    let before = env.agent.log().len();

    env.agent.restart().unwrap();
    let log = env.agent.log()[before..].to_owned();
    assert!(
        log.contains("damaged state file moved aside")
            && log.contains(&format!("{lost}.json"))
            && log.contains("the fault it held is lost"),
        "a clear message naming the file:\n{log}"
    );
    assert!(log.contains("attachments.json"), "{log}");
    assert!(
        env.agent.client().get_fault(&lost).is_err(),
        "lost fault gone"
    );
    assert_eq!(fault(&env.agent, &kept).state, FaultState::Active);
    assert!(
        reaches(&p.decode0, &p.prefill, Family::V4),
        "the lost fault's entries were cleared"
    );
    assert!(
        blocked(&p.decode1, &p.prefill, Family::V4),
        "the other acts"
    );
    let check = env.agent.client().get_json("/v1/tables/check").unwrap();
    assert_eq!(check["in_step"], true, "{check}");
    assert_eq!(check["kernel"]["faults"], 1, "{check}");
    let aside: Vec<String> = std::fs::read_dir(&faults)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{lost}.json.corrupt-")))
        .collect();
    assert_eq!(aside.len(), 1, "kept aside for the operator");
    for pod in env.topo.pods() {
        assert_eq!(tcx_programs(pod.host_ifname()), 2, "{}", pod.host_ifname());
    }
    let status = env.agent.terminate().unwrap();
    assert!(status.success(), "{}", env.agent.log_tail(20));
    assert!(!env.agent.bpffs().exists());
    assert_eq!(tcx_programs(p.decode0.host_ifname()), 0);
}

/// Regression: `fault-agent uninstall` stopped at its first error, leaving every later
/// record's programs attached (and the pins). Now it goes on, lists what failed and keeps
/// only that recorded for another run.
#[test]
fn uninstall_goes_on_past_a_failure_and_keeps_only_what_failed() {
    let _s = serial();
    let mut env = DynamoEnv::start().unwrap();
    let p = env.pods.clone();
    partition(&env.agent, "vllm-decode-0");
    env.agent.kill().unwrap();
    let records = env.agent.state_dir().join("attachments.json");
    let mut list: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&records).unwrap()).unwrap();
    assert_eq!(list.len(), 5);
    // A pod interface whose "namespace" cannot be entered (a plain file), first in line.
    let not_a_netns = env.agent.state_dir().join("not-a-netns");
    std::fs::write(&not_a_netns, b"").unwrap();
    list.insert(
        0,
        serde_json::json!({
            "ifname": "eth0", "ifindex": 2, "kind": "pod", "mode": "netlink",
            "netns": not_a_netns,
        }),
    );
    std::fs::write(&records, serde_json::to_vec(&list).unwrap()).unwrap();

    let out = env.agent.uninstall().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the failure is reported: {err}");
    assert!(
        err.contains("interface eth0 in") && err.contains("5 of 6 interfaces"),
        "{err}"
    );
    for pod in env.topo.pods() {
        assert_eq!(
            tcx_programs(pod.host_ifname()),
            0,
            "removed past the failure: {}",
            pod.host_ifname()
        );
    }
    assert!(!env.agent.bpffs().exists(), "pins removed past the failure");
    assert!(reaches(&p.decode0, &p.prefill, Family::V4));
    let left: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&records).unwrap()).unwrap();
    assert_eq!(left.len(), 1, "only the failed record stays: {left:?}");
    assert_eq!(left[0]["ifname"], "eth0");
    // Once the cause is gone, a second run completes.
    std::fs::remove_file(&not_a_netns).unwrap();
    let out = env.agent.uninstall().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a 4-queue veth pair, removed on drop.
struct Scratch {
    name: String,
}

impl Scratch {
    fn new() -> Self {
        let name = format!("flqd{}", std::process::id());
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap().success();
            assert!(ok, "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let s = Self { name };
        ip(&[
            "-n",
            &s.name,
            "link",
            "add",
            "qa",
            "numtxqueues",
            "4",
            "type",
            "veth",
            "peer",
            "qb",
            "numtxqueues",
            "4",
        ]);
        ip(&["-n", &s.name, "link", "set", "qa", "up"]);
        s
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn ifindex(&self) -> u32 {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j", "link", "show", "qa"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["ifindex"].as_u64().unwrap() as u32
    }

    fn tc(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "tc"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Replaces the root qdisc (`args` after `root`; none: back to the default, noqueue).
    fn set_root(&self, args: &[&str]) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "tc", "qdisc", "del", "dev", "qa", "root",
            ])
            .output();
        if !args.is_empty() {
            let mut all = vec!["qdisc", "add", "dev", "qa", "root"];
            all.extend_from_slice(args);
            self.tc(&all);
        }
    }

    fn root(&self) -> String {
        self.tc(&["qdisc", "show", "dev", "qa", "root"])
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Regression: `install_fq` took `mq` and `pfifo_fast` for replaceable defaults (a device
/// that queues would have had its qdisc replaced for everyone's traffic), and `delete_root`
/// deleted whatever root qdisc was there. Only `noqueue` is replaced; only an fq with our
/// handle is deleted.
#[test]
fn fq_replaces_only_noqueue_and_only_our_fq_is_ever_deleted() {
    let s = Scratch::new();
    let (ns, index) = (s.path(), s.ifindex());
    for kind in ["mq", "pfifo_fast"] {
        s.set_root(&["handle", "1:", kind]);
        assert_eq!(
            qdisc::root(Some(&ns), index).unwrap(),
            Root::Other(kind.into())
        );
        let e = format!(
            "{:#}",
            qdisc::install_fq(Some(&ns), "qa", index).unwrap_err()
        );
        assert!(
            e.contains(&format!("has a {kind} root qdisc")) && e.contains("only noqueue"),
            "{e}"
        );
        assert!(s.root().contains(kind), "left as it was: {}", s.root());
        assert!(!qdisc::delete_our_fq(Some(&ns), index).unwrap());
        assert!(s.root().contains(kind), "not deleted: {}", s.root());
    }
    // Our handle on another kind is not ours either.
    s.set_root(&["handle", "fa17:", "pfifo"]);
    assert!(!qdisc::delete_our_fq(Some(&ns), index).unwrap());
    assert!(s.root().contains("pfifo"), "{}", s.root());
    // noqueue is replaced, where the kernel has fq (not this host's: see tests/vm.rs).
    s.set_root(&[]);
    assert!(s.root().contains("noqueue"), "{}", s.root());
    if let Ok(ours) = qdisc::install_fq(Some(&ns), "qa", index) {
        assert!(ours);
        assert_eq!(
            qdisc::root(Some(&ns), index).unwrap(),
            Root::Fq { ours: true }
        );
        assert!(qdisc::delete_our_fq(Some(&ns), index).unwrap());
    }
}
