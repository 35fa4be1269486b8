//! Hash maps for the hot path. std's `HashMap` hashes with SipHash-1-3, which was 7 % of the
//! standalone's instructions in the rooms scenario (callgrind, docs/benchmarks.md,
//! 2026-12-07): every message looks up its session, stream, record and channel by string.
//! These maps hash with foldhash (the hasher hashbrown itself defaults to), seeded per
//! process and per map, so keys a client chooses (session ids) cannot be made to collide
//! without knowing the seed (decision 26).

/// A `HashMap` with foldhash; make one with `Map::default()`.
pub type Map<K, V> = std::collections::HashMap<K, V, State>;
/// A `HashSet` with foldhash; make one with `Set::default()`.
pub type Set<T> = std::collections::HashSet<T, State>;
/// The hasher's seed, random per instance.
pub type State = foldhash::fast::RandomState;
