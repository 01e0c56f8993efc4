//! A real Kubernetes API server for tests: kube-apiserver v1.20 and etcd on loopback, with a
//! self-signed CA and a static admin token. No scheduler and no kubelet: tests play the
//! kubelet (create the pod's network namespace, create the Pod with `spec.nodeName`, patch its
//! status with its addresses).
//!
//! The binaries are built once by `cargo xtask kube build` (from Debian's `kubernetes` source
//! package) into `$FAULTLINE_KUBE_BIN` (default `~/.cache/faultline/kube-v1.20.2/bin`); `etcd`
//! comes from Debian's `etcd-server`. Processes die with the thread that started them
//! (`PR_SET_PDEATHSIG`), and on drop.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The admin token of the test API server (group `system:masters`).
pub const ADMIN_TOKEN: &str = "faultline-testenv-admin";

/// A user of the test API server (`alice`, group `team-a-devs`) with no permission until a
/// test binds a role to her.
pub const ALICE_TOKEN: &str = "faultline-testenv-alice";

/// Where the kube binaries are cached.
pub fn kube_bin_dir() -> PathBuf {
    std::env::var_os("FAULTLINE_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            Path::new(&home).join(".cache/faultline/kube-v1.20.2/bin")
        })
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))
}

/// A running API server (and its etcd).
pub struct KubeEnv {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    port: u16,
}

impl KubeEnv {
    /// Starts etcd and kube-apiserver and waits until the server is ready (about 5 s).
    pub fn start() -> Result<Self> {
        let bin = kube_bin_dir();
        let apiserver = bin.join("kube-apiserver");
        if !apiserver.exists() {
            bail!(
                "{} missing: run `cargo xtask kube build` (or `cargo xtask test`)",
                apiserver.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("faultline-kube-")
            .tempdir()?;
        let d = dir.path();
        let (port, etcd_client, etcd_peer) = (free_port()?, free_port()?, free_port()?);
        let pki = d.join("pki");
        std::fs::create_dir_all(&pki)?;
        let ssl = |args: &[&str]| crate::run("openssl", args).map(|_| ());
        let p = |f: &str| pki.join(f).display().to_string();
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=faultline-testenv-ca",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
        ])?;
        ssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-keyout",
            &p("apiserver.key"),
            "-out",
            &p("apiserver.csr"),
        ])?;
        std::fs::write(
            pki.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        ssl(&[
            "x509",
            "-req",
            "-in",
            &p("apiserver.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("san.ext"),
            "-out",
            &p("apiserver.crt"),
        ])?;
        ssl(&["genrsa", "-out", &p("sa.key"), "2048"])?;
        ssl(&["rsa", "-in", &p("sa.key"), "-pubout", "-out", &p("sa.pub")])?;
        std::fs::write(
            pki.join("tokens.csv"),
            format!(
                "{ADMIN_TOKEN},admin,uid-admin,\"system:masters\"\n{ALICE_TOKEN},alice,uid-alice,\"team-a-devs\"\n"
            ),
        )?;

        let mut env = Self {
            dir,
            children: vec![],
            port,
        };
        let d = env.dir.path().to_owned();
        env.children.push(spawn(
            Command::new("etcd")
                .arg("--data-dir")
                .arg(d.join("etcd"))
                .arg(format!(
                    "--listen-client-urls=http://127.0.0.1:{etcd_client}"
                ))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{etcd_client}"
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"
                ))
                .arg(format!(
                    "--initial-cluster=default=http://127.0.0.1:{etcd_peer}"
                )),
            &d.join("etcd.log"),
        )?);
        env.children.push(spawn(
            Command::new(&apiserver)
                .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_client}"))
                .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
                .arg(format!("--secure-port={port}"))
                .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
                .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
                .arg(format!("--client-ca-file={}", p("ca.crt")))
                .arg(format!("--token-auth-file={}", p("tokens.csv")))
                .arg("--service-account-issuer=https://kubernetes.default.svc")
                .arg(format!("--service-account-key-file={}", p("sa.pub")))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    p("sa.key")
                ))
                .args([
                    "--service-cluster-ip-range=198.19.0.0/24",
                    "--authorization-mode=RBAC",
                ])
                .args([
                    "--disable-admission-plugins=ServiceAccount",
                    "--endpoint-reconciler-type=none",
                ]),
            &d.join("apiserver.log"),
        )?);
        std::fs::write(
            env.kubeconfig(),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster: {{server: \"https://127.0.0.1:{port}\", certificate-authority: \"{}\"}}\nusers:\n- name: admin\n  user: {{token: {ADMIN_TOKEN}}}\ncontexts:\n- name: testenv\n  context: {{cluster: testenv, user: admin, namespace: default}}\ncurrent-context: testenv\n",
                p("ca.crt")
            ),
        )?;
        env.wait_ready(Duration::from_secs(60))?;
        Ok(env)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            for c in &mut self.children {
                if let Some(st) = c.try_wait()? {
                    bail!("a test API server process exited ({st}):\n{}", self.log());
                }
            }
            let ok = Command::new("curl")
                .args(["-sf", "--cacert"])
                .arg(self.dir.path().join("pki/ca.crt"))
                .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
                .arg(format!("https://127.0.0.1:{}/readyz", self.port))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "the test API server was not ready within {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The kubeconfig of the admin user.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The tail of the server logs, for failures.
    pub fn log(&self) -> String {
        let mut s = String::new();
        for f in ["etcd.log", "apiserver.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            s.push_str(&format!(
                "--- {f}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        s
    }
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in self.children.iter_mut() {
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
