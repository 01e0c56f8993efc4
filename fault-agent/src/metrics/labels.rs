//! Label values derived from a fault, each from a small closed set (or the fault's own id and
//! namespace): never addresses, ports or anything per packet.
use fault_api::{Direction, FaultSpec, FaultState, seed::LABEL_PARTITION_TYPE};

/// The fault's actions, `+`-joined in a fixed order: `partition`, or any of `loss`,
/// `corrupt`, `delay`, `duplicate`, `rate` (e.g. `loss+corrupt`). At most 32 values.
pub fn kind(spec: &FaultSpec) -> String {
    if spec.partition.is_some() {
        return "partition".into();
    }
    let parts: Vec<&str> = [
        (spec.loss_percent.is_some(), "loss"),
        (spec.corrupt_percent.is_some(), "corrupt"),
        (spec.delay.is_some(), "delay"),
        (spec.duplicate_percent.is_some(), "duplicate"),
        (spec.rate.is_some(), "rate"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("+")
    }
}

/// The `fault_id` label: the id the API answers with. A node agent keeps cluster faults as
/// `namespace/name`; the API's id is the object's name (the `namespace` label has the rest),
/// so every mode labels one fault alike.
pub fn fault_id<'a>(id: &'a str, namespace: &str) -> &'a str {
    id.strip_prefix(namespace)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(id)
}

/// `egress`, `ingress` or `both`: the fault's direction relative to its targets.
pub fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
        Direction::Both => "both",
    }
}

/// The seed framework's `experiment_type` of a fault: `network_partition` for a partition,
/// `network_degradation` for loss, corruption, delay, duplication or a rate limit.
pub fn experiment_type(spec: &FaultSpec) -> &'static str {
    if spec.partition.is_some() {
        "network_partition"
    } else {
        "network_degradation"
    }
}

/// The seed API's `partition_type` (`frontend_worker`, `worker_nats`, `worker_worker`,
/// `custom`) a fault was created with; `custom` for faults of the native API (and for a label
/// value outside that set, so that the label stays bounded).
pub fn partition_type(spec: &FaultSpec) -> &'static str {
    match spec.labels.get(LABEL_PARTITION_TYPE).map(String::as_str) {
        Some("frontend_worker") => "frontend_worker",
        Some("worker_nats") => "worker_nats",
        Some("worker_worker") => "worker_worker",
        _ => "custom",
    }
}

/// Every phase, in the order series are written.
pub const PHASES: [FaultState; 7] = [
    FaultState::Pending,
    FaultState::Active,
    FaultState::Expired,
    FaultState::Recovered,
    FaultState::Failed,
    FaultState::Aborted,
    FaultState::DryRun,
];

/// A phase as a label value: `pending`, `active`, `expired`, `recovered`, `failed`,
/// `aborted`, `dry_run`.
pub fn phase(s: FaultState) -> &'static str {
    match s {
        FaultState::Pending => "pending",
        FaultState::Active => "active",
        FaultState::Expired => "expired",
        FaultState::Recovered => "recovered",
        FaultState::Failed => "failed",
        FaultState::Aborted => "aborted",
        FaultState::DryRun => "dry_run",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_a_closed_set_in_a_fixed_order() {
        let mut s = FaultSpec::new("d");
        s.corrupt_percent = Some("1".parse().unwrap());
        s.loss_percent = Some("30".parse().unwrap());
        assert_eq!(kind(&s), "loss+corrupt");
        assert_eq!(experiment_type(&s), "network_degradation");
        let mut p = FaultSpec::new("d");
        p.partition = Some(fault_api::PartitionMode::Connections);
        assert_eq!(kind(&p), "partition");
        assert_eq!(experiment_type(&p), "network_partition");
        p.labels
            .insert(LABEL_PARTITION_TYPE.into(), "worker_nats".into());
        assert_eq!(partition_type(&p), "worker_nats");
        p.labels
            .insert(LABEL_PARTITION_TYPE.into(), "anything-else".into());
        assert_eq!(partition_type(&p), "custom");
        assert_eq!(fault_id("dynamo/cut", "dynamo"), "cut");
        assert_eq!(fault_id("f-1a2b3c", "dynamo"), "f-1a2b3c");
        assert_eq!(fault_id("dynamox/cut", "dynamo"), "dynamox/cut");
    }
}
