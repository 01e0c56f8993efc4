//! `faultctl schedule create|list|get|delete|suspend|resume`: recurring experiments
//! (`/v1/schedules`). `create` takes `inject`'s flags for the fault template plus the
//! schedule's own; `create-file` a whole schedule from a YAML or JSON file.
use std::path::PathBuf;

use clap::{Args, Subcommand};
use fault_api::{
    ApiError, FaultDuration,
    client::Client,
    schedule::{ConcurrencyPolicy, DEFAULT_HISTORY_LIMIT, Schedule, ScheduleSpec},
};

use crate::{
    inject::InjectArgs,
    output::{CliError, Output, print_json, table},
};

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: NAME, --cron and the fault's flags (as for `inject`; --duration is
    /// required).
    Create(Box<CreateArgs>),
    /// Create a schedule from a file holding all of it (the body of `POST /v1/schedules`) in
    /// YAML or JSON; `-` reads standard input.
    CreateFile { file: PathBuf },
    /// List schedules with their last and next fire times and live faults.
    List,
    /// Show one schedule with its live and remembered faults.
    Get { name: String },
    /// Delete a schedule: no new faults, and its live faults are recovered.
    Delete { name: String },
    /// Stop creating faults (live ones run on).
    Suspend { name: String },
    /// Create faults again (the latest fire time missed meanwhile is made up once, within
    /// --starting-deadline if set).
    Resume { name: String },
}

#[derive(Args)]
pub struct CreateArgs {
    /// The schedule's name (1-63 of [a-z0-9-]).
    name: String,
    /// 5 cron fields (minute hour day-of-month month day-of-week), 6 with seconds first,
    /// or @monthly etc.: "0 9 15 * *" is monthly on the 15th at 09:00.
    #[arg(long)]
    cron: String,
    /// IANA time zone the cron is read in.
    #[arg(long, default_value = "UTC")]
    time_zone: String,
    /// At a fire time with a live fault: Allow (create anyway), Forbid (skip), Replace
    /// (recover it, then create).
    #[arg(long, default_value = "Allow")]
    concurrency_policy: ConcurrencyPolicy,
    /// How many ended faults the schedule remembers (0-100).
    #[arg(long, default_value_t = DEFAULT_HISTORY_LIMIT)]
    history_limit: u32,
    /// Make up a missed fire time only if no more than this late (30s, 5m).
    #[arg(long, value_name = "DUR")]
    starting_deadline: Option<FaultDuration>,
    /// Create it suspended.
    #[arg(long)]
    suspend: bool,
    #[command(flatten)]
    template: InjectArgs,
}

pub fn run(client: &Client, out: Output, cmd: ScheduleCommand) -> Result<(), CliError> {
    match cmd {
        ScheduleCommand::Create(args) => {
            let spec = spec_of(*args)?;
            print_one(out, &client.create_schedule(&spec)?);
        }
        ScheduleCommand::CreateFile { file } => {
            let spec = from_file(&file)?;
            print_one(out, &client.create_schedule(&spec)?);
        }
        ScheduleCommand::List => print_list(out, &client.list_schedules()?.schedules),
        ScheduleCommand::Get { name } => print_one(out, &client.get_schedule(&name)?),
        ScheduleCommand::Delete { name } => print_one(out, &client.delete_schedule(&name)?),
        ScheduleCommand::Suspend { name } => print_one(out, &client.suspend_schedule(&name, true)?),
        ScheduleCommand::Resume { name } => print_one(out, &client.suspend_schedule(&name, false)?),
    }
    Ok(())
}

fn usage(field: &str, message: String) -> CliError {
    CliError::Usage(ApiError::new("invalid_field", message).with_field(field))
}

