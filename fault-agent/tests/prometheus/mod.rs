//! A real Prometheus (Debian's `prometheus`) for a test: a child process on a loopback port,
//! with a temporary config and storage folder, scraping one target every second with a bearer
//! token from a file; killed and its folder removed on drop, also when the test panics.
#![allow(dead_code)]

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The binary the Debian package installs.
const BINARY: &str = "/usr/bin/prometheus";

/// See the module docs.
pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    http: ureq::Agent,
}

/// One sample of an instant vector: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub value: f64,
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(l.local_addr()?.port())
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`/metrics`) every second with the bearer token in
    /// `token_file`; returns once it answers `/-/ready`.
    pub fn start(target: SocketAddr, token_file: &Path) -> Result<Self> {
        Self::start_with_rules(target, token_file, None)
    }

    /// [`Prometheus::start`], evaluating the rule file `rules` (`rule_files`) every second.
    pub fn start_with_rules(
        target: SocketAddr,
        token_file: &Path,
        rules: Option<&Path>,
    ) -> Result<Self> {
        anyhow::ensure!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: apt-get install prometheus (cargo xtask setup does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("faultline-prometheus-")
            .tempdir()
            .context("creating a temporary directory")?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: faultline\n    authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      - targets: ['{target}']\n",
                token_file.display()
            ) + &rules.map_or(String::new(), |r| {
                format!("rule_files: ['{}']\n", r.display())
            }),
        )?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut p = Self {
            child,
            dir,
            addr,
            http,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!("prometheus exited ({status}):\n{}", p.log());
            }
            let ready = p
                .http
                .get(format!("http://{addr}/-/ready"))
                .call()
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return Ok(p);
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("prometheus not ready after 30 s:\n{}", p.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query (`/api/v1/query`) whose result is a vector.
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let mut res = self
            .http
            .get(format!("http://{}/api/v1/query", self.addr))
            .query("query", promql)
            .call()
            .with_context(|| format!("querying {promql}"))?;
        let body: serde_json::Value = serde_json::from_str(&res.body_mut().read_to_string()?)?;
        if body["status"] != "success" {
            bail!("query {promql} failed: {body}");
        }
        let Some(result) = body["data"]["result"].as_array() else {
            bail!("query {promql}: no vector in {body}");
        };
        result
            .iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .with_context(|| format!("sample without a value: {s}"))?;
                let labels = s["metric"].as_object().cloned().unwrap_or_default();
                Ok(Sample { labels, value })
            })
            .collect()
    }

    /// The `data` of a GET of the HTTP API's `path` (e.g. `/api/v1/rules`).
    pub fn api(&self, path: &str) -> Result<serde_json::Value> {
        let mut res = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .call()
            .with_context(|| format!("GET {path}"))?;
        let body: serde_json::Value = serde_json::from_str(&res.body_mut().read_to_string()?)?;
        if body["status"] != "success" {
            bail!("GET {path} failed: {body}");
        }
        Ok(body["data"].clone())
    }

    /// Whether the target's last scrape succeeded (`up == 1`).
    pub fn target_up(&self) -> bool {
        self.query("up")
            .is_ok_and(|v| v.first().is_some_and(|s| s.value == 1.0))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
