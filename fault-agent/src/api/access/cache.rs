//! A small map whose entries expire after a fixed time and whose size is bounded: the cache of
//! positive `TokenReview` and `SubjectAccessReview` answers. The caller passes the time, so
//! the bounds are tested without waiting.
use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// See the module docs. At most `capacity` entries; each is served for `ttl` after insertion.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<K, (V, Instant)>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache of at most `capacity` (at least 1) entries living `ttl` each.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// The value of `key` if it was inserted less than `ttl` before `now`; an expired entry is
    /// dropped.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        let (v, at) = self.entries.get(key)?;
        if now.saturating_duration_since(*at) < self.ttl {
            return Some(v.clone());
        }
        self.entries.remove(key);
        None
    }

    /// Inserts `value` at `now`. When full, expired entries go first, then the oldest one.
    pub fn insert(&mut self, key: K, value: V, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (value, now));
    }

    /// Entries held (expired ones included until touched).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn entries_are_served_until_their_ttl_then_dropped() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(4, TTL);
        c.insert("a", 1, t0);
        assert_eq!(c.get(&"a", t0 + TTL - Duration::from_millis(1)), Some(1));
        assert_eq!(c.get(&"a", t0 + TTL), None);
        assert!(c.is_empty(), "the expired entry is dropped when read");
    }

    #[test]
    fn the_size_never_passes_the_capacity_and_the_oldest_goes_first() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(3, TTL);
        for i in 0..10u32 {
            c.insert(i, i, t0 + Duration::from_millis(u64::from(i)));
            assert!(c.len() <= 3, "after {i}: {}", c.len());
        }
        let at = t0 + Duration::from_millis(20);
        assert_eq!(c.get(&9, at), Some(9));
        assert_eq!(c.get(&7, at), Some(7));
        assert_eq!(c.get(&6, at), None, "evicted as the oldest");
    }

    #[test]
    fn expired_entries_make_room_before_live_ones() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(2, TTL);
        c.insert("old", 0, t0);
        c.insert("live", 1, t0 + TTL);
        c.insert("new", 2, t0 + TTL + Duration::from_secs(1));
        let at = t0 + TTL + Duration::from_secs(1);
        assert_eq!(c.get(&"live", at), Some(1));
        assert_eq!(c.get(&"new", at), Some(2));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn replacing_a_key_in_a_full_cache_evicts_nothing() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(2, TTL);
        c.insert("a", 1, t0);
        c.insert("b", 2, t0);
        c.insert("a", 3, t0);
        assert_eq!((c.get(&"a", t0), c.get(&"b", t0)), (Some(3), Some(2)));
    }
}
