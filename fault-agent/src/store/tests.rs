use std::os::unix::fs::MetadataExt as _;

use super::*;

pub(crate) const BOOT: &str = "boot-a";

/// A live partition fault of namespace `dynamo` (for tests of the store and the core).
pub(crate) fn record(id: &str, slot: u16, seq: u64) -> FaultRecord {
    let spec: FaultSpec =
        serde_json::from_str(r#"{"namespace":"dynamo","partition":true}"#).expect("spec");
    let now = Timestamp::now();
    FaultRecord {
        id: id.into(),
        spec,
        state: FaultState::Active,
        message: None,
        created_at: now,
        expires_at: now + jiff::SignedDuration::from_secs(600),
        ended_at: None,
        deadline_boot_ns: 1_000_000_000_000,
        boot_id: BOOT.into(),
        slot,
        seq,
        final_counters: Counters::default(),
        resolution: Resolution::default(),
        source_uid: None,
        blast_radius: None,
        notes: vec![],
        schedule: None,
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir, BOOT, 1).expect("opens")
}

/// Inode of each fault file: a rewrite (temporary file renamed over it) changes it.
fn inodes(dir: &Path) -> BTreeMap<String, u64> {
    fault_files(&dir.join(FAULTS_DIR))
        .unwrap()
        .into_iter()
        .map(|(p, n)| (n, fs::metadata(p).unwrap().ino()))
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_change_writes_only_the_faults_it_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        s.insert(record(id, i as u16, i as u64));
    }
    s.save().unwrap();
    let before = inodes(tmp.path());
    assert_eq!(before.len(), 3);

    // A recover of one fault writes one file.
    s.get_mut("b").unwrap().state = FaultState::Recovered;
    s.save().unwrap();
    let after = inodes(tmp.path());
    let rewritten: Vec<&String> = after.keys().filter(|k| before[*k] != after[*k]).collect();
    assert_eq!(rewritten, vec!["b.json"]);

    // A reconcile recomputing every live fault's resolution writes nothing.
    for f in s.live_mut() {
        f.resolution.warnings.push("pods changed".into());
    }
    s.save().unwrap();
    assert_eq!(inodes(tmp.path()), after);

    // Garbage collection removes the file.
    s.remove("c");
    s.save().unwrap();
    assert_eq!(
        inodes(tmp.path()).keys().collect::<Vec<_>>(),
        vec!["a.json", "b.json"]
    );
    drop(s);
    let s = open(tmp.path());
    assert_eq!(s.get("b").unwrap().state, FaultState::Recovered);
    assert!(s.get("c").is_none());
    assert_eq!(s.next_seq, 2, "sequence continues after the highest kept");
}

#[test]
fn a_truncated_fault_file_loses_that_fault_only_and_is_moved_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    s.insert(record("good", 0, 0));
    s.insert(record("torn", 1, 1));
    s.insert(record("empty", 2, 2));
    s.save().unwrap();
    drop(s);
    let fdir = tmp.path().join(FAULTS_DIR);
    let torn = fs::read(fdir.join("torn.json")).unwrap();
    fs::write(fdir.join("torn.json"), &torn[..torn.len() / 2]).unwrap();
    fs::write(fdir.join("empty.json"), b"").unwrap();

    let s = open(tmp.path());
    assert_eq!(s.all().map(|f| f.id.as_str()).collect::<Vec<_>>(), ["good"]);
    let left = names(&fdir);
    assert!(left.contains(&"good.json".to_owned()), "{left:?}");
    for gone in ["torn.json", "empty.json"] {
        assert!(!left.contains(&gone.to_owned()), "{left:?}");
        assert!(
            left.iter()
                .any(|n| n.starts_with(&format!("{gone}.corrupt-"))),
            "{gone} kept aside for the operator: {left:?}"
        );
    }
}

#[test]
fn a_garbage_legacy_faults_json_does_not_stop_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join(LEGACY_FAULTS),
        b"[{\"id\": \"x\", \"spe\x00\xff",
    )
    .unwrap();
    let s =
        Store::open(tmp.path(), BOOT, 1).expect("a damaged faults.json must not stop the agent");
    assert_eq!(s.all().count(), 0);
    let left = names(tmp.path());
    assert!(!left.contains(&LEGACY_FAULTS.to_owned()), "{left:?}");
    assert!(
        left.iter().any(|n| n.starts_with("faults.json.corrupt-")),
        "{left:?}"
    );
}

