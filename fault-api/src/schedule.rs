//! Recurring experiments: a [`ScheduleSpec`] creates a fault from its `template` at each fire
//! time of a cron expression in a time zone, like a Kubernetes CronJob creates Jobs.
//!
//! - **Cron** ([`CronSchedule`]): 5 fields (`minute hour day-of-month month day-of-week`), or 6
//!   with seconds first, or a nickname (`@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`).
//!   Lists, ranges and steps (`1,15`, `1-5`, `*/3`), month and weekday names (`JAN`, `MON`);
//!   a day-of-month and a day-of-week both restricted match either (vixie cron). Parsed and
//!   evaluated by the `croner` crate on `jiff` times.
//! - **Time zone**: an IANA name (`UTC`, the default; `Europe/Berlin`), from the tz database
//!   built into the binary. Fire times are wall-clock times in that zone: a time that a DST
//!   change skips fires at the first instant after the gap, a time it repeats fires once.
//! - The seed's table: monthly on the 15th is `0 9 15 * *`, quarterly is `0 9 1 */3 *`
//!   (1 January, April, July and October), annual is `0 9 1 1 *`.
use jiff::{Timestamp, Zoned, tz::TimeZone};
use serde::{Deserialize, Serialize};

use crate::{FaultDuration, FaultSpec, FieldError, spec::check_namespace};

/// What to do at a fire time while a fault of the schedule is still live (CronJob's terms).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ConcurrencyPolicy {
    /// Create the new fault anyway (the default).
    #[default]
    Allow,
    /// Skip this fire time; the schedule's `skipped` count goes up.
    Forbid,
    /// Recover the live faults first, then create the new one.
    Replace,
}

impl std::str::FromStr for ConcurrencyPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "allow" => Ok(Self::Allow),
            "forbid" => Ok(Self::Forbid),
            "replace" => Ok(Self::Replace),
            _ => Err(format!("must be one of Allow, Forbid, Replace, got {s:?}")),
        }
    }
}

impl std::fmt::Display for ConcurrencyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Allow => "Allow",
            Self::Forbid => "Forbid",
            Self::Replace => "Replace",
        })
    }
}

/// The ended faults a schedule remembers unless told otherwise (CronJob keeps 3 successful).
pub const DEFAULT_HISTORY_LIMIT: u32 = 3;
/// The most ended faults a schedule may remember.
pub const MAX_HISTORY_LIMIT: u32 = 100;

fn default_time_zone() -> String {
    "UTC".into()
}

fn default_history_limit() -> u32 {
    DEFAULT_HISTORY_LIMIT
}

/// A recurring experiment: the body of `POST /v1/schedules`. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// The schedule's name, unique on the agent: an RFC 1123 label (1-63 of `[a-z0-9-]`).
    pub name: String,
    /// When to create a fault: 5 cron fields (`minute hour day-of-month month day-of-week`),
    /// 6 with seconds first, or `@yearly`/`@monthly`/`@weekly`/`@daily`/`@hourly`.
    pub cron: String,
    /// IANA time zone the cron fields are read in; default `UTC`.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// The fault created at each fire time; its `duration` is required.
    pub template: FaultSpec,
    /// What a fire time does while a fault of the schedule is still live; default `Allow`.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// How many ended faults the schedule remembers (older ones are forgotten: removed from
    /// the agent's records); 0-100, default 3.
    #[serde(default = "default_history_limit")]
    pub history_limit: u32,
    /// No new faults while true (live ones run on).
    #[serde(default)]
    pub suspend: bool,
    /// A fire time missed (agent down, suspended) is made up at most once, and only if no
    /// more than this has passed since it; without it a missed fire time is always made up
    /// once, however late (CronJob's `startingDeadlineSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline: Option<FaultDuration>,
}

/// Where a schedule stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScheduleStatus {
    /// When the schedule was created (fire times before it are never made up).
    pub created_at: Option<Timestamp>,
    /// The last fire time acted on (a fault created, or skipped by the policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Timestamp>,
    /// The next fire time (none while suspended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Timestamp>,
    /// Ids of the schedule's live faults, oldest first.
    #[serde(default)]
    pub active: Vec<String>,
    /// Ids of its ended faults still remembered, oldest first (at most `history_limit`).
    #[serde(default)]
    pub history: Vec<String>,
    /// Faults created.
    #[serde(default)]
    pub created: u64,
    /// Fire times skipped: by `Forbid`, or missed beyond `starting_deadline`.
    #[serde(default)]
    pub skipped: u64,
    /// Why the last fire time did not create a fault (refused by a guard, skipped), with
    /// the fire time; cleared by the next fault created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A schedule as the agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Schedule {
    pub spec: ScheduleSpec,
    pub status: ScheduleStatus,
}

/// `GET /v1/schedules`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}

impl ScheduleSpec {
    /// Parses a JSON body; errors name the field (`body` for JSON that does not parse).
    pub fn from_json(body: &[u8]) -> Result<Self, FieldError> {
        crate::error::parse_json(body)
    }

