//! Limits, blast radius, dry run and the audited protection override on a real standalone
//! agent: every refusal names its limit and applies nothing (the fault list stays empty and
//! traffic flows); blast-radius choices are checked on packets and, over 200 dry runs each,
//! for their distribution (Pearson's chi-square against uniform, rejected at p = 0.001: a
//! correct sampler fails one run in a thousand per assertion).
mod common;

use std::time::{Duration, Instant};

use common::{blocked, fault, inject, reaches};
use fault_api::{FaultPlan, FaultSpec, PartitionMode, TargetMode};
use fault_testkit::{DynamoEnv, Family, Pod, serial};

/// `faultctl inject ARGS` that must be refused; returns its stderr.
fn refused(env: &DynamoEnv, args: &[&str]) -> String {
    let mut all = vec!["inject"];
    all.extend_from_slice(args);
    let out = env.agent.faultctl(&all).unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("faultctl {}\n{e}", all.join(" "));
    e
}

/// Nothing applied: no fault listed, and decode-0 still reaches the frontend.
fn nothing_applied(env: &DynamoEnv) {
    assert!(env.agent.client().list(None).unwrap().faults.is_empty());
    assert!(reaches(&env.pods.decode0, &env.pods.frontend, Family::V4));
}

/// Adds `n` pods `dynamo/w-<i>` labelled `app=w`, and waits until the agent knows them.
fn add_workers(env: &mut DynamoEnv, n: usize) -> Vec<Pod> {
    let pods: Vec<Pod> = (0..n)
        .map(|i| {
            env.topo
                .add_pod("dynamo", &format!("w-{i}"), &[("app", "w")])
                .unwrap()
        })
        .collect();
    env.write_inventory().unwrap();
    wait_for(Duration::from_secs(10), || {
        let v = env.agent.client().get_json("/v1/pods").unwrap();
        let known = v["pods"].as_array().map_or(0, |p| {
            p.iter()
                .filter(|p| p["name"].as_str().is_some_and(|s| s.starts_with("w-")))
                .count()
        });
        known == n
    });
    pods
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn workers(mode: TargetMode, value: Option<u32>) -> FaultSpec {
    let mut s = FaultSpec::new("dynamo");
    s.selector = Some("app=w".parse().unwrap());
    s.partition = Some(PartitionMode::Packets);
    s.mode = mode;
    s.value = value;
    s
}

/// Pearson's chi-square statistic of `observed` counts against equal expected counts.
fn chi_square(observed: &[u32]) -> f64 {
    let total: u32 = observed.iter().sum();
    let expected = f64::from(total) / observed.len() as f64;
    observed
        .iter()
        .map(|&o| (f64::from(o) - expected).powi(2) / expected)
        .sum()
}

/// Upper 0.1% points of the chi-square distribution, by degrees of freedom (1 to 5).
const CHI2_999: [f64; 5] = [10.828, 13.816, 16.266, 18.467, 20.515];
/// The same for 19 degrees of freedom.
const CHI2_999_DF19: f64 = 43.820;

#[test]
fn each_limit_refuses_naming_itself_and_nothing_is_applied() {
    let _s = serial();
    let env = DynamoEnv::start_with(&[
        "--max-duration",
        "1h",
        "--max-duration-for",
        "dynamo=1m",
        "--max-targets",
        "1",
    ])
    .unwrap();

    // Per namespace.
    let e = refused(
        &env,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--partition",
            "--duration",
            "5m",
        ],
    );
    assert!(
        e.contains("duration") && e.contains("--max-duration-for dynamo=1m"),
        "{e}"
    );
    // Cluster-wide, in a namespace without its own limit.
    let e = refused(
        &env,
        &[
            "-n",
            "team-b",
            "--pod-prefix",
            "x",
            "--partition",
            "--duration",
            "2h",
        ],
    );
    assert!(e.contains("--max-duration 1h"), "{e}");
    // Targets: two decode pods over a limit of one.
    let e = refused(
        &env,
        &["-n", "dynamo", "--pod-prefix", "vllm-decode", "--partition"],
    );
    assert!(
        e.contains("up to 2 pods") && e.contains("--max-targets 1"),
        "{e}"
    );
    nothing_applied(&env);

    // Without a duration: capped at the namespace's limit, and said.
    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode",
            "--mode",
            "one",
            "--partition",
        ],
    );
    let f = fault(&env.agent, &id);
    assert_eq!(f.expires_at.duration_since(f.created_at).as_secs(), 60);
    assert!(
        f.warnings
            .iter()
            .any(|w| w.contains("capped at 1m (--max-duration-for dynamo=1m)")),
        "{:?}",
        f.warnings
    );
    env.agent.client().recover(&id).unwrap();
}

