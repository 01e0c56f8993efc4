//! A real `fault-agent standalone` process for a test, and the `faultctl` binary.
use std::{
    fs::File,
    io::Read as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use fault_api::client::Client;

/// A workspace binary: `$FAULTLINE_BIN_DIR/<name>`, else next to the running executable (or
/// its parent: test executables live in `target/<profile>/deps`).
pub fn bin_path(name: &str) -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("FAULTLINE_BIN_DIR") {
        let p = Path::new(&dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} not found next to {}: run `cargo build -p fault-agent -p faultctl` (or set FAULTLINE_BIN_DIR)", exe.display())
}

/// Runs `faultctl --api <api_url> ARGS...`.
pub fn faultctl(api_url: &str, args: &[&str]) -> Result<Output> {
    Command::new(bin_path("faultctl")?)
        .arg("--api")
        .arg(api_url)
        .args(args)
        .output()
        .context("running faultctl")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_suffix() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    format!("{:08x}", u32::from_le_bytes(b))
}

/// An agent process with its own state dir, bpffs folder and port.
pub struct AgentProcess {
    child: Option<Child>,
    inventory: PathBuf,
    dir: tempfile::TempDir,
    bpffs: PathBuf,
    port: u16,
    extra: Vec<String>,
    starts: u32,
}

impl AgentProcess {
    /// Starts `fault-agent standalone` on `inventory` and waits until it is ready.
    pub fn start(inventory: &Path) -> Result<Self> {
        Self::start_with(inventory, &[])
    }

    /// Same, with extra command-line arguments.
    pub fn start_with(inventory: &Path, extra: &[&str]) -> Result<Self> {
        crate::run("sh", &["-c", "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf"])?;
        let mut a = Self {
            child: None,
            inventory: inventory.to_owned(),
            dir: tempfile::Builder::new().prefix("faultline-agent-").tempdir()?,
            bpffs: PathBuf::from(format!("/sys/fs/bpf/faultline-test-{}", random_suffix())),
            port: free_port()?,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            starts: 0,
        };
        a.spawn()?;
        Ok(a)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("agent-{}.log", self.starts))
    }

    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let log = File::create(self.log_path())?;
        let mut cmd = Command::new(bin_path("fault-agent")?);
        // The agent must get SIGTERM even if our caller blocked it (exec keeps blocked signals).
        // SAFETY: sigprocmask is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(|| {
                let _ = nix::sys::signal::SigSet::all().thread_unblock();
                Ok(())
            });
        }
        let child = cmd
            .arg("standalone")
            .arg("--inventory")
            .arg(&self.inventory)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--bpffs")
            .arg(&self.bpffs)
            .args(&self.extra)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting fault-agent")?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(20))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let client = self.client();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("fault-agent exited ({status}) before it was ready:\n{}", self.log());
                }
            }
            if client.ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("fault-agent not ready after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client of the native API.
    pub fn client(&self) -> Client {
        Client::new(&self.api_url())
    }

    /// Runs `faultctl` against this agent.
    pub fn faultctl(&self, args: &[&str]) -> Result<Output> {
        faultctl(&self.api_url(), args)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's log (all its runs).
    pub fn log(&self) -> String {
        let mut all = String::new();
        for i in 1..=self.starts {
            let mut s = String::new();
            if let Ok(mut f) = File::open(self.dir.path().join(format!("agent-{i}.log"))) {
                let _ = f.read_to_string(&mut s);
            }
            all.push_str(&s);
        }
        all
    }

    /// SIGKILL: the agent gets no chance to clean up (what it made stays in the kernel).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits up to 10 s for the agent to remove what it made and exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else { bail!("agent not running") };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                bail!("agent did not exit within 10 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the agent again with the same state dir, bpffs folder and port.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("agent still running");
        }
        self.spawn()
    }

    /// Runs `fault-agent uninstall` for this instance.
    pub fn uninstall(&self) -> Result<Output> {
        Command::new(bin_path("fault-agent")?)
            .arg("uninstall")
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
        if self.child.is_some() {
            if let Err(e) = self.terminate() {
                eprintln!("testkit: {e:#}");
            }
        }
        match self.uninstall() {
            Ok(o) if !o.status.success() => eprintln!("testkit: uninstall: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("testkit: uninstall: {e:#}"),
            _ => {}
        }
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }
}
