//! CIDRs: `to_cidrs` (JSON), `--to-cidr`, NetworkFault `toCidrs`, and what the agent makes of
//! an accepted one (its 16-byte LPM key, longest-prefix queries).
//!
//! Input: one or two CIDRs separated by a comma. Properties: an accepted CIDR prints back to
//! itself; a spec holding it is valid exactly when it has no host bits, and the error names
//! `to_cidrs[0]` (`spec.toCidrs[0]` on a NetworkFault) and suggests the truncated prefix;
//! the LPM key is the network in IPv4-mapped form with the length offset by 96 for IPv4;
//! longest-prefix containment agrees with plain containment.
#![no_main]

use fault_agent::{
    compile::prefix16,
    kube::crd::{NetworkFault, NetworkFaultSpec},
    prefixes::PrefixSet,
};
use fault_api::{FaultSpec, PartitionMode};
use fault_fuzz::{json_round_trip, round_trip, text};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

fn spec_with(cidrs: Vec<IpNet>) -> FaultSpec {
    let mut s = FaultSpec::new("fuzz");
    s.pod_prefix = Some("p".into());
    s.partition = Some(PartitionMode::Packets);
    s.to_cidrs = cidrs;
    s
}

fn crd_with(cidr: &str) -> NetworkFault {
    let mut nf = NetworkFault::new("f", NetworkFaultSpec::from_fault_spec(&spec_with(vec![])));
    nf.metadata.namespace = Some("fuzz".into());
    nf.spec.to_cidrs = vec![cidr.to_owned()];
    nf
}

fn check_key(net: &IpNet) {
    let (bytes, len) = prefix16(net);
    match net {
        IpNet::V4(n) => {
            assert_eq!(len, 96 + u32::from(n.prefix_len()));
            assert_eq!(&bytes[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
            assert_eq!(&bytes[12..], &n.network().octets());
        }
        IpNet::V6(n) => {
            assert_eq!(len, u32::from(n.prefix_len()));
            assert_eq!(bytes, n.network().octets());
        }
    }
    assert!(len <= 128);
}

fn one(t: &str) -> Option<IpNet> {
    let crd = crd_with(t).fault_spec();
    let Ok(net) = t.parse::<IpNet>() else {
        let e = crd.expect_err("a CIDR ipnet refuses was accepted in a NetworkFault");
        assert_eq!(e.field, "spec.toCidrs[0]", "{t:?}: {e}");
        return None;
    };
    round_trip(&net);
    json_round_trip(&net);
    check_key(&net);
    let valid = spec_with(vec![net]).validate();
    if net.trunc() == net {
        valid.expect("a CIDR without host bits was refused");
        crd.expect("a CIDR without host bits was refused in a NetworkFault");
    } else {
        let e = valid.expect_err("a CIDR with host bits was accepted");
        assert_eq!(e.field, "to_cidrs[0]");
        assert!(e.message.contains(&net.trunc().to_string()), "{e}");
        let e = crd.expect_err("a CIDR with host bits was accepted in a NetworkFault");
        assert_eq!(e.field, "spec.toCidrs[0]");
    }
    Some(net)
}

fuzz_target!(|data: &[u8]| {
    let t = text(data);
    let mut parts = t.splitn(2, ',');
    let a = parts.next().and_then(one);
    let b = parts.next().and_then(one);
    if let (Some(a), Some(b)) = (a, b) {
        let set = PrefixSet::of([a]);
        let contains = a.trunc().contains(&b.trunc());
        assert_eq!(set.contains(&b.trunc()), contains, "{a} contains {b}?");
        let longest = set.longest(&b.trunc());
        assert_eq!(longest, contains.then(|| a.prefix_len()), "{a} in {b}");
        assert_eq!(set.contains_addr(b.addr()), a.trunc().contains(&b.addr()));
    }
});
