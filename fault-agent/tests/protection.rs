//! Protected resources on a real agent: a fault that targets a protected namespace or pod is
//! refused naming the field and the protection, with nothing applied; protected pods among a
//! fault's peers are carved out on real packets, and the fault says so.
mod common;

use common::{blocked, fault, inject, reaches};
use fault_testkit::{DynamoEnv, Family, serial};

/// `faultctl inject ARGS` that must be refused; returns its stderr.
fn refused(env: &DynamoEnv, args: &[&str]) -> String {
    let mut all = vec!["inject"];
    all.extend_from_slice(args);
    let out = env.agent.faultctl(&all).unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn protected_targets_are_refused_and_protected_peers_are_carved_out() {
    let _s = serial();
    let env = DynamoEnv::start_with(&["--protected-pod", "dynamo/vllm-prefill"]).unwrap();
    let p = &env.pods;

    // Default protection: kube-system, whatever the targets (here cluster DNS).
    let e = refused(
        &env,
        &["-n", "kube-system", "-l", "k8s-app=kube-dns", "--partition"],
    );
    assert!(
        e.contains("namespace") && e.contains("kube-system is protected"),
        "{e}"
    );
    let e = refused(
        &env,
        &[
            "-n",
            "monitoring",
            "--pod-prefix",
            "prometheus",
            "--loss",
            "10%",
        ],
    );
    assert!(e.contains("monitoring/prometheus"), "{e}");
    // The configured pod, by prefix and by selector: the field and the pod are named.
    let e = refused(
        &env,
        &["-n", "dynamo", "--pod-prefix", "vllm-pre", "--partition"],
    );
    assert!(
        e.contains("pod_prefix") && e.contains("protected:pod:dynamo/vllm-prefill"),
        "{e}"
    );
    let e = refused(
        &env,
        &["-n", "dynamo", "-l", "app=vllm-prefill", "--partition"],
    );
    assert!(
        e.contains("selector") && e.contains("vllm-prefill-0"),
        "{e}"
    );
    assert!(
        env.agent.client().list(None).unwrap().faults.is_empty(),
        "nothing applied"
    );

    // As a peer: carved out, and said.
    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--partition",
        ],
    );
    for fam in [Family::V4, Family::V6] {
        assert!(blocked(&p.decode0, &p.frontend, fam), "{fam:?}");
        assert!(
            reaches(&p.decode0, &p.prefill, fam),
            "protected peer ({fam:?})"
        );
    }
    let f = fault(&env.agent, &id);
    let carved = &f.protected["protected:pod:dynamo/vllm-prefill"];
    assert!(
        carved.contains(&p.prefill.ip(Family::V4)) && carved.contains(&p.prefill.ip(Family::V6)),
        "{f:?}"
    );
    env.agent.client().recover(&id).unwrap();

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
        ],
    );
    assert!(reaches(&p.decode0, &p.prefill, Family::V4));
    let f = fault(&env.agent, &id);
    assert!(f.peers.is_empty(), "{f:?}");
    assert!(
        f.warnings
            .iter()
            .any(|w| w.contains("peer pod dynamo/vllm-prefill-0 is protected")),
        "{:?}",
        f.warnings
    );
    env.agent.client().recover(&id).unwrap();
}
