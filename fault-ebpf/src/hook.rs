//! Where a program runs, and so what it can do to a packet.

/// The three attachment points of Faultline's programs.
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
}
