//! Compact indexes of key links. Key links are random UUIDs, so their first 16 bits split a
//! sorted array of them into 65,536 even runs: a directory of where each run starts (256 KiB)
//! makes a lookup a search in a run of a few links, at 16 bytes a link plus what the entries
//! carry. A `HashMap` or `HashSet` of the same entries takes two to three times that once its
//! buckets have doubled, and both tables while it grows: at 10M rows and 953k keys that was most
//! of the memory `keylink decrypt` and a job with a fixed key group grew by.

use std::collections::HashSet;
use std::ops::Range;

/// Where the links of each 16-bit prefix start in an array sorted by link.
#[derive(Debug, Default)]
pub(crate) struct Directory(Vec<u32>);

impl Directory {
    /// The directory of `sorted` (ascending).
    pub(crate) fn new(sorted: impl Iterator<Item = u128>) -> Self {
        let mut starts = Vec::with_capacity((1 << 16) + 1);
        let mut next_prefix = 0u32;
        let mut i = 0u32;
        for link in sorted {
            let prefix = (link >> 112) as u32;
            while next_prefix <= prefix {
                starts.push(i);
                next_prefix += 1;
            }
            i += 1;
        }
        while next_prefix <= 1 << 16 {
            starts.push(i);
            next_prefix += 1;
        }
        Directory(starts)
    }

    /// The range of the sorted array where `link` would be.
    pub(crate) fn run(&self, link: u128) -> Range<usize> {
        if self.0.is_empty() {
            return 0..0;
        }
        let p = (link >> 112) as usize;
        self.0[p] as usize..self.0[p + 1] as usize
    }
}

/// A set of key links that grows: the links inserted lately in a hash set, the others in a sorted
/// array with its [`Directory`], merged into it every [`LinkSet::RECENT`] links. ~16 bytes a
/// link (up to twice that while the array's capacity doubles), instead of ~38 in a `HashSet`.
#[derive(Debug)]
pub(crate) struct LinkSet {
    sorted: Vec<u128>,
    directory: Directory,
    recent: HashSet<u128, crate::privacy::FastHash>,
    /// [`LinkSet::RECENT`], smaller in tests.
    recent_max: usize,
}

impl Default for LinkSet {
    fn default() -> Self {
        LinkSet {
            sorted: Vec::new(),
            directory: Directory::default(),
            recent: HashSet::default(),
            recent_max: Self::RECENT,
        }
    }
}

impl LinkSet {
    /// Links kept in the hash set before they are merged into the sorted array: the merge
    /// rewrites the array, so it should be rare; the hash set costs ~40 bytes a link.
    const RECENT: usize = 1 << 15;

    /// Whether `link` is in the sorted array.
    fn in_sorted(&self, link: u128) -> bool {
        self.sorted[self.directory.run(link)]
            .binary_search(&link)
            .is_ok()
    }

    /// Whether `link` is in the set.
    pub(crate) fn contains(&self, link: u128) -> bool {
        self.in_sorted(link) || self.recent.contains(&link)
    }

    /// Adds `link`; whether it was not there yet.
    pub(crate) fn insert(&mut self, link: u128) -> bool {
        if self.in_sorted(link) || !self.recent.insert(link) {
            return false;
        }
        if self.recent.len() >= self.recent_max {
            self.merge();
        }
        true
    }

    /// Links in the set.
    pub(crate) fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// Moves the recent links into the sorted array, merging from its end (no second array).
    fn merge(&mut self) {
        let mut new: Vec<u128> = self.recent.drain().collect();
        new.sort_unstable();
        let old = self.sorted.len();
        self.sorted.resize(old + new.len(), 0);
        let (mut i, mut j) = (old, new.len());
        for k in (0..self.sorted.len()).rev() {
            if j == 0 {
                break; // the rest of the old links are in place
            }
            if i > 0 && self.sorted[i - 1] > new[j - 1] {
                self.sorted[k] = self.sorted[i - 1];
                i -= 1;
            } else {
                self.sorted[k] = new[j - 1];
                j -= 1;
            }
        }
        self.directory = Directory::new(self.sorted.iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Links from a few prefixes (long runs), from all of them, and from the first and last.
    fn link() -> impl Strategy<Value = u128> {
        prop_oneof![
            any::<u128>(),
            (0..3u128, any::<u64>()).prop_map(|(p, r)| (p << 112) | r as u128),
            any::<u64>().prop_map(|r| (0xffffu128 << 112) | r as u128),
            (0..50u128).prop_map(|r| r << 100),
        ]
    }

    proptest! {
        /// The directory's run for a link holds every sorted link of its prefix, and only those.
        #[test]
        fn a_directory_runs_are_the_prefixes(
            links in proptest::collection::btree_set(link(), 0..300),
            probe in link(),
        ) {
            let sorted: Vec<u128> = links.iter().copied().collect();
            let d = Directory::new(sorted.iter().copied());
            let run = d.run(probe);
            let same: Vec<usize> = (0..sorted.len())
                .filter(|&i| sorted[i] >> 112 == probe >> 112)
                .collect();
            prop_assert_eq!(run.clone().collect::<Vec<_>>(), same);
        }

        /// A link set answers like a `BTreeSet`, across merges.
        #[test]
        fn a_link_set_is_a_set(
            links in proptest::collection::vec(link(), 0..400),
            recent_max in 1..9usize,
        ) {
            let mut set = LinkSet { recent_max, ..LinkSet::default() };
            let mut model = BTreeSet::new();
            for l in links.iter().chain(&links) {
                prop_assert_eq!(set.contains(*l), model.contains(l));
                prop_assert_eq!(set.insert(*l), model.insert(*l));
                prop_assert!(set.contains(*l));
                prop_assert_eq!(set.len(), model.len());
            }
        }
    }

    #[test]
    fn a_link_set_merges_and_still_finds_every_link() {
        let mut set = LinkSet::default();
        let mut x: u128 = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C834;
        let links: Vec<u128> = (0..3 * LinkSet::RECENT + 5)
            .map(|_| {
                x = x.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(1);
                x ^ (x >> 64)
            })
            .collect();
        for &l in &links {
            assert!(set.insert(l));
        }
        assert_eq!(set.len(), links.len());
        assert_eq!(set.sorted.len(), 3 * LinkSet::RECENT, "three merges");
        assert!(set.sorted.windows(2).all(|w| w[0] < w[1]));
        for &l in &links {
            assert!(!set.insert(l), "a link inserted before is new again");
        }
    }
}
