//! HTTPS on a real standalone agent (`--tls-cert-file`, `--tls-key-file`, `--tls-dir`), with
//! a CA and a server certificate made by `openssl` at test time: a client that trusts the CA
//! creates and lists a fault that drops real packets (a UDP stream between two pods'
//! network namespaces); plain HTTP to the port and a client that does not trust the CA get
//! nothing; faultctl reaches it with `--ca-file`; a renewed certificate is served without a
//! restart.
mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use fault_api::{FaultSpec, PartitionMode, client::Client};
use fault_testkit::{
    AgentBuilder, Family, StreamOpts, Topology, probe::udp_stream, serial, tls::TestCerts,
};

/// What a plain-HTTP request to `addr` gets back (empty when the connection is closed).
fn plain_http_answer(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("the port accepts TCP");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!("GET /v1/faults HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    // The server may close before or after the write; either way no HTTP answer comes.
    let _ = s.write_all(req.as_bytes());
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn https_with_the_ca_creates_a_fault_that_drops_packets_and_nothing_else_gets_in() {
    let _s = serial();
    let certs = TestCerts::new("faultline-test-ca").unwrap();
    let mut topo = Topology::named("dynamo").unwrap();
    let pods = topo.dynamo().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.yaml");
    topo.write_inventory(&inventory).unwrap();
    let agent = AgentBuilder::standalone(&inventory)
        .tls(&certs)
        .start()
        .unwrap();
    let url = agent.api_url();
    assert!(url.starts_with("https://"), "{url}");

    // Trusting the CA: create, list, and the fault acts on packets.
    let client = agent.client();
    let mut spec = FaultSpec::new("dynamo");
    spec.pod_prefix = Some("vllm-decode-0".into());
    spec.partition = Some(PartitionMode::Packets);
    let f = client.create(&spec).expect("HTTPS create with the CA");
    let listed = client.list(None).expect("HTTPS list with the CA");
    assert!(listed.faults.iter().any(|l| l.id == f.id), "{listed:?}");
    let opts = StreamOpts {
        count: 500,
        ..Default::default()
    };
    let r = udp_stream(&pods.decode0, &pods.frontend, Family::V4, &opts).unwrap();
    eprintln!("partitioned over HTTPS: {r}");
    assert_eq!(r.received, 0, "{r}");

    // Plain HTTP to the TLS port: no HTTP answer, the fault list is not disclosed.
    let answer = plain_http_answer(agent.listen_addr());
    eprintln!("plain HTTP got {} bytes: {answer:?}", answer.len());
    assert!(!answer.contains("HTTP/1.1 200") && !answer.contains(&f.id));
    let plain = Client::new(&url.replacen("https://", "http://", 1));
    assert!(plain.list(None).is_err());

    // A client that does not trust the CA (the system's roots; another CA): refused.
    let untrusting = Client::new(&url).list(None).unwrap_err();
    eprintln!("system roots: {untrusting}");
    assert!(
        untrusting
            .to_string()
            .to_lowercase()
            .contains("certificate")
    );
    let other = TestCerts::new("another-ca").unwrap();
    let pem = std::fs::read(other.ca()).unwrap();
    let e = Client::new(&url)
        .with_ca_pem(&pem)
        .unwrap()
        .list(None)
        .unwrap_err();
    eprintln!("another CA: {e}");
    assert!(e.to_string().to_lowercase().contains("certificate"));

    // faultctl with --ca-file (added by the testkit) recovers it; traffic is whole again.
    let out = common::ctl(&agent, &["recover", &f.id]);
    eprintln!("{out}");
    let r = udp_stream(&pods.decode0, &pods.frontend, Family::V4, &opts).unwrap();
    assert_eq!(r.received, r.sent, "{r}");
    // And faultctl without it does not get in.
    let out = fault_testkit::faultctl(&url, &["list"]).unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    eprintln!(
        "faultctl without --ca-file: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A renewed certificate (another CA's, as a Secret update writes it) is served without a
    // restart, within the reload period.
    let renewed = TestCerts::new("renewed-ca").unwrap();
    std::fs::copy(renewed.key(), certs.key()).unwrap();
    std::fs::copy(renewed.cert(), certs.cert()).unwrap();
    let trusts_renewed = Client::new(&url)
        .with_ca_pem(&std::fs::read(renewed.ca()).unwrap())
        .unwrap();
    let start = std::time::Instant::now();
    while trusts_renewed.list(None).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "renewed certificate not served: {}",
            agent.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("renewed certificate served after {:?}", start.elapsed());
    assert!(
        agent.client().list(None).is_err(),
        "the old CA no longer matches"
    );

    drop(agent);
    drop(topo);
}

#[test]
fn tls_flags_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.yaml");
    std::fs::write(&inventory, "pods: []\n").unwrap();
    let bin = fault_testkit::bin_path("fault-agent").unwrap();
    let inv = inventory.display().to_string();
    let out = std::process::Command::new(&bin)
        .args([
            "standalone",
            "--inventory",
            &inv,
            "--tls-cert-file",
            "/x.crt",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(
        !out.status.success() && err.contains("--tls-key-file"),
        "{err}"
    );
    // Only one of the two files in --tls-dir: refused, naming the missing one.
    let certs = TestCerts::new("faultline-test-ca").unwrap();
    let half = tempfile::tempdir().unwrap();
    std::fs::copy(certs.cert(), half.path().join("tls.crt")).unwrap();
    let out = std::process::Command::new(&bin)
        .args(["standalone", "--inventory", &inv, "--tls-dir"])
        .arg(half.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(!out.status.success() && err.contains("--tls-dir") && err.contains("tls.key"));
}
