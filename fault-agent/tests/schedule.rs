//! Schedules on a real standalone agent (`/v1/schedules`, `faultctl schedule`): faults created
//! at the cron's fire times (seconds resolution) that cut real packets, the concurrency
//! policies, the history limit, a restart (with the one catch-up of a missed fire time), and
//! delete (no new faults; the live one recovered).
mod common;

use std::time::Duration;

use common::ctl;
use fault_api::{
    Fault, FaultDuration, FaultSpec, FaultState, PartitionMode, Selector,
    schedule::{ConcurrencyPolicy, CronSchedule, Schedule, ScheduleSpec},
};
use fault_testkit::{AgentProcess, DynamoEnv, Family, StreamOpts, probe, serial};
use jiff::Timestamp;

/// How late after its fire time a fault may be created: the scheduler's wake-up plus one
/// create on the core.
const FIRE_BOUND: Duration = Duration::from_millis(300);

/// Packets this close to a fault's start or end are not judged (the write and the clock
/// reads around them).
const EDGE: Duration = Duration::from_millis(100);

fn wait(d: Duration) {
    std::thread::sleep(d);
}

/// The faults `schedule` created, oldest first.
fn faults_of(agent: &AgentProcess, schedule: &str) -> Vec<Fault> {
    let mut v: Vec<Fault> = agent
        .client()
        .list(None)
        .unwrap()
        .faults
        .into_iter()
        .filter(|f| f.schedule.as_deref() == Some(schedule))
        .collect();
    v.sort_by_key(|f| f.created_at);
    v
}

fn template(pod_prefix: &str, duration_ms: u64) -> FaultSpec {
    let mut t = FaultSpec::new("dynamo");
    t.pod_prefix = Some(pod_prefix.into());
    t.to_selectors = vec!["app=vllm-prefill".parse::<Selector>().unwrap()];
    t.partition = Some(PartitionMode::Packets);
    t.duration = Some(FaultDuration::from_millis(duration_ms).unwrap());
    t
}

fn schedule(name: &str, cron: &str, policy: ConcurrencyPolicy, t: FaultSpec) -> ScheduleSpec {
    ScheduleSpec {
        name: name.into(),
        cron: cron.into(),
        time_zone: "UTC".into(),
        template: t,
        concurrency_policy: policy,
        history_limit: 20,
        suspend: false,
        starting_deadline: None,
    }
}

/// Each fault's lag behind the fire time it was created for (the latest at or before its
/// creation): must be within [`FIRE_BOUND`]. Returns the fire times.
fn assert_on_fire_times(cron: &CronSchedule, faults: &[Fault]) -> Vec<Timestamp> {
    faults
        .iter()
        .map(|f| {
            let fire = cron.latest_at_or_before(f.created_at).unwrap();
            let lag = f.created_at.duration_since(fire).unsigned_abs();
            eprintln!("fault {} fire time {fire} created {lag:?} after it", f.id);
            assert!(lag <= FIRE_BOUND, "{} created {lag:?} after {fire}", f.id);
            fire
        })
        .collect()
}

/// When a fault stopped acting (its recover, or its deadline).
fn end_of(f: &Fault) -> Timestamp {
    f.ended_at.unwrap_or(f.expires_at)
}