    /// Checks every rule: name, cron, time zone, history limit, and the template (whose
    /// errors are named `template.<field>`; its `duration` is required). The cron must fire
    /// at least once after now.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_namespace("name", &self.name).map_err(|_| {
            FieldError::new(
                "name",
                format!(
                    "must be an RFC 1123 label (1-63 of [a-z0-9-], not starting or ending with -), got {:?}",
                    self.name
                ),
            )
        })?;
        let cron = CronSchedule::parse(&self.cron, &self.time_zone)?;
        if cron.next_after(Timestamp::now()).is_none() {
            return Err(FieldError::new(
                "cron",
                format!("{:?} never fires (no such date ahead)", self.cron),
            ));
        }
        if self.history_limit > MAX_HISTORY_LIMIT {
            return Err(FieldError::new(
                "history_limit",
                format!(
                    "must be in 0-{MAX_HISTORY_LIMIT}, got {}",
                    self.history_limit
                ),
            ));
        }
        if self.template.duration.is_none() {
            return Err(FieldError::new(
                "template.duration",
                "required: a scheduled fault must end by itself (e.g. 5m)",
            ));
        }
        self.template.validate().map_err(|e| FieldError {
            field: format!("template.{}", e.field),
            message: e.message,
        })
    }

    /// The parsed cron expression in its time zone.
    pub fn cron_schedule(&self) -> Result<CronSchedule, FieldError> {
        CronSchedule::parse(&self.cron, &self.time_zone)
    }
}

/// A cron expression with its time zone: fire times as instants.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: croner::Cron,
    tz: TimeZone,
}

const CRON_FORMS: &str = "5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or @yearly, @monthly, @weekly, @daily, @hourly";

impl CronSchedule {
    /// Parses `expr` (see the module docs) read in the IANA zone `time_zone`. Errors name
    /// the field (`cron` or `time_zone`) and the accepted forms.
    pub fn parse(expr: &str, time_zone: &str) -> Result<Self, FieldError> {
        let tz = TimeZone::get(time_zone).map_err(|_| {
            FieldError::new(
                "time_zone",
                format!(
                    "must be an IANA time zone name like UTC, Europe/Berlin or America/New_York, got {time_zone:?}"
                ),
            )
        })?;
        let expr = expr.trim();
        let fields = expr.split_whitespace().count();
        let nickname = expr.starts_with('@');
        if !nickname && !(5..=6).contains(&fields) {
            return Err(FieldError::new(
                "cron",
                format!("must be {CRON_FORMS}; {expr:?} has {fields} fields"),
            ));
        }
        if nickname && fields != 1 {
            return Err(FieldError::new(
                "cron",
                format!("must be {CRON_FORMS}; got {expr:?}"),
            ));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| FieldError::new("cron", format!("must be {CRON_FORMS}; {expr:?}: {e}")))?;
        Ok(Self { cron, tz })
    }

    /// The first fire time strictly after `t`, or `None` if there is none ahead.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let z = t.to_zoned(self.tz.clone());
        self.cron
            .find_next_occurrence(&z, false)
            .ok()
            .map(|z: Zoned| z.timestamp())
    }

    /// The last fire time at or before `t`, or `None` if there is none.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let z = t.to_zoned(self.tz.clone());
        self.cron
            .find_previous_occurrence(&z, true)
            .ok()
            .map(|z: Zoned| z.timestamp())
    }

    /// The time zone the fields are read in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }
}

/// The schedule calls of the native API.
impl crate::client::Client {
    /// `POST /v1/schedules`: the schedule, with its first `next_schedule_time`.
    pub fn create_schedule(
        &self,
        spec: &ScheduleSpec,
    ) -> Result<Schedule, crate::client::ClientError> {
        let body = serde_json::to_value(spec)
            .map_err(|e| crate::client::ClientError::Transport(e.to_string()))?;
        self.send("POST", "/v1/schedules", Some(&body))
    }

    /// `GET /v1/schedules`.
    pub fn list_schedules(&self) -> Result<ScheduleList, crate::client::ClientError> {
        self.get("/v1/schedules")
    }

    /// `GET /v1/schedules/{name}`.
    pub fn get_schedule(&self, name: &str) -> Result<Schedule, crate::client::ClientError> {
        self.get(&format!("/v1/schedules/{name}"))
    }

    /// `DELETE /v1/schedules/{name}`: no new faults; its live faults are recovered before
    /// this returns. Returns the schedule as it was last.
    pub fn delete_schedule(&self, name: &str) -> Result<Schedule, crate::client::ClientError> {
        self.send("DELETE", &format!("/v1/schedules/{name}"), None)
    }

    /// `POST /v1/schedules/{name}/suspend` (`suspend`) or `/resume`.
    pub fn suspend_schedule(
        &self,
        name: &str,
        suspend: bool,
    ) -> Result<Schedule, crate::client::ClientError> {
        let verb = if suspend { "suspend" } else { "resume" };
        self.send("POST", &format!("/v1/schedules/{name}/{verb}"), None)
    }
}

#[cfg(test)]
mod tests;