#[test]
fn blast_radius_modes_pick_their_count_keep_it_and_cut_only_the_chosen() {
    let _s = serial();
    let mut env = DynamoEnv::start().unwrap();
    let w = add_workers(&mut env, 6);
    let client = env.agent.client();
    for (mode, value, want) in [
        (TargetMode::All, None, 6..=6),
        (TargetMode::One, None, 1..=1),
        (TargetMode::Fixed, Some(2), 2..=2),
        (TargetMode::Fixed, Some(9), 6..=6),
        (TargetMode::FixedPercent, Some(50), 3..=3),
        (TargetMode::RandomMaxPercent, Some(50), 1..=3),
    ] {
        let p = client.plan(&workers(mode, value)).unwrap();
        assert!(want.contains(&p.targets.len()), "{mode}: {p:?}");
        if let Some(b) = &p.blast_radius {
            assert_eq!((b.chosen.len(), b.candidates), (p.targets.len(), 6));
        }
    }
    assert!(
        client.list(None).unwrap().faults.is_empty(),
        "dry runs apply nothing"
    );

    // On packets: fixed 2 cuts exactly the two chosen pods.
    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "-l",
            "app=w",
            "--mode",
            "fixed",
            "--value",
            "2",
            "--partition",
        ],
    );
    let f = fault(&env.agent, &id);
    let chosen = f.blast_radius.clone().expect("a choice").chosen;
    assert_eq!(chosen.len(), 2);
    let shown = common::ctl(&env.agent, &["get", &id]);
    eprintln!("faultctl get {id}\n{shown}");
    assert!(
        shown.contains("blast:      mode fixed 2: 2 of 6 matching"),
        "{shown}"
    );
    let is_chosen = |p: &Pod| chosen.contains(&format!("dynamo/{}", p.name()));
    for p in &w {
        let cut = blocked(p, &env.pods.frontend, Family::V4);
        assert_eq!(
            cut,
            is_chosen(p),
            "{}: cut {cut}, chosen {chosen:?}",
            p.name()
        );
    }
    // Kept across a restart.
    env.agent.kill().unwrap();
    env.agent.restart().unwrap();
    let again = fault(&env.agent, &id);
    assert_eq!(again.blast_radius.unwrap().chosen, chosen);
    assert_eq!(again.targets.len(), 2);
    // A chosen pod that goes away is not replaced.
    let gone = w.iter().find(|p| is_chosen(p)).unwrap().clone();
    env.topo.remove_pod(&gone).unwrap();
    env.write_inventory().unwrap();
    wait_for(Duration::from_secs(10), || {
        fault(&env.agent, &id).targets.len() == 1
    });
    let f = fault(&env.agent, &id);
    assert!(
        f.warnings
            .iter()
            .any(|x| x.contains(&format!("chosen pod dynamo/{} is gone", gone.name()))),
        "{:?}",
        f.warnings
    );
    for p in w.iter().filter(|p| p.name() != gone.name()) {
        assert_eq!(
            blocked(p, &env.pods.frontend, Family::V4),
            is_chosen(p),
            "{}",
            p.name()
        );
    }
    env.agent.client().recover(&id).unwrap();
}

#[test]
fn random_choices_are_uniform_over_200_dry_runs() {
    let _s = serial();
    let mut env = DynamoEnv::start().unwrap();
    add_workers(&mut env, 6);
    let client = env.agent.client();
    let index = |name: &str| name["dynamo/w-".len()..].parse::<usize>().unwrap();

    // fixed-percent 50: always 3 pods, each of the C(6,3) = 20 sets equally likely.
    let mut per_set = std::collections::BTreeMap::<Vec<String>, u32>::new();
    for _ in 0..200 {
        let p: FaultPlan = client
            .plan(&workers(TargetMode::FixedPercent, Some(50)))
            .unwrap();
        let b = p.blast_radius.unwrap();
        assert_eq!(b.chosen.len(), 3);
        *per_set.entry(b.chosen).or_default() += 1;
    }
    let mut sets: Vec<u32> = per_set.values().copied().collect();
    sets.resize(20, 0);
    let x = chi_square(&sets);
    eprintln!("fixed-percent 50 of 6, 200 runs: per set of 3 {sets:?}, chi2 {x:.2} (df 19)");
    assert!(x < CHI2_999_DF19, "per set {sets:?}: chi2 {x:.2}");

    // random-max-percent 50: the count uniform in 1..=3; a single chosen pod uniform.
    let (mut counts, mut single) = ([0u32; 3], [0u32; 6]);
    for _ in 0..200 {
        let p = client
            .plan(&workers(TargetMode::RandomMaxPercent, Some(50)))
            .unwrap();
        let b = p.blast_radius.unwrap();
        counts[b.chosen.len() - 1] += 1;
        if let [one] = b.chosen.as_slice() {
            single[index(one)] += 1;
        }
    }
    let (xc, xs) = (chi_square(&counts), chi_square(&single));
    eprintln!(
        "random-max-percent 50 of 6, 200 runs: counts 1..3 {counts:?} chi2 {xc:.2} (df 2); pod when one {single:?} chi2 {xs:.2} (df 5)"
    );
    assert!(xc < CHI2_999[1], "counts {counts:?}: chi2 {xc:.2}");
    assert!(xs < CHI2_999[4], "single pod {single:?}: chi2 {xs:.2}");
    assert!(
        client.list(None).unwrap().faults.is_empty(),
        "dry runs apply nothing"
    );
}

