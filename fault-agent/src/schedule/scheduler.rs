//! [`Scheduler`]: the schedules of one agent, their API operations and the firing task.
use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Result;
use fault_api::{
    Fault,
    schedule::{ConcurrencyPolicy, CronSchedule, Schedule, ScheduleSpec, ScheduleStatus},
};
use jiff::Timestamp;
use tokio::sync::{Mutex, Notify};

use super::files;
use crate::{api::backend::Backend, error::AgentError};

/// A schedule with its parsed cron.
struct Entry {
    schedule: Schedule,
    cron: CronSchedule,
}

/// The live and ended faults of a schedule, oldest first, as the core has them.
struct Owned {
    live: Vec<Fault>,
    ended: Vec<Fault>,
}

/// See the module docs of [`crate::schedule`].
pub struct Scheduler {
    dir: PathBuf,
    backend: Backend,
    /// Woken when a fault was created or recovered, so the expiry timer re-arms.
    faults_changed: Arc<Notify>,
    /// Woken when a schedule was created, changed or deleted.
    wake: Notify,
    entries: Mutex<BTreeMap<String, Entry>>,
}

/// Refusal of the schedule operations: 404 for a name that is not there.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("no schedule named {0}")]
    NotFound(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl Scheduler {
    /// Loads the schedules of `state_dir` (see [`files`]); `backend` must be the local core.
    pub fn open(
        state_dir: &std::path::Path,
        backend: Backend,
        faults_changed: Arc<Notify>,
    ) -> Result<Arc<Self>> {
        let dir = files::dir(state_dir)?;
        let mut entries = BTreeMap::new();
        for schedule in files::load(&dir)? {
            match schedule.spec.cron_schedule() {
                Ok(cron) => {
                    entries.insert(schedule.spec.name.clone(), Entry { schedule, cron });
                }
                Err(e) => {
                    tracing::error!(schedule = %schedule.spec.name, error = %e, "schedule skipped")
                }
            }
        }
        tracing::info!(count = entries.len(), "schedules loaded");
        Ok(Arc::new(Self {
            dir,
            backend,
            faults_changed,
            wake: Notify::new(),
            entries: Mutex::new(entries),
        }))
    }

    /// Adds a schedule (422 naming the field if invalid, 409 if the name is taken). Its first
    /// fire time is the first after now.
    pub async fn create(&self, spec: ScheduleSpec) -> Result<Schedule, ScheduleError> {
        spec.validate().map_err(AgentError::Invalid)?;
        let cron = spec.cron_schedule().map_err(AgentError::Invalid)?;
        let mut entries = self.entries.lock().await;
        if entries.contains_key(&spec.name) {
            return Err(AgentError::Conflict(format!(
                "a schedule named {} exists: delete it first or choose another name",
                spec.name
            ))
            .into());
        }
        let now = Timestamp::now();
        let status = ScheduleStatus {
            created_at: Some(now),
            next_schedule_time: (!spec.suspend).then(|| cron.next_after(now)).flatten(),
            ..Default::default()
        };
        let schedule = Schedule { spec, status };
        files::save(&self.dir, &schedule).map_err(AgentError::Internal)?;
        tracing::info!(schedule = %schedule.spec.name, cron = %schedule.spec.cron, time_zone = %schedule.spec.time_zone, "schedule created");
        entries.insert(
            schedule.spec.name.clone(),
            Entry {
                schedule: schedule.clone(),
                cron,
            },
        );
        self.wake.notify_one();
        Ok(schedule)
    }

    /// Every schedule, by name, with its faults as they are now.
    pub async fn list(&self) -> Result<Vec<Schedule>, ScheduleError> {
        let mut entries = self.entries.lock().await;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries.values_mut() {
            self.refresh(e).await?;
            out.push(e.schedule.clone());
        }
        Ok(out)
    }

    /// One schedule, with its faults as they are now.
    pub async fn get(&self, name: &str) -> Result<Schedule, ScheduleError> {
        let mut entries = self.entries.lock().await;
        let e = entries
            .get_mut(name)
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        self.refresh(e).await?;
        Ok(e.schedule.clone())
    }

    /// Removes a schedule: no new faults, and its live faults are recovered before this
    /// returns. Returns the schedule as it was last (its `active` the faults recovered).
    pub async fn delete(&self, name: &str) -> Result<Schedule, ScheduleError> {
        let mut entries = self.entries.lock().await;
        let mut e = entries
            .remove(name)
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        if let Err(err) = files::remove(&self.dir, name) {
            entries.insert(name.to_owned(), e);
            return Err(AgentError::Internal(err).into());
        }
        self.refresh(&mut e).await?;
        for id in &e.schedule.status.active {
            self.backend.recover(id.clone()).await?;
        }
        self.faults_changed.notify_one();
        tracing::info!(schedule = %name, recovered = e.schedule.status.active.len(), "schedule deleted");
        self.wake.notify_one();
        Ok(e.schedule)
    }

    /// Suspends (no new faults; live ones run on) or resumes a schedule. A resumed schedule
    /// makes up the latest fire time missed meanwhile as any missed one (see the module docs).
    pub async fn set_suspend(&self, name: &str, suspend: bool) -> Result<Schedule, ScheduleError> {
        let mut entries = self.entries.lock().await;
        let e = entries
            .get_mut(name)
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        e.schedule.spec.suspend = suspend;
        e.schedule.status.next_schedule_time = match suspend {
            true => None,
            false => e.cron.next_after(Timestamp::now()),
        };
        files::save(&self.dir, &e.schedule).map_err(AgentError::Internal)?;
        self.refresh(e).await?;
        self.wake.notify_one();
        Ok(e.schedule.clone())
    }

    /// The firing task: sleeps until the nearest fire time (or a change), then fires what is
    /// due. Runs until aborted.
    pub async fn run(self: Arc<Self>) {
        loop {
            let next = self.tick(Timestamp::now()).await;
            // At most a minute: a wall-clock step (NTP) is noticed within that.
            let wait = next
                .map(|t| t.duration_since(Timestamp::now()).unsigned_abs())
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Fires every schedule due at `now`; returns the nearest next fire time.
    async fn tick(&self, now: Timestamp) -> Option<Timestamp> {
        let mut entries = self.entries.lock().await;
        let mut nearest: Option<Timestamp> = None;
        for e in entries.values_mut() {
            if e.schedule.spec.suspend {
                continue;
            }
            let before = e.schedule.status.clone();
            if let Some(t) = due(e, now) {
                self.fire(e, t, now).await;
            }
            e.schedule.status.next_schedule_time = e.cron.next_after(now);
            if e.schedule.status != before
                && let Err(err) = files::save(&self.dir, &e.schedule)
            {
                tracing::error!(schedule = %e.schedule.spec.name, error = %format!("{err:#}"), "saving the schedule failed; the next change retries");
            }
            nearest = match (nearest, e.schedule.status.next_schedule_time) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        nearest
    }

    /// Acts on fire time `t` (the scheduler runs at `now`): skips it when missed beyond the
    /// starting deadline, applies the concurrency policy, creates the fault.
    async fn fire(&self, e: &mut Entry, t: Timestamp, now: Timestamp) {
        let name = e.schedule.spec.name.clone();
        e.schedule.status.last_schedule_time = Some(t);
        let late = now.duration_since(t).unsigned_abs();
        if let Some(d) = e.schedule.spec.starting_deadline
            && late > d.get()
        {
            skip(
                e,
                format!(
                    "missed fire time {t}: {} late, beyond starting_deadline {d}",
                    humantime::format_duration(round_ms(late))
                ),
            );
            return;
        }
        if let Err(err) = self.refresh(e).await {
            e.schedule.status.last_error = Some(format!("fire time {t}: {err}"));
            return;
        }
        let active = e.schedule.status.active.clone();
        match e.schedule.spec.concurrency_policy {
            ConcurrencyPolicy::Forbid if !active.is_empty() => {
                skip(
                    e,
                    format!(
                        "fire time {t} skipped (Forbid): fault {} still live",
                        active.join(", ")
                    ),
                );
                return;
            }
            ConcurrencyPolicy::Replace => {
                for id in active {
                    if let Err(err) = self.backend.recover(id.clone()).await {
                        tracing::warn!(schedule = %name, fault = %id, error = %err, "Replace: recover failed");
                    }
                }
            }
            _ => {}
        }
        let created = self
            .backend
            .create_scheduled(e.schedule.spec.template.clone(), name.clone())
            .await;
        self.faults_changed.notify_one();
        match created {
            Ok(f) => {
                tracing::info!(schedule = %name, fault = %f.id, fire_time = %t, "scheduled fault created");
                e.schedule.status.created += 1;
                e.schedule.status.last_error = None;
            }
            Err(err) => {
                tracing::warn!(schedule = %name, fire_time = %t, error = %err, "scheduled fault refused");
                e.schedule.status.last_error = Some(format!("fire time {t}: {err}"));
            }
        }
        if let Err(err) = self.refresh(e).await {
            tracing::warn!(schedule = %name, error = %err, "refreshing the schedule's faults failed");
        }
    }

    /// Sets `active` and `history` from the faults tagged with the schedule, forgetting ended
    /// ones beyond `history_limit` (oldest first).
    async fn refresh(&self, e: &mut Entry) -> Result<(), AgentError> {
        let name = e.schedule.spec.name.clone();
        let limit = e.schedule.spec.history_limit as usize;
        let owned = self
            .backend
            .with_core(move |c| {
                let mut mine: Vec<Fault> = c
                    .list(None)
                    .into_iter()
                    .filter(|f| f.schedule.as_deref() == Some(name.as_str()))
                    .collect();
                mine.reverse(); // oldest first
                let (live, mut ended): (Vec<Fault>, Vec<Fault>) =
                    mine.into_iter().partition(|f| f.state.is_live());
                ended.sort_by_key(|f| f.ended_at.unwrap_or(f.created_at));
                let excess = ended.len().saturating_sub(limit);
                let old: Vec<String> = ended.drain(..excess).map(|f| f.id).collect();
                if !old.is_empty() {
                    c.forget_ended(&old)?;
                }
                Ok(Owned { live, ended })
            })
            .await?;
        e.schedule.status.active = owned.live.into_iter().map(|f| f.id).collect();
        e.schedule.status.history = owned.ended.into_iter().map(|f| f.id).collect();
        Ok(())
    }
}

/// The fire time to act on at `now`: the latest at or before it, if after the last one acted
/// on (or the schedule's creation). Only the latest: missed ones before it are not made up.
fn due(e: &Entry, now: Timestamp) -> Option<Timestamp> {
    let st = &e.schedule.status;
    let since = st.last_schedule_time.or(st.created_at)?;
    e.cron.latest_at_or_before(now).filter(|t| *t > since)
}

/// Records a skipped fire time.
fn skip(e: &mut Entry, why: String) {
    tracing::info!(schedule = %e.schedule.spec.name, "{why}");
    e.schedule.status.skipped += 1;
    e.schedule.status.last_error = Some(why);
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use fault_api::{FaultDuration, FaultSpec, PartitionMode};

    use super::*;

    fn entry(cron: &str, created: &str, last: Option<&str>) -> Entry {
        let mut template = FaultSpec::new("dynamo");
        template.pod_prefix = Some("p".into());
        template.partition = Some(PartitionMode::Packets);
        template.duration = Some(FaultDuration::from_millis(1000).unwrap());
        let spec = ScheduleSpec {
            name: "s".into(),
            cron: cron.into(),
            time_zone: "UTC".into(),
            template,
            concurrency_policy: ConcurrencyPolicy::Allow,
            history_limit: 3,
            suspend: false,
            starting_deadline: None,
        };
        let status = ScheduleStatus {
            created_at: Some(created.parse().unwrap()),
            last_schedule_time: last.map(|t| t.parse().unwrap()),
            ..Default::default()
        };
        Entry {
            cron: spec.cron_schedule().unwrap(),
            schedule: Schedule { spec, status },
        }
    }

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    #[test]
    fn a_fire_time_is_due_once_and_only_the_latest_missed_one() {
        let e = entry("0 * * * *", "2026-11-30T10:20:00Z", None);
        assert_eq!(
            due(&e, at("2026-11-30T10:59:59Z")),
            None,
            "none since creation"
        );
        assert_eq!(
            due(&e, at("2026-11-30T11:00:00Z")),
            Some(at("2026-11-30T11:00:00Z")),
            "due at the fire time itself"
        );
        let e = entry(
            "0 * * * *",
            "2026-11-30T10:20:00Z",
            Some("2026-11-30T11:00:00Z"),
        );
        assert_eq!(
            due(&e, at("2026-11-30T11:30:00Z")),
            None,
            "already acted on"
        );
        assert_eq!(
            due(&e, at("2026-11-30T14:10:00Z")),
            Some(at("2026-11-30T14:00:00Z")),
            "down across 12:00, 13:00 and 14:00: only 14:00 is made up"
        );
    }

    #[test]
    fn fire_times_before_the_schedule_existed_never_fire() {
        let e = entry("0 9 15 * *", "2026-11-16T00:00:00Z", None);
        assert_eq!(due(&e, at("2026-11-30T00:00:00Z")), None);
        assert_eq!(
            due(&e, at("2026-12-15T09:00:01Z")),
            Some(at("2026-12-15T09:00:00Z"))
        );
    }
}
