//! A bounded map that forgets its oldest entries first: what the sampler remembers of the trees
//! it decided, for the spans that come after them.
//!
//! Two generations: new keys go into the recent one; once it holds half the capacity, the older
//! one is forgotten whole and the recent one becomes it. So the last `capacity / 2` keys are
//! always remembered and never more than `capacity`, and an insert costs one hash-map insert,
//! not an insert and the removal of the oldest (a cache miss in a table of 65,536, per request).

use std::hash::Hash;

use rustc_hash::FxHashMap as HashMap;

/// At most `capacity` entries, at least the last `capacity / 2` inserted; what is forgotten is
/// the oldest generation. A key inserted again keeps its place (its generation).
pub struct Memory<K, V> {
    recent: HashMap<K, V>,
    older: HashMap<K, V>,
    /// Entries a generation holds.
    generation: usize,
}

impl<K: Copy + Eq + Hash, V> Memory<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            recent: HashMap::default(),
            older: HashMap::default(),
            generation: (capacity / 2).max(1),
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.recent.get(key).or_else(|| self.older.get(key))
    }

    /// Remembers `value` for `key`, replacing what was there.
    pub fn insert(&mut self, key: K, value: V) {
        if let Some(slot) = self.recent.get_mut(&key) {
            *slot = value;
            return;
        }
        if let Some(slot) = self.older.get_mut(&key) {
            *slot = value;
            return;
        }
        if self.recent.len() >= self.generation {
            // The older generation goes; its table is kept for the next one.
            std::mem::swap(&mut self.recent, &mut self.older);
            self.recent.clear();
        }
        self.recent.insert(key, value);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.recent.len() + self.older.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_generation_is_forgotten_first_and_a_replaced_key_keeps_its_place() {
        let mut memory = Memory::new(4);
        for key in 1..=4u64 {
            memory.insert(key, key * 10);
        }
        memory.insert(1, 11);
        assert_eq!(memory.get(&1), Some(&11), "replaced in place");
        assert_eq!(memory.len(), 4);
        // 5 starts a generation: 1 and 2 (the oldest) are forgotten, 3 and 4 kept.
        memory.insert(5, 50);
        assert_eq!(memory.len(), 3);
        assert_eq!(memory.get(&1), None, "first in, first out");
        assert_eq!(memory.get(&2), None);
        assert_eq!(memory.get(&3), Some(&30));
        assert_eq!(memory.get(&5), Some(&50));
        for key in 6..100 {
            memory.insert(key, 0);
            assert!(memory.len() <= 4, "never past the capacity");
            // The last two inserted are always there.
            assert!(memory.get(&key).is_some() && memory.get(&(key - 1)).is_some());
        }
        assert!(!memory.is_empty());
    }
}
