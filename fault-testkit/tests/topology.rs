//! The harness measures nothing of its own: with no agent, streams arrive whole, and what it
//! creates is gone after it is dropped.
use std::time::Duration;

use fault_testkit::{
    Family, StreamOpts, Topology,
    probe::{TcpEchoServer, tcp_echo_roundtrip, udp_reachable, udp_stream},
    topology::{link_exists, netns_names},
};

#[test]
fn pods_talk_and_streams_arrive_whole_then_everything_goes() {
    let _serial = fault_testkit::serial();
    let mut topo = Topology::new().unwrap();
    let a = topo.add_pod("ns", "a", &[("app", "a")]).unwrap();
    let b = topo.add_pod("ns", "b", &[("app", "b")]).unwrap();
    let c = topo.add_pod("other", "c", &[]).unwrap();
    for fam in [Family::V4, Family::V6] {
        assert!(udp_reachable(&a, &b, fam, 5000, Duration::from_secs(2)).unwrap(), "{fam:?}");
        assert!(udp_reachable(&c, &a, fam, 5000, Duration::from_secs(2)).unwrap(), "{fam:?}");
        let _echo = TcpEchoServer::start(&b, fam, 7000).unwrap();
        assert!(tcp_echo_roundtrip(&a, &b, fam, 7000, Duration::from_secs(2)).unwrap());
    }
    let r = udp_stream(&a, &b, Family::V4, &StreamOpts { count: 5_000, ..Default::default() }).unwrap();
    assert_eq!((r.sent, r.received, r.corrupted, r.duplicates), (5_000, 5_000, 0, 0), "{r}");
    let r = udp_stream(&b, &a, Family::V6, &StreamOpts { count: 5_000, ..Default::default() }).unwrap();
    assert_eq!((r.sent, r.received, r.corrupted, r.duplicates), (5_000, 5_000, 0, 0), "{r}");

    let names: Vec<String> = topo.pods().iter().map(|p| p.netns_name().to_owned()).collect();
    let links: Vec<String> = topo.pods().iter().map(|p| p.host_ifname().to_owned()).collect();
    let bridge = topo.bridge().to_owned();
    drop(topo);
    let left = netns_names();
    assert!(names.iter().all(|n| !left.contains(n)), "namespaces left: {left:?}");
    assert!(links.iter().chain([&bridge]).all(|l| !link_exists(l)), "links left");
}
