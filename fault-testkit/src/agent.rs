//! A real `fault-agent` process for a test ([`AgentProcess`]), and the `faultctl` binary.
//!
//! The agent's command-line contract:
//! ```text
//! fault-agent standalone --inventory FILE --listen ADDR --state-dir DIR --bpffs DIR [--max-duration DUR]
//! fault-agent uninstall --state-dir DIR --bpffs DIR
//! ```
//! It serves the native API, answers `GET /readyz` with 200 once it is attached to every pod
//! of its inventory, and removes everything it made on SIGTERM.
mod bin;
mod bpffs;
mod builder;
mod ready;

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
pub use bin::{BIN_DIR_ENV, bin_path, faultctl};
pub use bpffs::{BPFFS, ensure_bpffs};
pub use builder::AgentBuilder;
use fault_api::client::Client;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// How long [`AgentProcess::start`] waits for `/readyz` by default (60 s: on the host an agent
/// is ready within a second; the 6.1 VM under software emulation on a busy machine needs tens).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`AgentProcess::terminate`] waits for the agent to exit after SIGTERM (10 s).
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of the log quoted in errors.
const LOG_TAIL_LINES: usize = 60;

/// A network namespace an agent runs in, held open (so it lives as long as the agent).
#[derive(Debug)]
struct Netns {
    name: String,
    file: File,
}

impl Netns {
    fn open(name: &str) -> Result<Self> {
        let path = Path::new(crate::netns::NETNS_DIR).join(name);
        let file = File::open(&path)
            .with_context(|| format!("opening network namespace {}", path.display()))?;
        Ok(Self {
            name: name.to_owned(),
            file,
        })
    }

