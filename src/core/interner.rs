//! Interned strings: the core keys windows by small integers and resolves names only when it
//! emits a record.

use std::sync::Arc;

use rustc_hash::FxHashMap;

#[derive(Debug, Default)]
pub struct Interner {
    ids: FxHashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 distinct strings");
        let name: Arc<str> = Arc::from(s);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    pub fn name(&self, id: u32) -> &Arc<str> {
        &self.names[id as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The rank of each id's string in byte order (`ranks()[id]`): comparing ranks orders by
    /// name without touching the strings.
    pub fn ranks(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..self.names.len() as u32).collect();
        ids.sort_unstable_by(|a, b| self.names[*a as usize].cmp(&self.names[*b as usize]));
        let mut ranks = vec![0; ids.len()];
        for (rank, id) in ids.into_iter().enumerate() {
            ranks[id as usize] = rank as u32;
        }
        ranks
    }

    /// Every string, in id order: interning them in this order again gives the same ids.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_order_ids_by_name() {
        let mut i = Interner::default();
        let ids: Vec<u32> = ["b", "a", "c", "ab"].iter().map(|s| i.intern(s)).collect();
        let r = i.ranks();
        assert_eq!([r[ids[1] as usize], r[ids[3] as usize], r[ids[0] as usize], r[ids[2] as usize]], [0, 1, 2, 3]);
    }
}
