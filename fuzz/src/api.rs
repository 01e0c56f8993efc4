//! The `api` target's harness: the agent's real router and core, on real BPF maps and programs
//! attached to the veths of real pods (fault-testkit's inference topology: namespace
//! `dynamo`, `frontend-0`, `vllm-decode-0/1`, `vllm-prefill-0`, `nats-0`), plus one pod of
//! another host. Needs root, bpffs and TCX or clsact, like the datapath tests.
//!
//! An input is an HTTP request as text:
//!
//! ```text
//! POST /v1/faults?x=y
//! Header-Name: value
//!
//! {"namespace": "dynamo", ...}
//! ```
//!
//! The bearer token is added unless the input sends its own `Authorization`. After each
//! request every fault is recovered, and when the request could have changed anything the
//! kernel maps are read back and compared with what they held before the first input.
//!
//! What is left in the kernel when the process dies without its exit handler (a crash, a
//! timeout) is removed by the next start: fault-testkit reaps its topologies, and pin and
//! state folders of dead processes (`faultline-fuzz-<pid>`) are deleted.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    body::Body,
    http::{HeaderName, HeaderValue, Method, Request, StatusCode, header},
};
use aya::maps::{Array, HashMap, Map, MapData, lpm_trie::LpmTrie};
use fault_agent::{
    api::{AppState, backend::Backend, limits::ApiLimits, router},
    core::{Core, CoreConfig},
    dataplane::{Capabilities, Dataplane, Pins, kernel},
    discover,
    pods::Pod,
    store::Store,
};
use fault_api::{ErrorBody, Fault, seed::SeedFault};
use fault_common::{
    FaultParams, MAP_FAULTS, MAP_GATE, MAP_REMOTE, MAP_RULES, MAP_TARGETS, MAX_FAULTS, RuleKey,
    RuleValue, TargetKey, TargetValue,
};
use fault_testkit::Topology;
use tower::ServiceExt as _;

/// The token the router is built with.
pub const TOKEN: &str = "fuzz-token";
/// The agent's `--max-duration`.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Prefix of the bpffs and state folders of a harness (then its pid).
const PREFIX: &str = "faultline-fuzz-";
const BPFFS: &str = "/sys/fs/bpf";

/// A request of the input.
pub struct Input {
    pub method: Method,
    pub uri: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

impl Input {
    /// Parses the text form (module docs); `None` when the request line is not one a client
    /// could send (hyper refuses it before the router).
    pub fn parse(data: &[u8]) -> Option<Self> {
        let (head, body) = match find(data, b"\n\n") {
            Some(i) => (&data[..i], &data[i + 2..]),
            None => (data, &[][..]),
        };
        let mut lines = head.split(|b| *b == b'\n');
        let line = std::str::from_utf8(lines.next()?).ok()?;
        let mut words = line.split(' ');
        let method = Method::from_bytes(words.next()?.as_bytes()).ok()?;
        let uri = words.next()?.to_owned();
        uri.parse::<axum::http::Uri>().ok()?;
        let headers = lines
            .filter_map(|l| {
                let i = l.iter().position(|b| *b == b':')?;
                let name = HeaderName::from_bytes(&l[..i]).ok()?;
                let value = HeaderValue::from_bytes(l[i + 1..].trim_ascii()).ok()?;
                Some((name, value))
            })
            .collect();
        Some(Self {
            method,
            uri,
            headers,
            body: body.to_vec(),
        })
    }

