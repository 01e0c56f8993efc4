//! `faultctl inject`: flags to a [`FaultSpec`], checked here with the same validation the
//! agent runs (errors name the flag), then sent.
use clap::Args;
use fault_api::{
    ApiError, Direction, FaultDuration, FaultSpec, PartitionMode, Percent, Protocol, Rate,
    Selector, client::Client,
};
use ipnet::IpNet;

use crate::output::{CliError, Output};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("targets").required(true).multiple(true).args(["pod_prefix", "selector"])))]
#[command(group(clap::ArgGroup::new("action").required(true).multiple(true).args(["partition", "loss", "corrupt", "delay", "duplicate", "rate"])))]
pub struct InjectArgs {
    /// Probe the fault once applied and print the report after its id (as `faultctl verify`).
    #[arg(long)]
    pub verify: bool,
    /// Namespace of the target pods.
    #[arg(long, short = 'n')]
    namespace: String,
    /// Target pods whose name starts with this.
    #[arg(long)]
    pod_prefix: Option<String>,
    /// Target pods matching this label selector (k=v[,k=v]).
    #[arg(long, short = 'l')]
    selector: Option<Selector>,
    /// Peer pods matching this selector (repeatable: any of them).
    #[arg(long = "to-selector")]
    to_selectors: Vec<Selector>,
    /// Peer pods in this namespace (default: the targets' namespace).
    #[arg(long)]
    to_namespace: Option<String>,
    /// Peer CIDR (repeatable).
    #[arg(long = "to-cidr")]
    to_cidrs: Vec<IpNet>,
    /// The peer's port (TCP and UDP unless --protocol).
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    protocol: Option<Protocol>,
    /// Relative to the target pods.
    #[arg(long, default_value = "egress")]
    direction: Direction,
    /// Cut traffic: every packet (default), or new connections only (NetworkPolicy semantics).
    #[arg(long, num_args = 0..=1, default_missing_value = "packets", require_equals = true, value_name = "packets|connections")]
    partition: Option<PartitionMode>,
    /// Drop this share of packets: 30 or 30%.
    #[arg(long, value_name = "PCT", allow_hyphen_values = true)]
    loss: Option<Percent>,
    /// Flip a payload bit in this share of packets: 5 or 5%.
    #[arg(long, value_name = "PCT", allow_hyphen_values = true)]
    corrupt: Option<Percent>,
    /// Added latency: 100ms.
    #[arg(long, value_name = "DUR", allow_hyphen_values = true)]
    delay: Option<FaultDuration>,
    /// Latency jitter (uniform within +/- this): 20ms.
    #[arg(long, value_name = "DUR", allow_hyphen_values = true)]
    jitter: Option<FaultDuration>,
    /// Duplicate this share of packets.
    #[arg(long, value_name = "PCT", allow_hyphen_values = true)]
    duplicate: Option<Percent>,
    /// Bandwidth limit, tc units: 1mbit, 500kbit, 1mbps (= 1 MB/s).
    #[arg(long)]
    rate: Option<Rate>,
    /// Ends by itself after this long: 500ms, 30s, 5m.
    #[arg(long, value_name = "DUR", allow_hyphen_values = true)]
    duration: Option<FaultDuration>,
    /// Also fault NATS (kept reachable by default).
    #[arg(long)]
    block_nats: bool,
    /// Never fault peers in this namespace (repeatable).
    #[arg(long = "allow-namespace")]
    allow_namespaces: Vec<String>,
    /// Blast radius: all (default), one, fixed, fixed-percent, random-max-percent.
    #[arg(long, value_name = "MODE")]
    mode: Option<fault_api::TargetMode>,
    /// --mode's value: pods for fixed (1-100000), a percent (1-100) for the percent modes.
    #[arg(long, value_name = "N")]
    value: Option<u32>,
    /// Act on protected resources anyway, for this reason (the agent must allow overrides;
    /// audited).
    #[arg(long, value_name = "REASON")]
    override_protection: Option<String>,
    /// Print what the fault would do and the guards it would trip; apply nothing.
    #[arg(long, conflicts_with = "verify")]
    pub dry_run: bool,
    #[command(flatten)]
    conditions: crate::conditions::ConditionArgs,
}

/// The flag behind a spec field, for errors.
pub(crate) fn flag_of(field: &str) -> String {
    if let Some(flag) = crate::conditions::flag_of(field) {
        return flag.into();
    }
    let base = field.split('[').next().unwrap_or(field);
    let flag = match base {
        "to_selectors" => "to-selector",
        "to_cidrs" => "to-cidr",
        "loss_percent" => "loss",
        "corrupt_percent" => "corrupt",
        "duplicate_percent" => "duplicate",
        "allow_namespaces" => "allow-namespace",
        "override_protection.reason" => "override-protection",
        other => return format!("--{}", other.replace('_', "-")),
    };
    format!("--{flag}")
}

impl InjectArgs {
    /// The spec the flags describe (not validated).
    pub(crate) fn spec(self) -> FaultSpec {
        let mut s = FaultSpec::new(self.namespace);
        s.pod_prefix = self.pod_prefix;
        s.selector = self.selector;
        s.to_selectors = self.to_selectors;
        s.to_namespace = self.to_namespace;
        s.to_cidrs = self.to_cidrs;
        s.port = self.port;
        s.protocol = self.protocol;
        s.direction = self.direction;
        s.partition = self.partition;
        s.loss_percent = self.loss;
        s.corrupt_percent = self.corrupt;
        s.delay = self.delay;
        s.jitter = self.jitter;
        s.duplicate_percent = self.duplicate;
        s.rate = self.rate;
        s.duration = self.duration;
        s.block_nats = self.block_nats;
        s.allow_namespaces = self.allow_namespaces;
        s.mode = self.mode.unwrap_or_default();
        s.value = self.value;
        s.override_protection = self
            .override_protection
            .map(|reason| fault_api::ProtectionOverride { reason });
        s.preflight = self.conditions.preflight();
        s.abort = self.conditions.abort();
        s
    }
}

pub fn run(client: &Client, out: Output, args: InjectArgs) -> Result<(), CliError> {
    let (verify, dry_run) = (args.verify, args.dry_run);
    let spec = args.spec();
    if let Err(e) = spec.validate() {
        let flag = flag_of(&e.field);
        return Err(CliError::Usage(
            ApiError::new("invalid_field", format!("invalid {flag}: {}", e.message))
                .with_field(e.field),
        ));
    }
    if dry_run {
        out.plan(&client.plan(&spec)?);
        return Ok(());
    }
    if !verify {
        out.created(&client.create(&spec)?);
        return Ok(());
    }
    let fault = client.create_verified(&spec)?;
    out.created(&fault);
    if let (Output::Table, Some(v)) = (out, &fault.verification) {
        crate::verify::print(out, v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::flag_of;

    #[test]
    fn fields_map_to_flags() {
        assert_eq!(flag_of("loss_percent"), "--loss");
        assert_eq!(flag_of("to_cidrs[2]"), "--to-cidr");
        assert_eq!(flag_of("pod_prefix"), "--pod-prefix");
    }
}