#[test]
fn a_seconds_schedule_creates_faults_at_its_fire_times_that_cut_real_packets() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = &env.pods;
    // Wall clock and boottime read together: fault times onto the stream's clock.
    let (wall0, boot0) = (Timestamp::now(), fault_testkit::boottime_ns());
    let to_boot = |t: Timestamp| (boot0 as i128 + t.duration_since(wall0).as_nanos()) as u64;
    let opts = StreamOpts {
        count: u64::MAX,
        rate_pps: 500,
        port: 41_300,
        ..Default::default()
    };
    let stream = probe::udp_stream_background(&p.decode0, &p.prefill, Family::V4, &opts).unwrap();
    ctl(
        &env.agent,
        &[
            "schedule",
            "create",
            "every-3s",
            "--cron",
            "*/3 * * * * *",
            "--history-limit",
            "10",
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--to-selector",
            "app=vllm-prefill",
            "--partition",
            "--duration",
            "2s",
        ],
    );
    wait(Duration::from_millis(10_500));
    let listed = ctl(&env.agent, &["schedule", "list"]);
    eprintln!("{listed}");
    assert!(
        listed.contains("every-3s") && listed.contains("*/3 * * * * *"),
        "{listed}"
    );
    let deleted: Schedule = serde_json::from_str(&ctl(
        &env.agent,
        &["-o", "json", "schedule", "delete", "every-3s"],
    ))
    .unwrap();
    let r = stream.stop().unwrap();
    eprintln!("stream: {r}");

    let faults = faults_of(&env.agent, "every-3s");
    assert!(faults.len() >= 3, "3 fire times in 10.5 s: {faults:#?}");
    assert_eq!(deleted.status.created as usize, faults.len());
    let cron = CronSchedule::parse("*/3 * * * * *", "UTC").unwrap();
    let fires = assert_on_fire_times(&cron, &faults);
    for w in fires.windows(2) {
        assert_eq!(
            w[1].duration_since(w[0]).as_secs(),
            3,
            "one fault per fire time"
        );
    }
    // Every datagram sent well inside a fault was dropped; every one sent well outside all
    // faults arrived.
    let mut received = vec![false; r.send_ns.len()];
    r.arrivals
        .iter()
        .for_each(|a| received[a.seq as usize] = true);
    let edge = EDGE.as_nanos() as u64;
    let windows: Vec<(u64, u64)> = faults
        .iter()
        .map(|f| (to_boot(f.created_at), to_boot(end_of(f))))
        .collect();
    let (mut inside, mut outside) = (0, 0);
    for (seq, &sent) in r.send_ns.iter().enumerate() {
        if windows
            .iter()
            .any(|&(a, b)| sent > a + edge && sent + edge < b)
        {
            inside += 1;
            assert!(!received[seq], "datagram {seq} passed during a fault");
        } else if windows
            .iter()
            .all(|&(a, b)| sent + edge < a || sent > b + edge)
        {
            outside += 1;
            assert!(received[seq], "datagram {seq} lost outside every fault");
        }
    }
    eprintln!("{inside} datagrams inside faults (all dropped), {outside} outside (all arrived)");
    assert!(
        inside > 1000 && outside > 500,
        "{inside} inside, {outside} outside"
    );
    let live: Vec<&Fault> = faults.iter().filter(|f| f.state.is_live()).collect();
    assert!(live.is_empty(), "delete recovers the live fault: {live:#?}");
    let after = faults_of(&env.agent, "every-3s").len();
    wait(Duration::from_millis(3500));
    assert_eq!(
        faults_of(&env.agent, "every-3s").len(),
        after,
        "no fault after delete"
    );
}

#[test]
fn forbid_skips_while_a_fault_is_live_and_replace_recovers_it_first() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let client = env.agent.client();
    let cron = CronSchedule::parse("*/2 * * * * *", "UTC").unwrap();

    // Forbid: 5 s faults every 2 s: the fire times while one is live are skipped.
    let s = schedule(
        "forbid",
        "*/2 * * * * *",
        ConcurrencyPolicy::Forbid,
        template("vllm-decode-0", 5000),
    );
    client.create_schedule(&s).unwrap();
    // The status says why a fire time was skipped (until the next fault is created).
    let mut said = None;
    for _ in 0..9 {
        wait(Duration::from_secs(1));
        let st = client.get_schedule("forbid").unwrap().status;
        said = said.or(st.last_error.filter(|e| e.contains("skipped (Forbid)")));
    }
    let st = client.delete_schedule("forbid").unwrap().status;
    let faults = faults_of(&env.agent, "forbid");
    eprintln!(
        "forbid: created {} skipped {}, said {said:?}",
        st.created, st.skipped
    );
    assert!(faults.len() >= 2 && st.skipped >= 2, "{st:#?}");
    assert!(said.is_some(), "{st:#?}");
    assert_on_fire_times(&cron, &faults);
    for w in faults.windows(2) {
        assert!(
            w[1].created_at >= w[0].expires_at,
            "{} started before {} ended",
            w[1].id,
            w[0].id
        );
        // The next one comes at the first fire time after the previous one expired.
        let gap = w[1]
            .created_at
            .duration_since(w[0].expires_at)
            .unsigned_abs();
        assert!(gap <= Duration::from_secs(2) + FIRE_BOUND, "{gap:?}");
    }

    // Replace: the same, but each fire time recovers the live fault and starts a new one.
    let s = schedule(
        "replace",
        "*/2 * * * * *",
        ConcurrencyPolicy::Replace,
        template("vllm-decode-1", 5000),
    );
    client.create_schedule(&s).unwrap();
    wait(Duration::from_millis(7_000));
    client.suspend_schedule("replace", true).unwrap();
    let faults = faults_of(&env.agent, "replace");
    assert!(faults.len() >= 3, "{faults:#?}");
    assert_on_fire_times(&cron, &faults);
    for w in faults.windows(2) {
        assert_eq!(w[0].state, FaultState::Recovered, "{:#?}", w[0]);
        let ended = w[0].ended_at.unwrap();
        assert!(
            ended <= w[1].created_at,
            "recovered before the next one starts"
        );
        let gap = w[1].created_at.duration_since(ended).unsigned_abs();
        eprintln!(
            "replace: {} recovered {gap:?} before {} was created",
            w[0].id, w[1].id
        );
        assert!(gap <= FIRE_BOUND, "{gap:?}");
    }
    let last = faults.last().unwrap();
    assert_eq!(last.state, FaultState::Active, "{last:#?}");
    let blocked = common::blocked(&env.pods.decode1, &env.pods.prefill, Family::V4);
    assert!(blocked, "the replacing fault acts on packets");
    let gone = client.delete_schedule("replace").unwrap();
    assert_eq!(gone.status.active, vec![last.id.clone()]);
    assert_eq!(
        common::fault(&env.agent, &last.id).state,
        FaultState::Recovered
    );
    assert!(common::reaches(
        &env.pods.decode1,
        &env.pods.prefill,
        Family::V4
    ));
}

