//! The `NetworkFaultSchedule` custom resource (`networkfaultschedules.faultline.dev/v1alpha1`,
//! namespaced): a recurring experiment in a cluster, like a CronJob for `NetworkFault`s.
//!
//! Its spec is [`fault_api::schedule::ScheduleSpec`] in Kubernetes' camelCase (CronJob's field
//! names: `schedule` is the cron expression) with the `NetworkFault` spec as `template`; the
//! schedule's name and namespace are the object's. [`NetworkFaultSchedule::schedule_spec`]
//! converts and validates it with the same code as `POST /v1/schedules` and the faults' own
//! entry points; errors name the camelCase field (`spec.schedule`, `spec.template.lossPercent`).
//! The controller is [`super::schedules`].
use fault_api::{
    FaultDuration, FaultSpec, FieldError,
    schedule::{ConcurrencyPolicy, DEFAULT_HISTORY_LIMIT, Schedule, ScheduleSpec, ScheduleStatus},
};
use jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::crd::{NetworkFault, NetworkFaultSpec};

/// Label on each `NetworkFault` a schedule created: the schedule's name.
pub const SCHEDULE_LABEL: &str = "faultline.dev/schedule";

fn default_time_zone() -> String {
    "UTC".into()
}

fn default_history_limit() -> u32 {
    DEFAULT_HISTORY_LIMIT
}

/// A recurring network fault: a `NetworkFault` from `template` at each fire time of
/// `schedule` in `timeZone`. See the README's "Schedules in a cluster".
// The print columns repeat `type_`: not a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "faultline.dev",
    version = "v1alpha1",
    kind = "NetworkFaultSchedule",
    namespaced,
    status = "NetworkFaultScheduleStatus",
    shortname = "nfs",
    category = "faultline",
    doc = "A recurring network fault: Faultline's API creates a NetworkFault from the template at each fire time of a cron schedule, like a CronJob.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.activeCount"),
    printcolumn(name = "Last", type_ = "date", json_path = ".status.lastScheduleTime"),
    printcolumn(
        name = "Next",
        type_ = "string",
        json_path = ".status.nextScheduleTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkFaultScheduleSpec {
    /// When to create a fault: 5 cron fields (`minute hour day-of-month month day-of-week`),
    /// 6 with seconds first, or `@yearly`/`@monthly`/`@weekly`/`@daily`/`@hourly`.
    #[schemars(length(min = 1, max = 256))]
    pub schedule: String,
    /// IANA time zone the cron fields are read in; default `UTC`.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// What a fire time does while a fault of the schedule is live: `Allow` (default),
    /// `Forbid` (skip it), `Replace` (recover the live one, then create).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// No new faults while true (live ones run on).
    #[serde(default)]
    pub suspend: bool,
    /// How many ended faults are kept (older ones are deleted, oldest first); 0-100,
    /// default 3. The API's `--retention` may delete them earlier.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub history_limit: u32,
    /// A missed fire time (API down, suspended) is made up at most once, and only within
    /// this long after it (e.g. `5m`); without it, however late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<FaultDuration>")]
    pub starting_deadline: Option<String>,
    /// The `NetworkFault` spec created at each fire time (in this namespace); its `duration`
    /// is required.
    pub template: NetworkFaultSpec,
}

/// Status, written by the API's schedule controller.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkFaultScheduleStatus {
    /// The last fire time acted on (a fault created, skipped or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Timestamp>,
    /// The next fire time (none while suspended or invalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Timestamp>,
    /// Names of the schedule's live `NetworkFault`s, oldest first.
    #[serde(default)]
    pub active: Vec<String>,
    /// `active`'s length (for `kubectl get`).
    #[serde(default)]
    pub active_count: u32,
    /// Names of its ended `NetworkFault`s still kept, oldest first (at most `historyLimit`).
    #[serde(default)]
    pub history: Vec<String>,
    /// The name of the last `NetworkFault` created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fault: Option<String>,
    /// Faults created.
    #[serde(default)]
    pub created: u64,
    /// Fire times skipped: by `Forbid`, or missed beyond `startingDeadline`.
    #[serde(default)]
    pub skipped: u64,
    /// Why the spec is invalid (field and accepted range), or why the last fire time created
    /// no fault (refused by a guard, skipped); cleared by the next fault created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// `time_zone` -> `timeZone`, `template.loss_percent` -> `template.lossPercent`.
fn camel_path(field: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in field.chars() {
        match c {
            '_' => up = true,
            c if up => {
                out.extend(c.to_uppercase());
                up = false;
            }
            c => out.push(c),
        }
    }
    out
}

impl NetworkFaultSchedule {
    /// The namespace of the schedule (and of its faults).
    pub fn namespace(&self) -> String {
        self.metadata.namespace.clone().unwrap_or_default()
    }

    /// The template as a fault in the schedule's namespace, validated; errors name
    /// `spec.template.<field>` in camelCase.
    pub fn fault_spec(&self) -> Result<FaultSpec, FieldError> {
        let mut nf = NetworkFault::new("template", self.spec.template.clone());
        nf.metadata.namespace = Some(self.namespace());
        nf.fault_spec().map_err(|e| FieldError {
            field: e.field.replacen("spec.", "spec.template.", 1),
            message: e.message,
        })
    }

