//! `faultctl`: Faultline's command line. Talks to an agent's native API (`--api`, env
//! `FAULTLINE_API`, default `http://127.0.0.1:8080`); free of aya and kube.
//!
//! Exit codes: 0 success, 1 the agent refused or could not be reached, 2 bad usage, 3 a
//! fault `verify` found not verified.
mod cleanup;
mod conditions;
mod inject;
mod output;
mod schedule;
mod stop;
mod verify;
mod watch;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use fault_api::client::Client;

use output::{Output, fail};

#[derive(Parser)]
#[command(
    name = "faultctl",
    version,
    about = "Inject, list and recover network faults between pods (Faultline)"
)]
struct Cli {
    /// Agent API URL.
    #[arg(
        long,
        global = true,
        env = "FAULTLINE_API",
        default_value = "http://127.0.0.1:8080"
    )]
    api: String,
    /// Bearer token for the API (or env FAULTLINE_TOKEN).
    #[arg(long, global = true, env = "FAULTLINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate(s) (PEM) an `https://` --api must chain to, e.g. the `ca.crt` the agent's
    /// certificate was issued from; without it, the system's roots.
    #[arg(long, global = true, env = "FAULTLINE_CA_FILE", value_name = "PATH")]
    ca_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inject a fault; prints its id (the whole fault with -o json).
    Inject(Box<inject::InjectArgs>),
    /// List faults (newest first).
    List {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Show one fault, with its counters per node; `-w` refreshes them like `watch`.
    Get {
        id: String,
        /// Keep refreshing a one-line table of this fault (see `watch`).
        #[arg(short = 'w', long)]
        watch: bool,
        #[command(flatten)]
        refresh: watch::Refresh,
    },
    /// A table of faults refreshed every --interval: phase, time left, matched and dropped
    /// packets per second (like `kubectl get -w` and `top`).
    Watch(watch::WatchArgs),
    /// Recover a fault now: its traffic is whole again when this returns.
    Recover { id: String },
    /// Probe an active fault from its pods and say per pair whether it does what it should
    /// (exit 3 when not verified).
    Verify { id: String },
    /// Recover every fault of a namespace, or all.
    Cleanup(cleanup::CleanupArgs),
    /// The kill switch: `--all` makes every fault stop acting at once (the datapath passes
    /// all traffic), `--lift` lets them act again, `--status` shows who pulled it.
    Stop(stop::StopArgs),
    /// Recurring experiments: create faults from a template on a cron schedule.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = cli.output;
    let client = match client(&cli) {
        Ok(c) => c,
        Err(e) => return fail(out, e),
    };
    let result = match cli.command {
        Command::Inject(args) => inject::run(&client, out, *args),
        Command::List { namespace } => client
            .list(namespace.as_deref())
            .map(|l| out.faults(&l.faults))
            .map_err(Into::into),
        Command::Get {
            id,
            watch: true,
            refresh,
        } => watch::run(&client, out, watch::Subject::One { id }, refresh),
        Command::Get { id, .. } => client
            .get_fault(&id)
            .map(|f| out.fault(&f))
            .map_err(Into::into),
        Command::Watch(args) => {
            let (subject, refresh) = watch::split(args);
            watch::run(&client, out, subject, refresh)
        }
        Command::Recover { id } => client
            .recover(&id)
            .map(|f| out.recovered(&f))
            .map_err(Into::into),
        Command::Cleanup(args) => cleanup::run(&client, out, args),
        Command::Stop(args) => stop::run(&client, out, args),
        Command::Verify { id } => match verify::run(&client, out, &id) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Schedule(cmd) => schedule::run(&client, out, cmd),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "faultctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(out, e),
    }
}

/// The API client of `--api`, `--token` and `--ca-file`.
fn client(cli: &Cli) -> Result<Client, output::CliError> {
    let client = Client::new(&cli.api).with_token(cli.token.clone());
    let Some(path) = &cli.ca_file else {
        return Ok(client);
    };
    let usage = |why: String| {
        output::CliError::Usage(fault_api::ApiError::new(
            "ca_file",
            format!("--ca-file {}: {why}", path.display()),
        ))
    };
    let pem = std::fs::read(path).map_err(|e| usage(e.to_string()))?;
    client.with_ca_pem(&pem).map_err(|e| usage(e.to_string()))
}