    /// Makes `cmd` enter this namespace between fork and exec.
    fn enter_on_exec(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt as _;
        let fd = self.file.as_raw_fd();
        // SAFETY: setns is a plain syscall (async-signal-safe); `fd` stays open until exec
        // (the parent holds the file for as long as the `Command` lives).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// The API address: `listen` with a free port of its address (in `netns`) if its port is 0,
/// or `127.0.0.1` and a free port without `listen`.
fn api_address(listen: Option<SocketAddr>, netns: Option<&Netns>) -> Result<SocketAddr> {
    let want = listen.unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    if want.port() != 0 {
        return Ok(want);
    }
    let bind = move || -> Result<SocketAddr> {
        let l =
            TcpListener::bind(want).with_context(|| format!("finding a free port on {want}"))?;
        Ok(l.local_addr()?)
    };
    match netns {
        None => bind(),
        Some(ns) => {
            let path = Path::new(crate::netns::NETNS_DIR).join(&ns.name);
            crate::netns::run_in(&path, bind)?
        }
    }
}

fn random_suffix() -> Result<String> {
    Ok(format!("{:08x}", crate::rand::u64()? as u32))
}

/// A new bpffs folder for a test agent, `faultline-test-<test pid>-<random>`, after removing
/// those of test processes that are gone: a test killed before its cleanup (SIGKILL, a
/// timeout) leaves pinned programs and links behind, which the next run removes.
fn test_bpffs() -> Result<PathBuf> {
    for e in std::fs::read_dir(BPFFS).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("faultline-test-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let pid = std::process::id();
    Ok(PathBuf::from(format!(
        "{BPFFS}/faultline-test-{pid}-{}",
        random_suffix()?
    )))
}

/// An agent process with its own state dir (in a temporary directory that also holds its
/// logs), bpffs folder (`/sys/fs/bpf/faultline-test-<pid>-<random>`) and API address (a loopback
/// port, or what [`AgentBuilder::listen`] says), in the caller's network namespace or another
/// ([`AgentBuilder::in_netns`]). On drop it is terminated, `fault-agent uninstall` runs (in
/// the same namespace), and the bpffs folder is removed.
pub struct AgentProcess {
    child: Option<Child>,
    /// Subcommand and its own arguments (`standalone --inventory F`, `node --node-name N`...).
    mode: Vec<String>,
    /// Whether the mode has a datapath (state dir, bpffs).
    datapath: bool,
    env: Vec<(String, String)>,
    extra: Vec<String>,
    ready_timeout: Duration,
    dir: tempfile::TempDir,
    bpffs: PathBuf,
    listen: SocketAddr,
    netns: Option<Netns>,
    /// The CA its HTTPS certificate chains to; `None`: plain HTTP.
    ca: Option<PathBuf>,
    /// Processes started so far (run `n` logs to `agent-<n>.log`).
    starts: u32,
}

impl AgentProcess {
    /// Starts `fault-agent standalone` on `inventory` and waits until it is ready.
    pub fn start(inventory: &Path) -> Result<Self> {
        Self::builder(inventory).start()
    }

    /// Same, with extra command-line arguments.
    pub fn start_with(inventory: &Path, extra: &[&str]) -> Result<Self> {
        Self::builder(inventory).args(extra.iter().copied()).start()
    }

    /// A builder of `fault-agent standalone` on `inventory`, for extra arguments, environment
    /// or timeouts.
    pub fn builder(inventory: &Path) -> AgentBuilder {
        AgentBuilder::standalone(inventory)
    }

    /// `fault-agent node --node-name NODE` against the API server of `kubeconfig`.
    pub fn start_node(kubeconfig: &Path, node: &str, extra: &[&str]) -> Result<Self> {
        let mode = vec!["node".into(), "--node-name".into(), node.into()];
        Self::start_mode(
            mode,
            true,
            vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
            extra,
        )
    }

    /// `fault-agent api` against the API server of `kubeconfig`.
    pub fn start_api(kubeconfig: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_mode(
            vec!["api".into()],
            false,
            vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
            extra,
        )
    }

    /// Any mode: `mode` is the subcommand and its arguments; `datapath` adds a state dir and a
    /// bpffs folder of its own.
    pub fn start_mode(
        mode: Vec<String>,
        datapath: bool,
        env: Vec<(String, String)>,
        extra: &[&str],
    ) -> Result<Self> {
        let mut b = AgentBuilder::mode(mode, datapath).args(extra.iter().copied());
        for (k, v) in &env {
            b = b.env(k, v);
        }
        b.start()
    }

    fn launch(b: AgentBuilder) -> Result<Self> {
        if b.datapath {
            ensure_bpffs()?;
        }
        let netns = b.netns.as_deref().map(Netns::open).transpose()?;
        let listen = api_address(b.listen, netns.as_ref())?;
        let mut a = Self {
            child: None,
            mode: b.mode,
            datapath: b.datapath,
            env: b.env,
            extra: b.extra,
            ready_timeout: b.ready_timeout,
            dir: tempfile::Builder::new()
                .prefix("faultline-agent-")
                .tempdir()
                .context("creating a temporary directory")?,
            bpffs: test_bpffs()?,
            listen,
            netns,
            ca: b.ca,
            starts: 0,
        };
        a.spawn()?;
        Ok(a)
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.path().join(format!("agent-{run}.log"))
    }

    fn spawn(&mut self) -> Result<()> {
        let program = bin_path("fault-agent")?;
        let log = File::create(self.log_path(self.starts + 1))
            .context("creating the agent's log file")?;
        let log_err = log.try_clone().context("duplicating the log file")?;
        let mut cmd = Command::new(program);
        // The agent must get SIGTERM even if our caller blocked it (exec keeps blocked signals).
        // SAFETY: sigprocmask is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(|| {
                let _ = nix::sys::signal::SigSet::all().thread_unblock();
                Ok(())
            });
        }
        if let Some(ns) = &self.netns {
            ns.enter_on_exec(&mut cmd);
        }
        cmd.args(&self.mode)
            .arg("--listen")
            .arg(self.listen.to_string());
        if self.datapath {
            cmd.arg("--state-dir")
                .arg(self.state_dir())
                .arg("--bpffs")
                .arg(&self.bpffs);
        }
        let child = cmd
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .context("starting fault-agent")?;
        self.starts += 1;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits for `/readyz`; fails with the log's tail if the process exits or time runs out
    /// (the process is then left to [`Drop`] or [`AgentProcess::kill`]).
    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        let addr = self.listen;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("waiting for fault-agent")?
            {
                self.child = None;
                bail!(
                    "fault-agent exited ({status}) before it was ready; its log ends with:\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            let ready = match &self.ca {
                None => ready::readyz(addr, Duration::from_millis(500)),
                Some(_) => self.client().ready(),
            };
            if ready {
                return Ok(());
            }
            if start.elapsed() > self.ready_timeout {
                bail!(
                    "fault-agent not ready after {:?}; its log ends with:\n{}",
                    self.ready_timeout,
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Base URL of its API: `http://127.0.0.1:PORT`, or `http://<listen address>` (IPv6 in
    /// brackets); `https://` when it serves TLS ([`AgentBuilder::tls`]).
    pub fn api_url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.listen)
    }

    /// The CA file its HTTPS certificate chains to, if it serves HTTPS.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// Its API port (the same across restarts).
    pub fn port(&self) -> u16 {
        self.listen.port()
    }

    /// Its API address (`--listen`; the same across restarts).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The network namespace it runs in (name under `/run/netns`), if not the caller's.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_ref().map(|n| n.name.as_str())
    }

    /// A client of its native API.
    pub fn client(&self) -> Client {
        let client = Client::new(&self.api_url());
        let Some(pem) = self.ca.as_deref().and_then(|ca| std::fs::read(ca).ok()) else {
            return client;
        };
        // The CA file was written by `TestCerts`; a broken one fails the first call instead.
        client.clone().with_ca_pem(&pem).unwrap_or(client)
    }

    /// Runs `faultctl --api <api_url> ARGS...` against it.
    pub fn faultctl(&self, args: &[&str]) -> Result<Output> {
        match &self.ca {
            None => faultctl(&self.api_url(), args),
            Some(ca) => {
                let ca = ca.display().to_string();
                let mut all = vec!["--ca-file", ca.as_str()];
                all.extend_from_slice(args);
                faultctl(&self.api_url(), &all)
            }
        }
    }

    /// The command line [`AgentProcess::faultctl`] runs for `args`, as a shell would show it
    /// (for reports such as `BENCHMARKS.md`).
    pub fn faultctl_line(&self, args: &[&str]) -> String {
        format!("faultctl --api {} {}", self.api_url(), shell_words(args))
    }

    /// The agent's command line (last start), as a shell would show it, environment aside;
    /// prefixed with `ip netns exec <netns>` when it runs in another namespace.
    pub fn command_line(&self) -> String {
        let mut args: Vec<String> = self.mode.clone();
        args.push("--listen".into());
        args.push(self.listen.to_string());
        if self.datapath {
            args.push("--state-dir".into());
            args.push(self.state_dir().display().to_string());
            args.push("--bpffs".into());
            args.push(self.bpffs.display().to_string());
        }
        args.extend(self.extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let netns = self
            .netns()
            .map_or(String::new(), |n| format!("ip netns exec {n} "));
        format!("{netns}fault-agent {}", shell_words(&args))
    }

    /// Its state directory (in a temporary directory removed on drop).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Its bpffs folder, `/sys/fs/bpf/faultline-test-<pid>-<random>`.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// Pid of the running process; `None` once killed, terminated or exited before ready.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs (it may have exited on its own since the last call).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its log (stdout and stderr) over all its runs, oldest first.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .filter_map(|run| std::fs::read_to_string(self.log_path(run)).ok())
            .collect()
    }

    /// The last `lines` lines of [`AgentProcess::log`], and at most its last 16 KiB (a
    /// verifier log has very long lines).
    pub fn log_tail(&self, lines: usize) -> String {
        const MAX_BYTES: usize = 16 * 1024;
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        let mut cut = tail.len().saturating_sub(MAX_BYTES);
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        if cut > 0 {
            format!("[...]{}", &tail[cut..])
        } else {
            tail
        }
    }

    /// SIGKILL, then reaps the process: the agent gets no chance to clean up (what it made
    /// stays in the kernel, on purpose). Nothing to do if it is not running.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                c.kill().context("killing fault-agent")?;
            }
            c.wait().context("waiting for fault-agent")?;
        }
        Ok(())
    }

    /// SIGTERM, then waits up to 10 s for the agent to remove what it made and exit (SIGKILL
    /// and an error after that). Fails if it is not running.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("fault-agent is not running")
        };
        if let Some(status) = c.try_wait().context("waiting for fault-agent")? {
            return Ok(status);
        }
        let pid = Pid::from_raw(i32::try_from(c.id()).context("pid out of range")?);
        kill(pid, Signal::SIGTERM).context("sending SIGTERM to fault-agent")?;
        let deadline = Instant::now() + TERMINATE_TIMEOUT;
        loop {
            if let Some(status) = c.try_wait().context("waiting for fault-agent")? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!(
                    "fault-agent did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM; its log ends with:\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets (`Some`) or unsets (`None`) an environment variable of the processes started from
    /// now on ([`AgentProcess::restart`]), e.g. `FAULTLINE_FAILPOINTS`.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.into(), v.into()));
        }
    }

    /// Waits up to `timeout` for the process to exit on its own and reaps it: its status, or
    /// `None` if it still runs (or none runs).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(c) = self.child.as_mut() else {
                return Ok(None);
            };
            if let Some(status) = c.try_wait().context("waiting for fault-agent")? {
                self.child = None;
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts a new process with the same mode, arguments, state dir, bpffs folder and port,
    /// and waits until it is ready. Fails if one is still running ([`AgentProcess::kill`] or
    /// [`AgentProcess::terminate`] it first).
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("fault-agent is still running: kill() or terminate() it first");
        }
        self.child = None;
        self.spawn()
    }

    /// Runs `fault-agent uninstall --state-dir .. --bpffs ..` for this instance, in its
    /// network namespace.
    pub fn uninstall(&self) -> Result<Output> {
        let mut cmd = Command::new(bin_path("fault-agent")?);
        if let Some(ns) = &self.netns {
            ns.enter_on_exec(&mut cmd);
        }
        cmd.arg("uninstall")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--bpffs")
            .arg(&self.bpffs)
            .output()
            .context("running fault-agent uninstall")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if std::thread::panicking() && self.starts > 0 {
            eprintln!(
                "testkit: the agent's log (test panicking) ends with:\n{}",
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        if self.child.is_some()
            && let Err(e) = self.terminate()
        {
            eprintln!("testkit: {e:#}");
        }
        if !self.datapath || self.starts == 0 {
            return;
        }
        match self.uninstall() {
            Ok(o) if !o.status.success() => {
                eprintln!(
                    "testkit: fault-agent uninstall ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            }
            Err(e) => eprintln!("testkit: fault-agent uninstall: {e:#}"),
            Ok(_) => {}
        }
        if let Err(e) = std::fs::remove_dir_all(&self.bpffs)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("testkit: removing {}: {e}", self.bpffs.display());
        }
    }
}

/// Arguments joined with spaces, single-quoted where a shell would need it.
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,%@+".contains(c))
            {
                (*a).to_owned()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::shell_words;

    #[test]
    fn shell_words_quotes_what_a_shell_would_split() {
        assert_eq!(
            shell_words(&["inject", "-n", "a b", "it's", "--loss", "30%"]),
            r"inject -n 'a b' 'it'\''s' --loss 30%"
        );
    }
}