#[test]
fn a_dry_run_lists_the_plan_and_the_guards_it_trips_and_applies_nothing() {
    let _s = serial();
    let env = DynamoEnv::start_with(&["--max-targets", "1", "--max-duration", "10m"]).unwrap();
    let out = common::ctl(
        &env.agent,
        &[
            "-o",
            "json",
            "inject",
            "--dry-run",
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode",
            "--to-selector",
            "app=frontend",
            "--partition",
            "--duration",
            "1h",
        ],
    );
    let p: FaultPlan = serde_json::from_str(&out).unwrap();
    assert!(!p.accepted);
    assert!(
        p.refusals
            .iter()
            .any(|r| r.starts_with("duration:") && r.contains("--max-duration 10m")),
        "{:?}",
        p.refusals
    );
    assert!(
        p.refusals
            .iter()
            .any(|r| r.starts_with("mode:") && r.contains("--max-targets 1")),
        "{:?}",
        p.refusals
    );
    assert_eq!(p.targets.len(), 2);
    assert_eq!(p.peers.len(), 1);
    let (_, node) = p.nodes.iter().next().expect("one node");
    assert_eq!(
        node.targets,
        ["dynamo/vllm-decode-0", "dynamo/vllm-decode-1"]
    );
    assert_eq!(node.peers, ["dynamo/frontend-0"]);
    assert!(p.rules.is_some_and(|r| r > 0), "{p:?}");
    // Protection is a reason too, not an error.
    let out = common::ctl(
        &env.agent,
        &[
            "-o",
            "json",
            "inject",
            "--dry-run",
            "-n",
            "kube-system",
            "-l",
            "k8s-app=kube-dns",
            "--partition",
        ],
    );
    let p: FaultPlan = serde_json::from_str(&out).unwrap();
    assert!(
        p.refusals
            .iter()
            .any(|r| r.contains("kube-system is protected")),
        "{:?}",
        p.refusals
    );
    // An accepted plan, as a table.
    let out = common::ctl(
        &env.agent,
        &[
            "inject",
            "--dry-run",
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--partition",
        ],
    );
    eprintln!("{out}");
    assert!(
        out.contains("would be accepted") && out.contains("rules:"),
        "{out}"
    );
    nothing_applied(&env);
}

#[test]
fn an_override_is_refused_without_the_flag_and_audited_with_it() {
    let _s = serial();
    let args = [
        "-n",
        "dynamo",
        "--pod-prefix",
        "vllm-prefill",
        "--partition",
        "--override-protection",
        "failover drill 4711",
    ];
    {
        let env = DynamoEnv::start_with(&["--protected-pod", "dynamo/vllm-prefill"]).unwrap();
        let e = refused(&env, &args);
        assert!(
            e.contains("override_protection") && e.contains("--allow-protection-override"),
            "{e}"
        );
        nothing_applied(&env);
    }
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_log = audit_dir.path().join("audit.jsonl");
    let env = DynamoEnv::start_with(&[
        "--protected-pod",
        "dynamo/vllm-prefill",
        "--allow-protection-override",
        "--audit-log",
        audit_log.to_str().unwrap(),
    ])
    .unwrap();
    // Without an override, still refused.
    let e = refused(&env, &args[..5]);
    assert!(e.contains("protected:pod:dynamo/vllm-prefill"), "{e}");
    let id = inject(&env.agent, &args);
    assert!(blocked(&env.pods.prefill, &env.pods.frontend, Family::V4));
    assert!(reaches(&env.pods.decode0, &env.pods.frontend, Family::V4));
    // The override is a record of its own in the JSON-lines audit log: who, which fault,
    // where, why, and the protection it set aside.
    let text = std::fs::read_to_string(&audit_log).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let used: Vec<_> = records
        .iter()
        .filter(|r| r["method"] == "override-protection")
        .collect();
    eprintln!("{used:#?}");
    assert_eq!(used.len(), 1, "{text}");
    let r = used[0];
    assert_eq!(r["user"], "anonymous");
    assert!(
        r["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{r}"
    );
    assert_eq!(
        (r["namespace"].as_str(), r["fault_id"].as_str()),
        (Some("dynamo"), Some(id.as_str()))
    );
    assert_eq!(r["verb"], "create");
    assert_eq!(r["detail"]["reason"], "failover drill 4711");
    let overridden = r["detail"]["overridden"].as_array().unwrap();
    assert!(
        overridden.len() == 1
            && overridden[0]["field"] == "pod_prefix"
            && overridden[0]["message"]
                .as_str()
                .unwrap()
                .contains("protected:pod:dynamo/vllm-prefill"),
        "{r}"
    );
    // The create request itself is audited too, after its override record.
    assert!(
        records
            .iter()
            .any(|c| c["method"] == "POST" && c["fault_id"] == id.as_str() && c["status"] == 201),
        "{text}"
    );
    // And the same line went to the `audit` log target.
    let log = env.agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("audit") && l.contains("override-protection") && l.contains(&id)),
        "{log}"
    );
    env.agent.client().recover(&id).unwrap();
}