#[test]
fn history_is_trimmed_and_schedules_survive_a_restart_with_one_catch_up() {
    let _s = serial();
    let mut env = DynamoEnv::start().unwrap();
    let client = env.agent.client();
    let mut s = schedule(
        "every-second",
        "* * * * * *",
        ConcurrencyPolicy::Allow,
        template("vllm-decode-0", 400),
    );
    s.history_limit = 2;
    client.create_schedule(&s).unwrap();
    wait(Duration::from_millis(5_500));
    // Suspended, and its last fault ended: nothing changes between the two reads below.
    client.suspend_schedule("every-second", true).unwrap();
    wait(Duration::from_millis(600));
    let got = client.get_schedule("every-second").unwrap();
    eprintln!("every-second: {:#?}", got.status);
    assert!(got.status.created >= 5, "{:#?}", got.status);
    assert_eq!(got.status.history.len(), 2, "{:#?}", got.status);
    let ended: Vec<Fault> = faults_of(&env.agent, "every-second")
        .into_iter()
        .filter(|f| !f.state.is_live())
        .collect();
    let kept: Vec<&str> = ended.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(kept, got.status.history, "older ended faults are forgotten");
    client.delete_schedule("every-second").unwrap();

    // A 15 s schedule; the agent is down across one of its fire times (and starts in less
    // than 14 s, before the next one).
    let mut s = schedule(
        "every-15s",
        "*/15 * * * * *",
        ConcurrencyPolicy::Allow,
        template("vllm-decode-1", 1000),
    );
    s.history_limit = 10;
    client.create_schedule(&s).unwrap();
    let cron = CronSchedule::parse("*/15 * * * * *", "UTC").unwrap();
    let first = cron.next_after(Timestamp::now()).unwrap();
    let missed = cron.next_after(first).unwrap();
    let next_regular = cron.next_after(missed).unwrap();
    wait(first.duration_since(Timestamp::now()).unsigned_abs() + Duration::from_millis(500));
    let before = client.get_schedule("every-15s").unwrap().status;
    assert_eq!(before.created, 1, "{before:#?}");
    env.agent.kill().unwrap();
    wait(missed.duration_since(Timestamp::now()).unsigned_abs() + Duration::from_millis(500));
    env.agent.restart().unwrap();
    let ready = Timestamp::now();
    eprintln!(
        "agent back {:?} after the missed fire time",
        ready.duration_since(missed)
    );
    assert!(ready < next_regular, "the agent took too long to start");
    let client = env.agent.client();
    let after = client.get_schedule("every-15s").unwrap();
    eprintln!("after the restart: {:#?}", after.status);
    assert_eq!(after.spec, s, "the schedule survives the restart");
    assert_eq!(
        after.status.created, 2,
        "one catch-up for the missed fire time"
    );
    assert_eq!(after.status.last_schedule_time, Some(missed));
    let faults = faults_of(&env.agent, "every-15s");
    let catch_up = faults.last().unwrap();
    // Made up as the agent came back (its first tick may follow readiness by a moment).
    let late = catch_up.created_at.duration_since(ready).as_secs_f64();
    assert!(catch_up.created_at > missed && late < 1.0, "{catch_up:#?}");
    // And it goes on at its fire times.
    wait(next_regular.duration_since(Timestamp::now()).unsigned_abs() + Duration::from_millis(500));
    let regular: Vec<Fault> = faults_of(&env.agent, "every-15s")
        .into_iter()
        .filter(|f| f.created_at >= next_regular)
        .collect();
    assert_eq!(regular.len(), 1, "{regular:#?}");
    assert_on_fire_times(&cron, &regular);
    client.delete_schedule("every-15s").unwrap();
}

