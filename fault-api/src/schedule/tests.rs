//! Fire times (the seed's table, seconds, DST in a non-UTC zone) and validation errors.
use jiff::Timestamp;

use super::*;

fn ts(s: &str) -> Timestamp {
    s.parse().expect("test timestamp")
}

/// The next `n` fire times strictly after `from`.
fn fires(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
    let c = CronSchedule::parse(expr, tz).expect("valid cron");
    let mut t = ts(from);
    (0..n)
        .map(|_| {
            t = c.next_after(t).expect("a next fire time");
            t.to_string()
        })
        .collect()
}

#[test]
fn monthly_on_the_15th_as_in_the_seed_table() {
    assert_eq!(
        fires("0 9 15 * *", "UTC", "2026-11-30T22:00:00Z", 3),
        [
            "2026-12-15T09:00:00Z",
            "2027-01-15T09:00:00Z",
            "2027-02-15T09:00:00Z"
        ]
    );
    assert_eq!(
        fires("@monthly", "UTC", "2026-11-30T22:00:00Z", 1),
        ["2026-12-01T00:00:00Z"]
    );
}

#[test]
fn quarterly_and_annual_as_in_the_seed_table() {
    assert_eq!(
        fires("0 9 1 */3 *", "UTC", "2026-02-01T00:00:00Z", 4),
        [
            "2026-04-01T09:00:00Z",
            "2026-07-01T09:00:00Z",
            "2026-10-01T09:00:00Z",
            "2027-01-01T09:00:00Z"
        ]
    );
    assert_eq!(
        fires("0 9 1 JAN,APR,JUL,OCT *", "UTC", "2026-02-01T00:00:00Z", 1),
        ["2026-04-01T09:00:00Z"]
    );
    assert_eq!(
        fires("0 9 1 1 *", "UTC", "2026-02-01T00:00:00Z", 1),
        ["2027-01-01T09:00:00Z"]
    );
}

#[test]
fn six_fields_have_seconds_first() {
    assert_eq!(
        fires("*/3 * * * * *", "UTC", "2026-11-30T12:00:01.5Z", 3),
        [
            "2026-11-30T12:00:03Z",
            "2026-11-30T12:00:06Z",
            "2026-11-30T12:00:09Z"
        ]
    );
    let c = CronSchedule::parse("*/3 * * * * *", "UTC").unwrap();
    assert_eq!(
        c.latest_at_or_before(ts("2026-11-30T12:00:07Z")),
        Some(ts("2026-11-30T12:00:06Z"))
    );
    assert_eq!(
        c.latest_at_or_before(ts("2026-11-30T12:00:06Z")),
        Some(ts("2026-11-30T12:00:06Z")),
        "inclusive"
    );
}

#[test]
fn wall_clock_times_follow_dst_in_the_time_zone() {
    // Europe/Berlin: CET (+01:00) until 2026-03-29 02:00, then CEST (+02:00) until 2026-10-25
    // 03:00. A daily 09:00 stays 09:00 local, so it moves by an hour in UTC.
    assert_eq!(
        fires("0 9 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", 3),
        [
            "2026-03-28T08:00:00Z",
            "2026-03-29T07:00:00Z",
            "2026-03-30T07:00:00Z"
        ]
    );
    assert_eq!(
        fires("0 9 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T08:00:00Z", "2026-10-26T08:00:00Z"]
    );
    // 02:30 does not exist on 29 March: that day fires right after the gap (03:00 CEST).
    assert_eq!(
        fires("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 2),
        ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
    );
    // 02:30 happens twice on 25 October: it fires once.
    assert_eq!(
        fires("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
}

fn spec(json: serde_json::Value) -> Result<ScheduleSpec, FieldError> {
    let s = ScheduleSpec::from_json(json.to_string().as_bytes())?;
    s.validate().map(|()| s)
}

fn base() -> serde_json::Value {
    serde_json::json!({
        "name": "monthly-partition",
        "cron": "0 9 15 * *",
        "time_zone": "Europe/Berlin",
        "template": {
            "namespace": "dynamo",
            "pod_prefix": "vllm-decode",
            "partition": true,
            "duration": "10m"
        }
    })
}

fn with(path: &[&str], value: serde_json::Value) -> serde_json::Value {
    let mut v = base();
    let mut at = &mut v;
    for k in &path[..path.len() - 1] {
        at = &mut at[*k];
    }
    match value {
        serde_json::Value::Null => {
            at.as_object_mut().unwrap().remove(path[path.len() - 1]);
        }
        value => at[path[path.len() - 1]] = value,
    }
    v
}

#[test]
fn defaults_are_utc_allow_three_and_not_suspended() {
    let s = spec(with(&["time_zone"], serde_json::Value::Null)).unwrap();
    assert_eq!(s.time_zone, "UTC");
    assert_eq!(s.concurrency_policy, ConcurrencyPolicy::Allow);
    assert_eq!(s.history_limit, DEFAULT_HISTORY_LIMIT);
    assert!(!s.suspend);
    assert_eq!(s.starting_deadline, None);
}

#[test]
fn errors_name_the_field_and_what_is_accepted() {
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (with(&["cron"], "0 9 15 *".into()), "cron", "5 fields"),
        (
            with(&["cron"], "0 0 9 15 * * 2027".into()),
            "cron",
            "has 7 fields",
        ),
        (with(&["cron"], "61 9 15 * *".into()), "cron", "5 fields"),
        (with(&["cron"], "@fortnightly".into()), "cron", "@monthly"),
        (with(&["cron"], "0 0 30 2 *".into()), "cron", "never fires"),
        (
            with(&["time_zone"], "Mars/Olympus".into()),
            "time_zone",
            "IANA",
        ),
        (
            with(&["name"], "Monthly_Partition".into()),
            "name",
            "RFC 1123",
        ),
        (
            with(&["history_limit"], 101.into()),
            "history_limit",
            "0-100",
        ),
        (
            with(&["concurrency_policy"], "Sometimes".into()),
            "concurrency_policy",
            "Allow",
        ),
        (
            with(&["template", "duration"], serde_json::Value::Null),
            "template.duration",
            "required",
        ),
        (
            with(&["template", "namespace"], "Bad NS".into()),
            "template.namespace",
            "RFC 1123",
        ),
        (with(&["retries"], 3.into()), "retries", "unknown field"),
    ];
    for (body, field, says) in cases {
        let e = spec(body.clone()).expect_err(&body.to_string());
        assert_eq!(e.field, field, "{body}: {e}");
        assert!(e.message.contains(says), "{body}: {e}");
    }
}

#[test]
fn concurrency_policies_parse_in_any_case() {
    assert_eq!("forbid".parse(), Ok(ConcurrencyPolicy::Forbid));
    assert_eq!("Replace".parse(), Ok(ConcurrencyPolicy::Replace));
    let e = "later".parse::<ConcurrencyPolicy>().unwrap_err();
    assert!(e.contains("Allow, Forbid, Replace"), "{e}");
}