    fn request(&self) -> Option<Request<Body>> {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(&self.uri);
        let mut authorized = false;
        for (n, v) in &self.headers {
            authorized |= n == header::AUTHORIZATION;
            b = b.header(n, v);
        }
        if !authorized {
            b = b.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        }
        b.body(Body::from(self.body.clone())).ok()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What the kernel maps hold (the gate only at the local pods' addresses: reading all 65,536
/// entries per input would be most of the run).
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    targets: Vec<(TargetKey, TargetValue)>,
    rules: Vec<(u32, RuleKey, RuleValue)>,
    faults: Vec<(u32, FaultParams)>,
    remote: Vec<[u8; 16]>,
    gates: Vec<(u32, u8)>,
}

/// The pinned maps, opened as any other process would.
struct KernelMaps {
    targets: HashMap<MapData, TargetKey, TargetValue>,
    rules: LpmTrie<MapData, RuleKey, RuleValue>,
    faults: Array<MapData, FaultParams>,
    remote: HashMap<MapData, [u8; 16], u8>,
    gate: Array<MapData, u8>,
    gate_indices: Vec<u32>,
}

fn pinned(pins: &Pins, name: &str) -> Result<MapData> {
    let path = pins.maps_dir().join(name);
    MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
}

impl KernelMaps {
    fn open(pins: &Pins, local_ips: &[IpAddr]) -> Result<Self> {
        let gate_indices = local_ips
            .iter()
            .map(|ip| {
                let b = fault_agent::compile::addr16(*ip);
                u32::from(u16::from_be_bytes([b[14], b[15]]))
            })
            .collect();
        Ok(Self {
            targets: HashMap::try_from(Map::HashMap(pinned(pins, MAP_TARGETS)?))?,
            rules: LpmTrie::try_from(Map::LpmTrie(pinned(pins, MAP_RULES)?))?,
            faults: Array::try_from(Map::Array(pinned(pins, MAP_FAULTS)?))?,
            remote: HashMap::try_from(Map::HashMap(pinned(pins, MAP_REMOTE)?))?,
            gate: Array::try_from(Map::Array(pinned(pins, MAP_GATE)?))?,
            gate_indices,
        })
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let mut targets = self.targets.iter().collect::<Result<Vec<_>, _>>()?;
        targets.sort_by_key(|(k, _)| *k);
        let mut rules: Vec<(u32, RuleKey, RuleValue)> = self
            .rules
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.prefix_len(), k.data(), v)))
            .collect::<Result<_, _>>()?;
        rules.sort_by_key(|(l, k, _)| (*l, *k));
        let mut faults = Vec::new();
        for slot in 0..MAX_FAULTS {
            let p = self.faults.get(&slot, 0)?;
            if p != FaultParams::default() {
                faults.push((slot, p));
            }
        }
        let mut remote = self.remote.keys().collect::<Result<Vec<_>, _>>()?;
        remote.sort();
        let gates = self
            .gate_indices
            .iter()
            .map(|i| Ok((*i, self.gate.get(i, 0)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Snapshot {
            targets,
            rules,
            faults,
            remote,
            gates,
        })
    }
}

/// See the module docs.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    router: Router,
    core: Arc<Mutex<Core>>,
    maps: KernelMaps,
    baseline: Snapshot,
    topology: Topology,
    bpffs: PathBuf,
    state: PathBuf,
}

/// Removes the pin and state folders of harnesses whose process is gone.
fn reap_dead() {
    for dir in [BPFFS, "/tmp"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(PREFIX)
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The topology's pods as the agent sees them (what `standalone` discovers from the
/// inventory), and a pod of another host.
fn pods(topology: &Topology) -> Result<Vec<Pod>> {
    let host = discover::host_veths()?;
    let tpods = topology.pods();
    let paths: Vec<PathBuf> = tpods.iter().map(|p| p.netns_path()).collect();
    let mut out = Vec::new();
    for ((p, path), net) in tpods
        .iter()
        .zip(&paths)
        .zip(discover::pod_nets(&paths, &host))
    {
        let net = net?;
        out.push(Pod {
            namespace: p.namespace().into(),
            name: p.name().into(),
            labels: p.labels().clone(),
            node: None,
            ips: net.ips,
            host_ifs: net.host_ifs,
            netns: Some(path.clone()),
            pod_ifs: net.pod_ifs,
            problem: None,
            remote: false,
        });
    }
    out.push(Pod {
        namespace: "dynamo".into(),
        name: "vllm-prefill-1".into(),
        labels: [("app".to_owned(), "vllm-prefill".to_owned())].into(),
        node: Some("host-b".into()),
        ips: vec!["198.18.2.10".parse()?, "fd00:fa:2::a".parse()?],
        host_ifs: vec![],
        netns: None,
        pod_ifs: vec![],
        problem: None,
        remote: true,
    });
    Ok(out)
}

impl Harness {
    /// Makes the pods, loads and attaches the datapath, reads the baseline.
    pub fn new() -> Result<Self> {
        reap_dead();
        fault_testkit::agent::ensure_bpffs()?;
        let mut topology = Topology::named("fuzz")?;
        topology.dynamo()?;
        let pid = std::process::id();
        let bpffs = PathBuf::from(format!("{BPFFS}/{PREFIX}{pid}"));
        let state = PathBuf::from(format!("/tmp/{PREFIX}{pid}"));
        let caps = Capabilities::probe(false);
        let store = Store::open(&state, &kernel::boot_id(), kernel::boottime_ns()?)?;
        let pins = Pins::new(&bpffs);
        let dataplane = Dataplane::open(pins.clone(), &caps, vec![], vec![], 0x40)?;
        let config = CoreConfig {
            max_duration: MAX_DURATION,
            retention: Duration::ZERO,
            limits: fault_agent::capacity::Limits::default(),
            protection: fault_agent::protect::Protection::with_defaults(None, &[], &[], &[]),
            guards: Default::default(),
        };
        let core = Arc::new(Mutex::new(Core::new(store, dataplane, caps, config)));
        let pods = pods(&topology)?;
        let local_ips: Vec<IpAddr> = pods
            .iter()
            .filter(|p| p.is_local())
            .flat_map(|p| p.ips.clone())
            .collect();
        {
            let mut c = fault_agent::api::lock(&core);
            c.set_pods(pods)?;
            c.reconcile()?;
            anyhow::ensure!(
                c.attach_errors().is_empty(),
                "attaching: {:?}",
                c.attach_errors()
            );
        }
        let recorder = fault_agent::api::lock(&core).recorder().clone();
        let source = fault_agent::metrics::Source::Local {
            core: core.clone(),
            node: "fuzz".into(),
        };
        let state_arc = Arc::new(AppState {
            backend: Backend::Local {
                core: core.clone(),
                read_only: false,
                recorder: recorder.clone(),
                node: "fuzz".into(),
                steady: Default::default(),
            },
            changed: Arc::new(tokio::sync::Notify::new()),
            health: fault_agent::api::health::Health::ready_now(),
            inventory_error: Mutex::new(None),
            metrics: Arc::new(fault_agent::metrics::Metrics::new(recorder, Some(source))),
        });
        // The agent's limits, but no rate limit: the fuzzer sends thousands of requests a
        // second, and a 429 would hide what the request does.
        let limits = ApiLimits {
            rate_per_sec: 0,
            ..ApiLimits::default()
        };
        let router = router(state_arc, Some(Arc::from(TOKEN)), limits);
        let maps = KernelMaps::open(&pins, &local_ips)?;
        let baseline = maps.snapshot()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        Ok(Self {
            rt,
            router,
            core,
            maps,
            baseline,
            topology,
            bpffs,
            state,
        })
    }

    /// Sends one request; checks the answer, then that recovering everything leaves the
    /// kernel maps as they were.
    pub fn run(&mut self, input: &Input) {
        let Some(req) = input.request() else { return };
        let router = self.router.clone();
        let (status, body) = self.rt.block_on(async move {
            let res = router.oneshot(req).await.expect("the router is infallible");
            let status = res.status();
            let body = axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .expect("a response body");
            (status, body)
        });
        check_answer(input, status, &body);
        let mutating = input.method != Method::GET && status.is_success();
        let recovered = {
            let mut c = fault_agent::api::lock(&self.core);
            let ids = c
                .cleanup(None)
                .unwrap_or_else(|e| panic!("recovering every fault failed: {e}"));
            c.reconcile().expect("reconcile after the cleanup");
            assert!(c.list(None).is_empty(), "faults left after cleanup and gc");
            ids
        };
        if mutating || !recovered.is_empty() {
            let now = self.maps.snapshot().expect("reading the kernel maps");
            assert_eq!(
                now, self.baseline,
                "the kernel maps differ from before the request once every fault is recovered"
            );
        }
    }

    /// Removes everything the harness made (attachments, pins, pods, state).
    pub fn shutdown(self) {
        let Harness {
            rt,
            router,
            core,
            topology,
            bpffs,
            state,
            ..
        } = self;
        drop(router);
        drop(rt);
        match Arc::try_unwrap(core) {
            Ok(core) => {
                let core = core.into_inner().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = core.shutdown() {
                    eprintln!("fuzz harness: removing the datapath: {e:#}");
                }
            }
            Err(_) => eprintln!("fuzz harness: the core is still shared; pins removed below"),
        }
        drop(topology);
        let _ = std::fs::remove_dir_all(&state);
        let _ = std::fs::remove_dir_all(&bpffs);
    }
}

/// Statuses the API documents (`fault_api::error::ApiError`), and axum's 405.
const DOCUMENTED: &[u16] = &[200, 201, 400, 401, 403, 404, 405, 409, 413, 422];

fn check_answer(input: &Input, status: StatusCode, body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    let what = format!("{} {} -> {status}: {text}", input.method, input.uri);
    assert!(
        DOCUMENTED.contains(&status.as_u16()),
        "undocumented status: {what}"
    );
    if !status.is_success() {
        let e: ErrorBody = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("an error that is not an ErrorBody ({e}): {what}"));
        if matches!(status.as_u16(), 400 | 422) {
            assert!(
                e.error.field.as_deref().is_some_and(|f| !f.is_empty()),
                "a refused request without the field: {what}"
            );
        }
        return;
    }
    let path = input.uri.split('?').next().unwrap_or_default();
    if input.method == Method::POST && path == "/v1/faults" {
        let f: Fault = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {what}"));
        check_created(&f, &what);
    }
    if input.method == Method::POST && path == "/api/v1/faults/network/inject" {
        let f: SeedFault = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {what}"));
        check_created(&f.details, &what);
    }
}

/// A created fault is valid, live, and ends when asked (or at the agent's maximum).
fn check_created(f: &Fault, what: &str) {
    f.spec
        .validate()
        .unwrap_or_else(|e| panic!("created an invalid fault ({e}): {what}"));
    crate::check_spec_ranges(&f.spec);
    assert_eq!(f.state, fault_api::FaultState::Active, "{what}");
    let want = f.spec.duration.map_or(MAX_DURATION, |d| d.get());
    let got = f.expires_at.duration_since(f.created_at);
    let got = Duration::from_nanos(got.as_nanos().max(0) as u64);
    assert!(
        want <= MAX_DURATION,
        "a fault longer than --max-duration was created: {what}"
    );
    assert_eq!(got, want, "expires_at - created_at: {what}");
}

/// Runs at exit (libFuzzer ends a timed run with `exit`): removes what the harness made.
pub fn on_exit(h: &'static Mutex<Option<Harness>>) {
    static CELL: std::sync::OnceLock<&'static Mutex<Option<Harness>>> = std::sync::OnceLock::new();
    let _ = CELL.set(h);
    extern "C" fn cleanup() {
        if let Some(h) = CELL.get()
            && let Some(h) = h.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            h.shutdown();
        }
    }
    // SAFETY: registers a plain function with no arguments, as atexit(3) requires.
    unsafe {
        libc::atexit(cleanup);
    }
}
