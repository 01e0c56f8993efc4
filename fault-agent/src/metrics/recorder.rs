//! What the agent observes as it works (durations, lateness, failures, faults created): the
//! instruments the core and the API handlers record into, shared (cheap clones of the same
//! counters) with the registry that serves them.
use std::time::Duration;

use fault_api::{Fault, FaultSpec};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::labels;

/// Labels of `chaos_network_partitions_created_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CreatedLabels {
    /// The fault's kind ([`labels::kind`]).
    pub scenario: String,
    /// The seed API's `partition_type` ([`labels::partition_type`]).
    pub partition_type: String,
}

/// Labels of `chaos_experiment_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExperimentLabels {
    /// [`labels::experiment_type`].
    pub experiment_type: String,
}

/// Labels of `faultline_abort_condition_value`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AbortLabels {
    pub fault_id: String,
    pub namespace: String,
    /// `http` or `prometheus`.
    pub condition: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn fault_duration_histogram() -> Histogram {
    // Seconds: from a short test fault to the longest default (--max-duration 1h) and past it.
    Histogram::new([
        1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    ])
}

/// See the module docs. Clones record into the same series.
#[derive(Clone, Debug)]
pub struct Recorder {
    /// `faultline_reconcile_duration_seconds`.
    reconcile: Histogram,
    /// `faultline_fault_apply_duration_seconds`.
    apply: Histogram,
    /// `faultline_fault_lift_duration_seconds`.
    lift: Histogram,
    /// `faultline_fault_expiry_lateness_seconds`.
    expiry_lateness: Histogram,
    /// `faultline_attach_failures_total`.
    attach_failures: Counter,
    /// `faultline_kube_event_failures_total`.
    event_failures: Counter,
    /// `chaos_network_partitions_created_total`.
    created: Family<CreatedLabels, Counter>,
    /// `chaos_experiment_duration_seconds`.
    experiment_duration: Family<ExperimentLabels, Histogram>,
    /// `faultline_verify_probes_total`.
    verify_probes: Counter,
    /// `faultline_abort_condition_value`.
    abort_value: Family<AbortLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            reconcile: latency_histogram(),
            apply: latency_histogram(),
            lift: latency_histogram(),
            expiry_lateness: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            attach_failures: Counter::default(),
            event_failures: Counter::default(),
            created: Family::default(),
            experiment_duration: Family::new_with_constructor(fault_duration_histogram),
            verify_probes: Counter::default(),
            abort_value: Family::default(),
        }
    }
}

impl Recorder {
    /// Registers every instrument (names in the crate's metrics table, `DEVELOPERS.md`).
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "faultline_reconcile_duration_seconds",
            "Time one reconcile took (faults and pods to map writes), seconds",
            self.reconcile.clone(),
        );
        reg.register(
            "faultline_fault_apply_duration_seconds",
            "From a create request to the fault in the kernel maps (cluster API: to the nodes' report), seconds",
            self.apply.clone(),
        );
        reg.register(
            "faultline_fault_lift_duration_seconds",
            "From a recover or cleanup request to the fault out of the kernel maps, seconds",
            self.lift.clone(),
        );
        reg.register(
            "faultline_fault_expiry_lateness_seconds",
            "How long after its deadline the agent lifted an expired fault from the maps (the kernel stops it at the deadline itself), seconds",
            self.expiry_lateness.clone(),
        );
        reg.register(
            "faultline_attach_failures",
            "Attempts to attach a program to an interface that failed (each sync retries)",
            self.attach_failures.clone(),
        );
        reg.register(
            "faultline_kube_event_failures",
            "Kubernetes events this agent could not publish (refused, or no answer within 5 s); reconciling goes on without them",
            self.event_failures.clone(),
        );
        reg.register(
            "chaos_network_partitions_created",
            "Faults created through this agent's API (seed framework name): scenario is the fault's kind, partition_type the seed API's",
            self.created.clone(),
        );
        reg.register(
            "chaos_experiment_duration_seconds",
            "How long faults that ended here lasted, from creation to their end (seed framework name), seconds",
            self.experiment_duration.clone(),
        );
        reg.register(
            "faultline_verify_probes",
            "Probe packets sent by fault verifications (ICMP echo, TCP SYN, UDP), SO_MARK 0xfa17005e",
            self.verify_probes.clone(),
        );
        reg.register(
            "faultline_abort_condition_value",
            "The last measurement of a live fault's abort condition: an HTTP probe's failure rate over its window in percent, or a Prometheus query's value",
            self.abort_value.clone(),
        );
    }

    /// An abort condition measured `value` (`None`: no value, the series goes).
    pub fn abort_measured(&self, labels: &AbortLabels, value: Option<f64>) {
        match value {
            Some(v) => {
                self.abort_value.get_or_create(labels).set(v);
            }
            None => {
                self.abort_value.remove(labels);
            }
        }
    }

    /// A verification sent `n` probe packets.
    pub fn verify_probes(&self, n: u64) {
        self.verify_probes.inc_by(n);
    }

    /// One reconcile took `d`.
    pub fn reconcile_took(&self, d: Duration) {
        self.reconcile.observe(d.as_secs_f64());
    }

    /// A create request took `d` until the fault was in the maps.
    pub fn applied(&self, d: Duration) {
        self.apply.observe(d.as_secs_f64());
    }

    /// A recover or cleanup request took `d` until the faults were out of the maps.
    pub fn lifted(&self, d: Duration) {
        self.lift.observe(d.as_secs_f64());
    }

    /// An expired fault was lifted `late` after its deadline.
    pub fn expired_late(&self, late: Duration) {
        self.expiry_lateness.observe(late.as_secs_f64());
    }

    /// `n` attach attempts failed.
    pub fn attach_failed(&self, n: usize) {
        if n > 0 {
            self.attach_failures.inc_by(n as u64);
        }
    }

    /// A Kubernetes event could not be published.
    pub fn event_failed(&self) {
        self.event_failures.inc();
    }

    /// A fault was created.
    pub fn created(&self, spec: &FaultSpec) {
        self.created
            .get_or_create(&CreatedLabels {
                scenario: labels::kind(spec),
                partition_type: labels::partition_type(spec).into(),
            })
            .inc();
    }

    /// A fault of `spec` ended after lasting `lasted`.
    pub fn ended(&self, spec: &FaultSpec, lasted: Duration) {
        self.experiment_duration
            .get_or_create(&ExperimentLabels {
                experiment_type: labels::experiment_type(spec).into(),
            })
            .observe(lasted.as_secs_f64());
    }

    /// A fault that ended, as the API shows it: observed with [`Recorder::ended`] when it has
    /// an end time.
    pub fn ended_fault(&self, f: &Fault) {
        if let Some(end) = f.ended_at {
            let lasted = end.duration_since(f.created_at).unsigned_abs();
            self.ended(&f.spec, lasted);
        }
    }
}
