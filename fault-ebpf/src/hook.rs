//! Where a program runs, and so what it can do to a packet.

/// The attachment points of Faultline's programs.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Hook {
    /// tc ingress of the host veth (what the local pod sends): drop, corrupt, duplicate. No
    /// qdisc follows an ingress hook, so departure times are set on the pod side instead. The
    /// only hook that sets the evaluated mark (`crate::mark`).
    HostIngress,
    /// tc egress of the host veth (what the local pod receives): everything; the host veth's
    /// fq enforces departure times. Skips packets the sender's hook evaluated.
    HostEgress,
    /// tc egress of the pod's own interface (what the local pod sends): departure times only,
    /// for its fq; the host side does the rest.
    PodEgress,
    /// tc egress of a node uplink (what local pods send to other nodes, after the node's NAT):
    /// what their host veth could not judge (not marked): drop, corrupt, duplicate; no
    /// departure times (no fq there).
    Uplink,
}

impl Hook {
    /// Whether packets leave the local pod here, on the host side: the hooks that judge a
    /// packet first on a node and mark it evaluated.
    #[inline(always)]
    pub fn is_sender_side(self) -> bool {
        matches!(self, Hook::HostIngress | Hook::Uplink)
    }

    /// Whether an fq qdisc follows the hook, so that departure times are enforced.
    #[inline(always)]
    pub fn sets_departure(self) -> bool {
        matches!(self, Hook::HostEgress | Hook::PodEgress)
    }
}
