//! The web dashboard (`/ui`) in a real headless Chromium, driven over WebDriver (chromedriver,
//! `fantoccini`), against a standalone agent with a token: log in, a bad input shows the API's
//! own message, a partition injected through the form is listed with rising counters and cuts
//! its pairs while a UDP stream runs (which receives nothing), and recovered from the page the
//! traffic flows again; the verify button shows the API's answer.
//!
//! `FAULTLINE_SCREENSHOT=<file.png>` saves a screenshot of the page with the fault active.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use fault_testkit::{
    DynamoEnv, Family, StreamOpts,
    probe::{udp_stream, udp_stream_background},
    serial,
};
use hyper_util::client::legacy::connect::HttpConnector;

const TOKEN: &str = "dashboard-test-token";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether Chromium and its driver are there, installing them (Debian) when they are not.
fn chromium_available() -> bool {
    let present = || Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists();
    if present() {
        return true;
    }
    eprintln!("installing chromium and chromium-driver (apt-get)");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "chromium", "chromium-driver"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    ok && present()
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("local addr").port()
}

/// chromedriver (and the Chromium it starts) in a process group of their own, with a profile
/// directory of their own; Drop kills the group and any process still using that profile.
struct Driver {
    child: Child,
    profile: tempfile::TempDir,
    url: String,
}

