//! Blast radius (Chaos Mesh's `mode`/`value`): how many of the pods a fault's targets match it
//! acts on, and which, chosen at random once when the fault is created. The choice is kept
//! (standalone: in the fault's record; cluster: in the `NetworkFault` status) so it stays the
//! same across reconciles and restarts; a chosen pod that goes away is not replaced.
use fault_api::{BlastRadius, FaultSpec, PodRef, TargetMode};

/// How many of `n` matching pods `mode` picks; `draw(k)` returns a uniform integer in
/// `[0, k)` (used by `random-max-percent` only). Zero only when `n` is zero.
pub fn count(
    mode: TargetMode,
    value: Option<u32>,
    n: usize,
    draw: &mut impl FnMut(usize) -> usize,
) -> usize {
    match mode {
        TargetMode::RandomMaxPercent if n > 0 => 1 + draw(upper_bound(mode, value, n)),
        _ => upper_bound(mode, value, n),
    }
}

/// The most pods `mode` can pick out of `n`: what `--max-targets` is checked against, so that
/// a random mode is accepted or refused the same way every time.
pub fn upper_bound(mode: TargetMode, value: Option<u32>, n: usize) -> usize {
    let v = value.unwrap_or(0) as usize;
    let percent = || (n * v / 100).max(1);
    match (mode, n) {
        (_, 0) => 0,
        (TargetMode::All, _) => n,
        (TargetMode::One, _) => 1,
        (TargetMode::Fixed, _) => v.min(n),
        (TargetMode::FixedPercent | TargetMode::RandomMaxPercent, _) => percent().min(n),
    }
}

/// A uniform integer in `[0, k)` from the OS RNG (`k >= 1`); the modulo bias of a 64-bit
/// draw is below 2^-40 for any pod count.
pub fn os_draw(k: usize) -> usize {
    let mut raw = [0u8; 8];
    if getrandom::fill(&mut raw).is_err() {
        // No OS RNG: the clock's low bits still spread the choice.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        raw[..4].copy_from_slice(&t.to_le_bytes());
    }
    (u64::from_le_bytes(raw) % k.max(1) as u64) as usize
}

/// The choice for `spec` among `candidates` (its targets, protected pods left out), or `None`
/// for `mode: all`. The chosen names (`namespace/name`) are sorted.
pub fn choose(
    spec: &FaultSpec,
    candidates: &[PodRef],
    draw: &mut impl FnMut(usize) -> usize,
) -> Option<BlastRadius> {
    if spec.mode.is_all() {
        return None;
    }
    let mut names: Vec<String> = candidates
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    names.sort();
    names.dedup();
    let k = count(spec.mode, spec.value, names.len(), draw);
    // Partial Fisher-Yates: the first k are a uniform sample.
    for i in 0..k {
        let j = i + draw(names.len() - i);
        names.swap(i, j);
    }
    names.truncate(k);
    names.sort();
    Some(BlastRadius {
        mode: spec.mode,
        value: spec.value,
        candidates: candidates.len() as u32,
        chosen: names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_each_mode() {
        use TargetMode::*;
        let mut first = |_: usize| 0;
        for (mode, value, n, want) in [
            (All, None, 7, 7),
            (One, None, 7, 1),
            (One, None, 0, 0),
            (Fixed, Some(3), 7, 3),
            (Fixed, Some(30), 7, 7),
            (FixedPercent, Some(50), 7, 3),
            (FixedPercent, Some(10), 7, 1),
            (FixedPercent, Some(100), 7, 7),
            (RandomMaxPercent, Some(50), 7, 1),
        ] {
            assert_eq!(
                count(mode, value, n, &mut first),
                want,
                "{mode} {value:?} {n}"
            );
        }
        let mut last = |k: usize| k - 1;
        assert_eq!(count(RandomMaxPercent, Some(50), 7, &mut last), 3);
        assert_eq!(upper_bound(RandomMaxPercent, Some(50), 7), 3);
    }

    #[test]
    fn a_choice_names_distinct_candidates() {
        let pods: Vec<PodRef> = (0..6)
            .map(|i| PodRef {
                namespace: "dynamo".into(),
                name: format!("w-{i}"),
                ips: vec![],
                node: None,
            })
            .collect();
        let mut spec = FaultSpec::new("dynamo");
        spec.mode = TargetMode::Fixed;
        spec.value = Some(4);
        let b = choose(&spec, &pods, &mut os_draw).unwrap();
        assert_eq!(b.chosen.len(), 4);
        assert_eq!(b.candidates, 6);
        let mut d = b.chosen.clone();
        d.dedup();
        assert_eq!(d, b.chosen);
        spec.mode = TargetMode::All;
        spec.value = None;
        assert!(choose(&spec, &pods, &mut os_draw).is_none());
    }
}
