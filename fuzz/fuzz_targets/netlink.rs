//! Netlink replies the agent parses: one datagram of a dump's answer (links, addresses,
//! routes, as the kernel sends them for request 1), through `rtdump::parse_dump_part`, then
//! what discovery and uplink detection make of the messages.
//!
//! Properties: bytes never panic or loop; a veth always has a peer; a pod's addresses are
//! sorted, unique and each on one of its veths; a host-side interface is only trusted when
//! the peering holds both ways; an uplink is an up link, never a pod's host veth.
#![no_main]

use std::{collections::BTreeSet, path::Path};

use fault_agent::{discover, rtdump, uplinks};
use libfuzzer_sys::fuzz_target;
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::AddressAttribute,
    link::{LinkFlags, LinkMessage},
};

fn interpret(msgs: &[RouteNetlinkMessage]) {
    let (veths, ips) = discover::pod_side_from(msgs, msgs);
    assert!(veths.iter().all(|v| v.peer_index != 0));
    assert!(ips.is_sorted() && ips.windows(2).all(|w| w[0] != w[1]));
    for ip in &ips {
        let on_a_veth = msgs.iter().any(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => {
                veths.iter().any(|v| v.index == a.header.index)
                    && a.attributes.contains(&AddressAttribute::Address(*ip))
            }
            _ => false,
        });
        assert!(on_a_veth, "{ip} is on no veth");
    }
    let host = discover::host_veths_from(msgs);
    if let Ok(net) = discover::pod_net_from((veths.clone(), ips.clone()), Path::new("/fuzz"), &host)
    {
        assert_eq!(net.ips, ips);
        assert!(!net.host_ifs.is_empty());
        for h in &net.host_ifs {
            let (name, peer) = &host[&h.index];
            assert_eq!(name, &h.name);
            assert!(
                veths
                    .iter()
                    .any(|v| v.index == *peer && v.peer_index == h.index)
            );
        }
    }
    let links: Vec<LinkMessage> = msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l.clone()),
            _ => None,
        })
        .collect();
    let defaults = uplinks::default_route_ifs_from(msgs);
    let pod_host_ifs: BTreeSet<String> = host.values().map(|(n, _)| n.clone()).collect();
    for (name, index) in uplinks::auto_from(&links, &defaults, &pod_host_ifs) {
        assert!(
            !pod_host_ifs.contains(&name),
            "pod veth {name} taken as an uplink"
        );
        assert!(
            links.iter().any(|l| l.header.index == index
                && l.header.flags.contains(LinkFlags::Up)
                && !l.header.flags.contains(LinkFlags::Loopback)),
            "{name} ({index}) is not an up, non-loopback link"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut msgs = Vec::new();
    // An error (not netlink, or NLMSG_ERROR) ends the dump; what parsed before it is kept by
    // no caller, but interpreting it must be safe too.
    let _ = rtdump::parse_dump_part(data, 1, &mut msgs);
    interpret(&msgs);
});
