//! [`AgentBuilder`]: how to start an agent process (mode, extra arguments, environment).
use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Result;

use super::{AgentProcess, READY_TIMEOUT};

/// Options of an agent process to start; see [`AgentProcess::builder`].
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    /// Subcommand and its own arguments (`standalone --inventory F`, `node --node-name N`...).
    pub(super) mode: Vec<String>,
    /// Whether the mode has a datapath (then it gets a state dir and a bpffs folder).
    pub(super) datapath: bool,
    pub(super) env: Vec<(String, String)>,
    pub(super) extra: Vec<String>,
    pub(super) ready_timeout: Duration,
    /// Network namespace to run in (name under `/run/netns`); `None`: the caller's.
    pub(super) netns: Option<String>,
    /// The API address; `None`: `127.0.0.1` and a free port.
    pub(super) listen: Option<SocketAddr>,
    /// The CA an HTTPS agent's certificate chains to ([`AgentBuilder::tls`]); `None`: HTTP.
    pub(super) ca: Option<std::path::PathBuf>,
}

impl AgentBuilder {
    /// `fault-agent standalone --inventory <inventory>`.
    pub fn standalone(inventory: &Path) -> Self {
        Self::mode(
            vec![
                "standalone".into(),
                "--inventory".into(),
                inventory.display().to_string(),
            ],
            true,
        )
    }

    /// Any mode: `mode` is the subcommand and its arguments; with `datapath`, the process
    /// gets `--state-dir` and `--bpffs` of its own. `--listen` is always added.
    pub fn mode(mode: Vec<String>, datapath: bool) -> Self {
        Self {
            mode,
            datapath,
            env: Vec::new(),
            extra: Vec::new(),
            ready_timeout: READY_TIMEOUT,
            netns: None,
            listen: None,
            ca: None,
        }
    }

    /// Serves HTTPS with `certs` (`--tls-cert-file`, `--tls-key-file`); readiness, the
    /// [`AgentProcess`]'s client and its `faultctl` trust the certificates' CA.
    pub fn tls(mut self, certs: &crate::tls::TestCerts) -> Self {
        self.ca = Some(certs.ca());
        self.arg("--tls-cert-file")
            .arg(certs.cert().display().to_string())
            .arg("--tls-key-file")
            .arg(certs.key().display().to_string())
    }

    /// Runs the agent (and its `uninstall`) in the network namespace `netns` (a name under
    /// `/run/netns`, e.g. a fake node's, see [`NodeHandle`](crate::nodes::NodeHandle)) instead
    /// of the caller's; its mount namespace stays the caller's (so `/sys/fs/bpf` is the same).
    /// The [`AgentProcess`] holds the namespace open, so it outlives an `ip netns del` until
    /// the agent is dropped. Fails at start if the namespace does not exist. Default: the
    /// caller's namespace.
    pub fn in_netns(mut self, netns: &str) -> Self {
        self.netns = Some(netns.to_owned());
        self
    }

    /// The API's address (`--listen`); port 0 picks a free port of that address in the
    /// agent's namespace at start (kept across restarts). It must be reachable from the
    /// caller's namespace (readiness is checked from there). Default: `127.0.0.1` and a free
    /// port. A non-loopback address needs `--insecure-no-auth` (or a token file) too.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Adds one command-line argument (after the testkit's own).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }

    /// Adds command-line arguments (after the testkit's own).
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// `--max-duration <duration>` (as the agent parses it, e.g. `10m`, `30s`).
    pub fn max_duration(self, duration: &str) -> Self {
        self.arg("--max-duration").arg(duration)
    }

    /// Sets an environment variable of the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// How long to wait for `GET /readyz` to answer 200 (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the process and waits until it is ready.
    pub fn start(self) -> Result<AgentProcess> {
        AgentProcess::launch(self)
    }
}
