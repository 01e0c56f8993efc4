//! The maps, all pinned by name so that they outlive an agent restart (the agent pins them
//! under its own bpffs folder through `EbpfLoader::map_pin_path`).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use fault_common::{
    CONTROL_ENTRIES, FaultParams, FaultStats, GATE_ENTRIES, MAX_FAULTS, MAX_RATE, MAX_REMOTE,
    MAX_RULES, MAX_TARGETS, RateKey, RateState, RuleKey, RuleValue, TargetKey, TargetValue,
    ct::{CtKey, CtValue, MAX_CT},
};

/// Address suffix -> directions with targets. See `fault_common::MAP_GATE`.
#[map(name = "FL_GATE")]
pub static FL_GATE: Array<u8> = Array::pinned(GATE_ENTRIES, 0);

/// (pod address, direction) -> policy. See `fault_common::MAP_TARGETS`.
#[map(name = "FL_TARGETS")]
pub static FL_TARGETS: HashMap<TargetKey, TargetValue> = HashMap::pinned(MAX_TARGETS, 0);

/// (policy, protocol, peer port, peer prefix) -> fault slots. See `fault_common::MAP_RULES`.
#[map(name = "FL_RULES")]
pub static FL_RULES: LpmTrie<RuleKey, RuleValue> = LpmTrie::pinned(MAX_RULES, 0);

/// Addresses of pods on other nodes (whose agents judge what they send). See
/// `fault_common::MAP_REMOTE`. Not preallocated (`BPF_F_NO_PREALLOC`): its memory follows the
/// pods it holds, and it is read only on the path of packets that have faults.
#[map(name = "FL_REMOTE")]
pub static FL_REMOTE: HashMap<[u8; 16], u8> =
    HashMap::pinned(MAX_REMOTE, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// slot -> fault parameters. See `fault_common::MAP_FAULTS`.
#[map(name = "FL_FAULTS")]
pub static FL_FAULTS: Array<FaultParams> = Array::pinned(MAX_FAULTS, 0);

/// slot -> per-CPU counters. See `fault_common::MAP_STATS`.
#[map(name = "FL_STATS")]
pub static FL_STATS: PerCpuArray<FaultStats> = PerCpuArray::pinned(MAX_FAULTS, 0);

/// Flows the peer opened, for connection-aware partitions. See `fault_common::ct`.
#[map(name = "FL_CT")]
pub static FL_CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_CT, 0);

/// Rate limiters' next departure times. See `fault_common::MAP_RATE`.
#[map(name = "FL_RATE")]
pub static FL_RATE: LruHashMap<RateKey, RateState> = LruHashMap::pinned(MAX_RATE, 0);

/// Switches the agent sets, e.g. the kill switch. See `fault_common::MAP_CONTROL`.
#[map(name = "FL_CONTROL")]
pub static FL_CONTROL: Array<u32> = Array::pinned(CONTROL_ENTRIES, 0);

/// Per-CPU scratch space for the packet being classified (the BPF stack is 512 bytes, shared
/// with the per-fault subprogram). See `crate::scratch`.
#[map(name = "FL_SCRATCH")]
pub static FL_SCRATCH: PerCpuArray<crate::scratch::Scratch> = PerCpuArray::with_max_entries(1, 0);
