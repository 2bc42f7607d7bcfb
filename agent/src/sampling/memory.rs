//! A bounded map that forgets its oldest entries first: what the sampler remembers of the trees
//! it decided, for the spans that come after them.

use std::{collections::VecDeque, hash::Hash};

use rustc_hash::FxHashMap as HashMap;

/// At most `capacity` entries; inserting a new key past it forgets the first inserted. A key
/// inserted again keeps its place in line.
pub struct Memory<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Copy + Eq + Hash, V> Memory<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// Remembers `value` for `key`, replacing what was there.
    pub fn insert(&mut self, key: K, value: V) {
        if let Some(slot) = self.map.get_mut(&key) {
            *slot = value;
            return;
        }
        if self.map.len() >= self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.map.remove(&oldest);
        }
        self.map.insert(key, value);
        self.order.push_back(key);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_forgotten_first_and_a_replaced_key_keeps_its_place() {
        let mut memory = Memory::new(3);
        for key in 1..=3u64 {
            memory.insert(key, key * 10);
        }
        memory.insert(1, 11);
        assert_eq!(memory.get(&1), Some(&11));
        memory.insert(4, 40);
        assert_eq!(memory.len(), 3);
        assert_eq!(memory.get(&1), None, "first in, first out");
        assert_eq!(memory.get(&2), Some(&20));
        assert_eq!(memory.get(&4), Some(&40));
        for key in 5..100 {
            memory.insert(key, 0);
        }
        assert_eq!(memory.len(), 3);
        assert!(!memory.is_empty());
    }
}