#[test]
fn bad_schedules_are_refused_naming_the_field() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let out = env
        .agent
        .faultctl(&[
            "schedule",
            "create",
            "bad",
            "--cron",
            "0 9 15 *",
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm",
            "--partition",
            "--duration",
            "1s",
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--cron") && err.contains("5 fields"), "{err}");
    // Past the CLI, the agent says the same.
    let mut s = schedule(
        "bad",
        "0 9 15 * *",
        ConcurrencyPolicy::Allow,
        template("vllm", 1000),
    );
    s.time_zone = "Europe/Atlantis".into();
    match env.agent.client().create_schedule(&s) {
        Err(fault_api::client::ClientError::Api { status, error }) => {
            assert_eq!(status, 422);
            assert_eq!(error.field.as_deref(), Some("time_zone"), "{error:?}");
        }
        other => panic!("{other:?}"),
    }
    s.time_zone = "Europe/Berlin".into();
    s.template.duration = None;
    let e = env
        .agent
        .client()
        .create_schedule(&s)
        .unwrap_err()
        .to_string();
    assert!(e.contains("template.duration"), "{e}");
    // A protected target is refused at each fire time, and said in the status.
    let mut s = schedule(
        "guarded",
        "* * * * * *",
        ConcurrencyPolicy::Allow,
        template("x", 1000),
    );
    s.template.namespace = "kube-system".into();
    env.agent.client().create_schedule(&s).unwrap();
    wait(Duration::from_millis(1_500));
    let st = env.agent.client().get_schedule("guarded").unwrap().status;
    assert_eq!(st.created, 0);
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("kube-system")),
        "{st:#?}"
    );
    assert!(env.agent.client().list(None).unwrap().faults.is_empty());
    let e = env
        .agent
        .client()
        .get_schedule("nope")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("404") && e.contains("no schedule named nope"),
        "{e}"
    );
}

#[test]
fn the_seed_tables_monthly_experiment_from_a_yaml_file() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("monthly.yaml");
    std::fs::write(
        &file,
        "name: monthly-partition\n\
         cron: \"0 9 15 * *\"\n\
         time_zone: Europe/Berlin\n\
         concurrency_policy: Forbid\n\
         template:\n  namespace: dynamo\n  pod_prefix: vllm-decode\n  to_selectors: [\"app=vllm-prefill\"]\n  partition: true\n  duration: 10m\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let shown = ctl(&env.agent, &["schedule", "create-file", path]);
    eprintln!("{shown}");
    let got = env
        .agent
        .client()
        .get_schedule("monthly-partition")
        .unwrap();
    let next = got.status.next_schedule_time.unwrap();
    let local = next.to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap());
    assert_eq!(
        (local.day(), local.hour(), local.minute()),
        (15, 9, 0),
        "{local}"
    );
    assert!(next > Timestamp::now(), "{next}");
    let expected = CronSchedule::parse("0 9 15 * *", "Europe/Berlin")
        .unwrap()
        .next_after(got.status.created_at.unwrap());
    assert_eq!(Some(next), expected);
    assert_eq!(got.spec.concurrency_policy, ConcurrencyPolicy::Forbid);
    assert!(shown.contains("0 9 15 * * (Europe/Berlin)"), "{shown}");
    ctl(&env.agent, &["schedule", "delete", "monthly-partition"]);
    assert!(
        env.agent
            .client()
            .list_schedules()
            .unwrap()
            .schedules
            .is_empty()
    );
}
