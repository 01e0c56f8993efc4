//! `faultctl stop (--all | --lift | --status)`: the kill switch. `--all` makes the datapath
//! pass every packet at once, whatever faults are held, until `--lift`; faults keep their
//! deadlines meanwhile (those that expire stay ended).
use clap::Args;
use fault_api::{
    client::Client,
    kill_switch::{KillSwitch, KillSwitchRequest},
};

use crate::output::{CliError, Output};

/// Flags of `faultctl stop`: exactly one of `--all`, `--lift`, `--status`.
#[derive(Args)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["all", "lift", "status"])))]
pub struct StopArgs {
    /// Engage the kill switch: every fault stops acting at once.
    #[arg(long)]
    all: bool,
    /// Lift the kill switch: faults that did not expire act again.
    #[arg(long)]
    lift: bool,
    /// Show the kill switch's state and who last engaged or lifted it.
    #[arg(long)]
    status: bool,
    /// Who acts, recorded with the time and your address (default: $USER@host).
    #[arg(long)]
    by: Option<String>,
    /// Why, recorded.
    #[arg(long)]
    reason: Option<String>,
}

fn who() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

/// Engages, lifts or reads the kill switch (`/v1/kill-switch`) and prints its state; errors
/// are the API's (422 naming `by` or `reason`, 501 on the cluster API) or the transport's.
pub fn run(client: &Client, out: Output, args: StopArgs) -> Result<(), CliError> {
    let req = KillSwitchRequest {
        by: args.by.unwrap_or_else(who),
        reason: args.reason,
    };
    let ks = if args.all {
        client.engage_kill_switch(&req)?
    } else if args.lift {
        client.lift_kill_switch(&req)?
    } else {
        client.kill_switch()?
    };
    print(out, &ks);
    Ok(())
}

fn print(out: Output, ks: &KillSwitch) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(ks).unwrap_or_default()),
        Output::Table => {
            let state = if ks.engaged {
                "ENGAGED: every packet passes, no fault acts"
            } else {
                "lifted: faults act"
            };
            println!("kill switch {state}");
            for (what, a) in [("engaged", &ks.engaged_by), ("lifted", &ks.lifted_by)] {
                if let Some(a) = a {
                    let from = a
                        .from
                        .as_deref()
                        .map(|f| format!(" from {f}"))
                        .unwrap_or_default();
                    let why = a
                        .reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default();
                    println!("last {what} {} by {}{from}{why}", a.at, a.by);
                }
            }
        }
    }
}