/// The schedule the flags or the file describe, validated as the agent would (errors name
/// the flag, or the file's field).
fn spec_of(args: CreateArgs) -> Result<ScheduleSpec, CliError> {
    if args.template.verify {
        return Err(usage(
            "verify",
            "--verify does not apply to a schedule: run `faultctl verify ID` on one of its faults"
                .into(),
        ));
    }
    let spec = ScheduleSpec {
        name: args.name,
        cron: args.cron,
        time_zone: args.time_zone,
        template: args.template.spec(),
        concurrency_policy: args.concurrency_policy,
        history_limit: args.history_limit,
        suspend: args.suspend,
        starting_deadline: args.starting_deadline,
    };
    spec.validate().map_err(|e| {
        let flag = match e.field.strip_prefix("template.") {
            Some(f) => crate::inject::flag_of(f),
            None if e.field == "name" => "NAME".into(),
            None => format!("--{}", e.field.replace('_', "-")),
        };
        usage(&e.field, format!("invalid {flag}: {}", e.message))
    })?;
    Ok(spec)
}

fn from_file(file: &std::path::Path) -> Result<ScheduleSpec, CliError> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| usage("file", format!("cannot read {}: {e}", file.display())))?;
    let value: serde_json::Value = serde_yaml::from_str(&text).map_err(|e| {
        usage(
            "file",
            format!("{} is not YAML or JSON: {e}", file.display()),
        )
    })?;
    let bytes = serde_json::to_vec(&value).map_err(|e| usage("file", e.to_string()))?;
    let spec = ScheduleSpec::from_json(&bytes)
        .and_then(|s| s.validate().map(|()| s))
        .map_err(|e| {
            usage(
                &e.field,
                format!("{}: invalid {}: {}", file.display(), e.field, e.message),
            )
        })?;
    Ok(spec)
}

fn time(t: Option<jiff::Timestamp>) -> String {
    t.map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `t` in UTC, and as the wall-clock time of `tz` when that is not UTC.
fn local(t: Option<jiff::Timestamp>, tz: &str) -> String {
    let zoned = t
        .zip(jiff::tz::TimeZone::get(tz).ok())
        .filter(|_| tz != "UTC");
    match zoned {
        Some((t, zone)) => format!(
            "{} ({} {tz})",
            time(Some(t)),
            t.to_zoned(zone).strftime("%Y-%m-%d %H:%M:%S")
        ),
        None => time(t),
    }
}

fn print_list(out: Output, list: &[Schedule]) {
    if out == Output::Json {
        return print_json(&serde_json::json!({ "schedules": list }));
    }
    let mut rows = vec![
        [
            "NAME",
            "CRON",
            "TIME ZONE",
            "POLICY",
            "SUSPENDED",
            "LAST",
            "NEXT",
            "ACTIVE",
            "CREATED",
            "SKIPPED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in list {
        rows.push(vec![
            s.spec.name.clone(),
            s.spec.cron.clone(),
            s.spec.time_zone.clone(),
            s.spec.concurrency_policy.to_string(),
            s.spec.suspend.to_string(),
            time(s.status.last_schedule_time),
            time(s.status.next_schedule_time),
            s.status.active.len().to_string(),
            s.status.created.to_string(),
            s.status.skipped.to_string(),
        ]);
    }
    table(rows);
}

fn print_one(out: Output, s: &Schedule) {
    if out == Output::Json {
        return print_json(s);
    }
    let (sp, st) = (&s.spec, &s.status);
    println!("name:       {}", sp.name);
    println!("cron:       {} ({})", sp.cron, sp.time_zone);
    println!(
        "policy:     {}, history limit {}",
        sp.concurrency_policy, sp.history_limit
    );
    if let Some(d) = sp.starting_deadline {
        println!("deadline:   {d}");
    }
    println!("suspended:  {}", sp.suspend);
    println!(
        "last fire:  {}",
        local(st.last_schedule_time, &sp.time_zone)
    );
    println!(
        "next fire:  {}",
        local(st.next_schedule_time, &sp.time_zone)
    );
    println!(
        "created:    {} fault(s), {} fire time(s) skipped",
        st.created, st.skipped
    );
    println!("active:     {}", st.active.join(" "));
    println!("history:    {}", st.history.join(" "));
    if let Some(e) = &st.last_error {
        println!("last error: {e}");
    }
}