#[test]
fn a_legacy_faults_json_is_migrated_to_one_file_per_fault() {
    let tmp = tempfile::tempdir().unwrap();
    let list = vec![record("a", 0, 0), record("b", 1, 7)];
    fs::write(
        tmp.path().join(LEGACY_FAULTS),
        serde_json::to_vec(&list).unwrap(),
    )
    .unwrap();
    let s = open(tmp.path());
    assert_eq!(s.all().count(), 2);
    assert_eq!(s.next_seq, 8);
    assert!(!tmp.path().join(LEGACY_FAULTS).exists());
    assert_eq!(
        inodes(tmp.path()).keys().collect::<Vec<_>>(),
        vec!["a.json", "b.json"]
    );
}

#[test]
fn damaged_attachment_records_are_moved_aside_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("attachments.json"), b"[{\"ifname\": \"veth").unwrap();
    fs::write(tmp.path().join("qdiscs.json"), b"").unwrap();
    assert!(load_attachments(tmp.path()).unwrap().is_empty());
    assert!(load_qdiscs(tmp.path()).unwrap().is_empty());
    let left = names(tmp.path());
    assert!(
        left.iter()
            .any(|n| n.starts_with("attachments.json.corrupt-"))
            && left.iter().any(|n| n.starts_with("qdiscs.json.corrupt-")),
        "{left:?}"
    );
}

#[test]
fn a_second_holder_of_a_state_dir_is_refused_naming_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    let e = Store::open(tmp.path(), BOOT, 1).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())) && msg.contains("in use"),
        "{msg}"
    );
    let e = StateLock::acquire(tmp.path()).unwrap_err();
    assert!(matches!(e, LockError::Held { .. }), "{e}");
    drop(s);
    let _again = StateLock::acquire(tmp.path()).expect("free once the holder is gone");
}

#[test]
fn concurrent_writers_never_share_a_temporary_file() {
    // One fixed temporary name made two writers rename each other's half-written files (or
    // fail with "not found"); each write now has its own.
    let tmp = tempfile::tempdir().unwrap();
    std::thread::scope(|s| {
        for t in 0..8u32 {
            let dir = tmp.path();
            s.spawn(move || {
                for i in 0..100u32 {
                    let recs = vec![AttachRecord {
                        ifname: format!("veth{t}-{i}"),
                        ifindex: t * 1000 + i,
                        kind: Default::default(),
                        netns: None,
                        netns_ino: None,
                        mode: crate::dataplane::AttachMode::Tcx,
                        clsact_created: false,
                        clsact_maybe: false,
                    }];
                    save_attachments(dir, &recs).expect("every write succeeds");
                }
            });
        }
    });
    assert_eq!(load_attachments(tmp.path()).unwrap().len(), 1);
    assert_eq!(
        names(tmp.path()),
        ["attachments.json"],
        "no temporary file left"
    );
}

#[test]
fn temporary_files_of_a_crashed_writer_are_removed_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open(tmp.path()));
    let stale = tmp.path().join(FAULTS_DIR).join(".a.json.tmp-99-0");
    fs::write(&stale, b"{half").unwrap();
    let s = open(tmp.path());
    assert!(!stale.exists());
    assert_eq!(s.all().count(), 0);
}

#[test]
fn fault_ids_become_safe_file_names() {
    assert_eq!(fault_file_name("f-abc123"), "f-abc123.json");
    assert_eq!(fault_file_name("storage/cut"), "storage%2Fcut.json");
    assert_eq!(fault_file_name("../x"), "%2E%2E%2Fx.json");
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    s.insert(record("storage/cut", 0, 0));
    s.save().unwrap();
    drop(s);
    assert!(open(tmp.path()).get("storage/cut").is_some());
}

#[test]
fn a_new_boot_recomputes_deadlines_from_the_wall_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    s.insert(record("a", 0, 0));
    s.save().unwrap();
    drop(s);
    let mut s = Store::open(tmp.path(), "boot-b", 5_000_000_000).unwrap();
    let f = s.get("a").unwrap();
    assert_eq!(f.boot_id, "boot-b");
    let left = f.deadline_boot_ns - 5_000_000_000;
    assert!((590e9..=600e9).contains(&(left as f64)), "{left}");
    s.save().unwrap();
    drop(s);
    assert_eq!(
        Store::open(tmp.path(), "boot-b", 0)
            .unwrap()
            .get("a")
            .unwrap()
            .boot_id,
        "boot-b",
        "saved"
    );
}