impl Driver {
    fn start() -> Self {
        use std::os::unix::process::CommandExt as _;
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting chromedriver");
        let profile = tempfile::Builder::new()
            .prefix("faultline-chromium-")
            .tempdir()
            .expect("profile dir");
        let url = format!("http://127.0.0.1:{port}");
        let d = Self {
            child,
            profile,
            url,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while ureq::get(format!("{}/status", self.url)).call().is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not answer on {}",
                self.url
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A headless session (as root Chromium needs `--no-sandbox`).
    async fn session(&self) -> Client {
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1500,1000".to_owned(),
            format!("--user-data-dir={}", self.profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": CHROMIUM, "args": args }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a WebDriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        // Chromium's helpers that left the group still name the profile on their command line.
        for pid in pids_naming(self.profile.path()) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn pids_naming(path: &Path) -> Vec<nix::unistd::Pid> {
    let needle = path.to_string_lossy().into_owned();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .map(nix::unistd::Pid::from_raw)
        .collect()
}

/// The page, with the runtime that drives it.
struct Page {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Page {
    fn find(&self, css: &str) -> Element {
        self.rt
            .block_on(self.client.find(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    fn text(&self, css: &str) -> String {
        self.rt
            .block_on(async { self.client.find(Locator::Css(css)).await?.text().await })
            .unwrap_or_default()
    }

    fn class(&self, css: &str) -> String {
        self.rt
            .block_on(async {
                self.client
                    .find(Locator::Css(css))
                    .await?
                    .attr("class")
                    .await
            })
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.rt.block_on(async {
            e.clear().await.expect("clear");
            if !text.is_empty() {
                e.send_keys(text).await.expect("send_keys");
            }
        });
    }

    fn select(&self, css: &str, value: &str) {
        let e = self.find(css);
        self.rt
            .block_on(e.select_by_value(value))
            .unwrap_or_else(|err| panic!("{css} = {value}: {err}"));
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.rt
            .block_on(e.click())
            .unwrap_or_else(|err| panic!("{css}: {err}"));
    }

    /// Waits up to `within` for `css`'s text to satisfy `done`; returns the last text.
    fn wait_text(&self, css: &str, within: Duration, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let t = self.text(css);
            if done(&t) || start.elapsed() > within {
                return t;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, to: &Path) {
        let png = self
            .rt
            .block_on(self.client.screenshot())
            .expect("screenshot");
        std::fs::write(to, png).unwrap_or_else(|e| panic!("writing {}: {e}", to.display()));
        eprintln!("screenshot: {}", to.display());
    }
}

/// What the API itself answers to `body` at `POST /v1/faults`: (status, error message).
fn api_refusal(url: &str, body: &serde_json::Value) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut res = agent
        .post(format!("{url}/v1/faults"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send_json(body)
        .expect("the agent answers");
    let status = res.status().as_u16();
    let json: serde_json::Value = res.body_mut().read_json().expect("a JSON error body");
    let message = json["error"]["message"].as_str().unwrap_or("").to_owned();
    (status, message)
}

fn counter(page: &Page, id: &str, name: &str) -> u64 {
    page.text(&format!("tr[data-fault-id=\"{id}\"] td.{name}"))
        .parse()
        .unwrap_or(0)
}

#[test]
fn dashboard_injects_a_partition_shows_its_counters_and_recovers_it() {
    if !chromium_available() {
        eprintln!(
            "SKIPPED: {CHROMIUM} or {CHROMEDRIVER} missing and apt-get could not install them"
        );
        return;
    }
    let _s = serial();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let env = DynamoEnv::start_with(&["--token-file", token_file.to_str().unwrap()]).unwrap();
    let url = env.agent.api_url();
    let api = fault_api::client::Client::new(&url).with_token(Some(TOKEN.into()));
    let p = &env.pods;
    let base = udp_stream(&p.decode0, &p.prefill, Family::V4, &StreamOpts::default()).unwrap();
    assert_eq!(base.received, base.sent, "baseline lossless: {base}");

    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(driver.session());
    let page = Page { rt, client };
    page.rt
        .block_on(page.client.goto(&format!("{url}/ui")))
        .unwrap();

    // A wrong token: the page is served, the API refuses it.
    page.type_into("#token", "wrong-token");
    page.click("#login-submit");
    let status = page.wait_text("#status", Duration::from_secs(10), |t| t.contains("403"));
    assert!(status.contains("error (HTTP 403)"), "{status}");
    page.type_into("#token", TOKEN);
    page.click("#login-submit");
    let status = page.wait_text("#status", Duration::from_secs(10), |t| {
        t.starts_with("connected")
    });
    assert!(status.starts_with("connected"), "{status}");

    // Bad input: the form shows the API's own message.
    page.type_into("#inject [name=namespace]", "dynamo");
    page.type_into("#inject [name=pod_prefix]", "vllm-decode-0");
    page.type_into("#inject [name=to_selectors]", "app=vllm-prefill");
    page.type_into("#inject [name=loss_percent]", "150");
    page.click("#inject-submit");
    let shown = page.wait_text("#inject-error", Duration::from_secs(10), |t| !t.is_empty());
    let (code, message) = api_refusal(
        &url,
        &serde_json::json!({"namespace": "dynamo", "pod_prefix": "vllm-decode-0",
            "to_selectors": ["app=vllm-prefill"], "direction": "egress", "loss_percent": "150"}),
    );
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("loss_percent"), "{message}");
    assert_eq!(shown, message, "the page shows the API's message");

    // A partition through the form.
    page.type_into("#inject [name=loss_percent]", "");
    page.select("#inject [name=partition]", "packets");
    page.click("#inject-submit");
    let created = page.wait_text("#inject-error", Duration::from_secs(10), |t| {
        t.starts_with("created f-")
    });
    let id = created
        .strip_prefix("created ")
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("no fault id in {created:?}"))
        .to_owned();
    let row = format!("tr[data-fault-id=\"{id}\"]");
    let phase = page.wait_text(&format!("{row} td.phase"), Duration::from_secs(10), |t| {
        t == "active"
    });
    assert_eq!(phase, "active");
    assert_eq!(page.text(&format!("{row} td.kind")), "partition");
    assert_eq!(page.text(&format!("{row} td.targets")), "vllm-decode-0");
    assert_eq!(page.text(&format!("{row} td.peers")), "vllm-prefill-0");
    let cell = "td[data-from=\"dynamo/vllm-decode-0\"][data-to=\"dynamo/vllm-prefill-0\"]";
    assert_eq!(page.class(cell), "cut");
    let back = "td[data-from=\"dynamo/vllm-prefill-0\"][data-to=\"dynamo/vllm-decode-0\"]";
    assert_eq!(
        page.class(back),
        "",
        "egress only: the way back is untouched"
    );

    // Counters rise on the page while a stream runs; the stream receives nothing.
    let opts = StreamOpts {
        count: u64::MAX,
        rate_pps: 1_000,
        ..StreamOpts::default()
    };
    let stream = udp_stream_background(&p.decode0, &p.prefill, Family::V4, &opts).unwrap();
    let first = page.wait_text(&format!("{row} td.dropped"), Duration::from_secs(10), |t| {
        t.parse::<u64>().is_ok_and(|n| n > 0)
    });
    let first: u64 = first.parse().unwrap_or(0);
    assert!(first > 0, "dropped counter shown: {first}");
    let later = page.wait_text(&format!("{row} td.dropped"), Duration::from_secs(10), |t| {
        t.parse::<u64>().is_ok_and(|n| n >= first + 1_000)
    });
    let later: u64 = later.parse().unwrap_or(0);
    assert!(
        later >= first + 1_000,
        "dropped rises: {first} then {later}"
    );
    assert!(counter(&page, &id, "matched") >= later);
    if let Some(to) = std::env::var_os("FAULTLINE_SCREENSHOT") {
        // Some chart before the picture.
        std::thread::sleep(Duration::from_secs(12));
        page.screenshot(&PathBuf::from(to));
    }
    let r = stream.stop().unwrap();
    assert!(r.sent >= 1_000, "{r}");
    assert_eq!(r.received, 0, "the partition cuts every datagram: {r}");

    // Recover from the page; the row says so and traffic flows again.
    page.click(&format!("{row} button.recover"));
    let phase = page.wait_text(&format!("{row} td.phase"), Duration::from_secs(10), |t| {
        t == "recovered"
    });
    assert_eq!(phase, "recovered");
    let after = page.wait_text(cell, Duration::from_secs(5), |t| t.is_empty());
    assert_eq!(after, "", "pair no longer cut");
    assert_eq!(page.class(cell), "");
    // The page shows the kernel's final count, which is every datagram the stream sent.
    let kernel = api.get_fault(&id).unwrap().counters;
    let shown = page.wait_text(&format!("{row} td.dropped"), Duration::from_secs(5), |t| {
        t == kernel.dropped.to_string()
    });
    assert_eq!(shown, kernel.dropped.to_string(), "page vs API {kernel:?}");
    assert_eq!(kernel.dropped, r.sent, "kernel {kernel:?} vs stream {r}");
    let again = udp_stream(&p.decode0, &p.prefill, Family::V4, &StreamOpts::default()).unwrap();
    assert_eq!(again.received, again.sent, "after recover: {again}");

    // Verify: on the recovered fault the page shows the API's refusal; on a new active
    // partition (made through the API) the agent's probes, shown on the page, verify it.
    page.click(&format!("{row} button.verify"));
    let refused = page.wait_text("#verify-result", Duration::from_secs(20), |t| {
        !t.ends_with("verifying...")
    });
    assert!(
        refused.starts_with(&format!("{id}: error (HTTP 409): ")),
        "{refused}"
    );
    let mut spec = fault_api::FaultSpec::new("dynamo");
    spec.pod_prefix = Some("vllm-decode-0".into());
    spec.to_selectors = vec!["app=vllm-prefill".parse().unwrap()];
    spec.partition = Some(fault_api::PartitionMode::Packets);
    let second = api.create(&spec).unwrap().id;
    let row2 = format!("tr[data-fault-id=\"{second}\"]");
    page.wait_text(&format!("{row2} td.phase"), Duration::from_secs(10), |t| {
        t == "active"
    });
    page.click(&format!("{row2} button.verify"));
    let verified = page.wait_text("#verify-result", Duration::from_secs(20), |t| {
        !t.ends_with("verifying...")
    });
    assert!(
        verified.starts_with(&format!("{second} verify:\n{{"))
            && verified.contains("\"outcome\": \"verified\""),
        "{verified}"
    );
    api.recover(&second).unwrap();

    let _ = page.rt.block_on(page.client.clone().close());
    eprintln!(
        "dashboard test: first/later dropped on the page {first}/{later}, stream {r}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
