//! `faultctl cleanup (--namespace NS | --all)`.
use clap::Args;
use fault_api::{client::Client, fault::CleanupRequest};

use crate::output::{CliError, Output};

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct CleanupArgs {
    /// Recover every fault of this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Recover every fault.
    #[arg(long)]
    all: bool,
}

pub fn run(client: &Client, out: Output, args: CleanupArgs) -> Result<(), CliError> {
    let res = client.cleanup(&CleanupRequest {
        namespace: args.namespace,
        all: args.all,
    })?;
    match out {
        Output::Json => println!("{}", serde_json::json!({ "recovered": res.recovered })),
        Output::Table => {
            for id in &res.recovered {
                println!("{id} Recovered");
            }
            eprintln!("{} fault(s) recovered", res.recovered.len());
        }
    }
    Ok(())
}