    /// The schedule model of this object (name: the object's), validated with
    /// [`ScheduleSpec::validate`]; errors name the `spec.` field in camelCase.
    pub fn schedule_spec(&self) -> Result<ScheduleSpec, FieldError> {
        let template = self.fault_spec()?;
        let starting_deadline = self
            .spec
            .starting_deadline
            .as_deref()
            .map(|d| {
                d.parse::<FaultDuration>()
                    .map_err(|e| FieldError::new("spec.startingDeadline", e))
            })
            .transpose()?;
        let spec = ScheduleSpec {
            name: self.metadata.name.clone().unwrap_or_default(),
            cron: self.spec.schedule.clone(),
            time_zone: self.spec.time_zone.clone(),
            template,
            concurrency_policy: self.spec.concurrency_policy,
            history_limit: self.spec.history_limit,
            suspend: self.spec.suspend,
            starting_deadline,
        };
        spec.validate().map_err(|e| {
            let field = match e.field.as_str() {
                "cron" => "schedule".to_owned(),
                f => camel_path(f),
            };
            FieldError::new(format!("spec.{field}"), e.message)
        })?;
        Ok(spec)
    }

    /// The object for a native schedule: named as it, in its template's namespace.
    pub fn from_schedule_spec(s: &ScheduleSpec) -> Self {
        let mut o = Self::new(
            &s.name,
            NetworkFaultScheduleSpec {
                schedule: s.cron.clone(),
                time_zone: s.time_zone.clone(),
                concurrency_policy: s.concurrency_policy,
                suspend: s.suspend,
                history_limit: s.history_limit,
                starting_deadline: s.starting_deadline.map(|d| d.to_string()),
                template: NetworkFaultSpec::from_fault_spec(&s.template),
            },
        );
        o.metadata.namespace = Some(s.template.namespace.clone());
        o
    }

    /// The native API's view (`/v1/schedules`). An object whose spec does not validate is
    /// shown with its template's namespace only and the reason in `last_error`.
    pub fn view(&self) -> Schedule {
        let st = self.status.clone().unwrap_or_default();
        let (spec, invalid) = match self.schedule_spec() {
            Ok(s) => (s, None),
            Err(e) => (self.raw_spec(), Some(e.to_string())),
        };
        Schedule {
            spec,
            status: ScheduleStatus {
                created_at: self.metadata.creation_timestamp.clone().map(|t| t.0),
                last_schedule_time: st.last_schedule_time,
                next_schedule_time: st.next_schedule_time,
                active: st.active,
                history: st.history,
                created: st.created,
                skipped: st.skipped,
                last_error: invalid.or(st.message),
            },
        }
    }

    /// The spec's fields as they are, unvalidated (for showing an invalid object).
    fn raw_spec(&self) -> ScheduleSpec {
        ScheduleSpec {
            name: self.metadata.name.clone().unwrap_or_default(),
            cron: self.spec.schedule.clone(),
            time_zone: self.spec.time_zone.clone(),
            template: FaultSpec::new(self.namespace()),
            concurrency_policy: self.spec.concurrency_policy,
            history_limit: self.spec.history_limit,
            suspend: self.spec.suspend,
            starting_deadline: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use fault_api::PartitionMode;

    use super::*;

    fn object() -> NetworkFaultSchedule {
        let mut t = FaultSpec::new("dynamo");
        t.pod_prefix = Some("vllm".into());
        t.partition = Some(PartitionMode::Packets);
        t.duration = Some(FaultDuration::from_millis(2000).unwrap());
        let native = ScheduleSpec {
            name: "nightly".into(),
            cron: "0 9 15 * *".into(),
            time_zone: "Europe/Berlin".into(),
            template: t,
            concurrency_policy: ConcurrencyPolicy::Forbid,
            history_limit: 2,
            suspend: false,
            starting_deadline: Some(FaultDuration::from_millis(60_000).unwrap()),
        };
        NetworkFaultSchedule::from_schedule_spec(&native)
    }

    #[test]
    fn an_object_converts_to_the_native_schedule_and_back() {
        let o = object();
        assert_eq!(o.namespace(), "dynamo");
        let s = o.schedule_spec().unwrap();
        assert_eq!(s.name, "nightly");
        assert_eq!(s.template.namespace, "dynamo");
        let back = NetworkFaultSchedule::from_schedule_spec(&s);
        assert_eq!((back.spec, back.metadata), (o.spec, o.metadata));
    }

    #[test]
    fn spec_errors_name_camel_case_fields() {
        let mut o = object();
        o.spec.schedule = "61 * * * *".into();
        assert_eq!(o.schedule_spec().unwrap_err().field, "spec.schedule");
        let mut o = object();
        o.spec.time_zone = "Mars/Olympus".into();
        assert_eq!(o.schedule_spec().unwrap_err().field, "spec.timeZone");
        let mut o = object();
        o.spec.history_limit = 101;
        let e = o.schedule_spec().unwrap_err();
        assert_eq!(e.field, "spec.historyLimit");
        assert!(e.message.contains("0-100"), "{e}");
        let mut o = object();
        o.spec.template.duration = None;
        assert_eq!(
            o.schedule_spec().unwrap_err().field,
            "spec.template.duration"
        );
        let mut o = object();
        o.spec.template.loss_percent = Some(120.0);
        assert_eq!(
            o.schedule_spec().unwrap_err().field,
            "spec.template.lossPercent"
        );
        let mut o = object();
        o.spec.starting_deadline = Some("soon".into());
        assert_eq!(
            o.schedule_spec().unwrap_err().field,
            "spec.startingDeadline"
        );
    }

    #[test]
    fn the_seeds_monthly_and_quarterly_rows_are_schedules() {
        for cron in ["0 9 15 * *", "0 9 1 */3 *"] {
            let mut o = object();
            o.spec.schedule = cron.into();
            assert!(o.schedule_spec().is_ok(), "{cron}");
        }
    }
}
