use std::net::IpAddr;

use fault_common::{Direction, Role};

use super::*;
use crate::store::tests::{BOOT, record};

fn overflow(slots: Vec<u16>) -> TooManyFaults {
    TooManyFaults {
        target: IpAddr::from([198, 18, 0, 1]),
        direction: Direction::Egress,
        role: Role::Target,
        peer: "198.18.0.0/15".parse().unwrap(),
        slots,
    }
}

#[test]
fn an_overflow_fails_the_newest_fault_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path(), BOOT, 1).unwrap();
    store.insert(record("old", 3, 0));
    store.insert(record("new", 4, 1));
    store.insert(record("other", 5, 2));
    assert_eq!(
        fail_newest(&mut store, &overflow(vec![3, 4])).unwrap(),
        "new"
    );
    assert_eq!(store.get("new").unwrap().state, FaultState::Failed);
    assert!(
        store
            .get("new")
            .unwrap()
            .message
            .as_deref()
            .unwrap()
            .contains("more than")
    );
    assert_eq!(store.get("old").unwrap().state, FaultState::Active);
    assert_eq!(store.get("other").unwrap().state, FaultState::Active);
}

/// Regression: an overflow naming no live fault made `desired_tolerant` return empty tables,
/// which the reconcile then wrote: every fault's entries wiped from the maps.
#[test]
fn an_overflow_naming_no_live_fault_is_an_error_not_empty_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path(), BOOT, 1).unwrap();
    store.insert(record("a", 3, 0));
    let mut ended = record("b", 9, 1);
    ended.state = FaultState::Recovered;
    store.insert(ended);
    for slots in [vec![], vec![7], vec![9]] {
        let e = fail_newest(&mut store, &overflow(slots.clone())).unwrap_err();
        assert!(
            format!("{e}").contains("left as they are"),
            "{slots:?}: {e}"
        );
    }
    assert_eq!(
        store.get("a").unwrap().state,
        FaultState::Active,
        "untouched"
    );
}
