//! The index of a job's local paths that AddFile's duplicate check uses.

use std::collections::HashMap;
use std::path::Path;

use bits_core::JobFile;

/// Hashes of a job's local paths, counted, so AddFile finds a path already in the job without
/// scanning a job of many files under the table lock. A hash it holds is only a hint: the paths
/// themselves are compared then.
#[derive(Debug, Default)]
pub(crate) struct PathIndex(HashMap<u64, u32>);

impl PathIndex {
    pub(crate) fn of(files: &[JobFile]) -> PathIndex {
        let mut index = PathIndex::default();
        let hashes: Vec<u64> = files.iter().map(|f| PathIndex::hash(&f.local_path)).collect();
        index.insert_all(&hashes);
        index
    }

    /// The hash of a path, keyed per process.
    pub(crate) fn hash(path: &Path) -> u64 {
        static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
        std::hash::BuildHasher::hash_one(KEYS.get_or_init(Default::default), path)
    }

    pub(crate) fn holds(&self, hash: u64) -> bool {
        self.0.contains_key(&hash)
    }

    pub(crate) fn insert_all(&mut self, hashes: &[u64]) {
        self.0.reserve(hashes.len());
        hashes.iter().for_each(|h| *self.0.entry(*h).or_default() += 1);
    }

    /// Adds `other`'s paths; into an empty index (a fresh job's) without a copy.
    pub(crate) fn join(&mut self, other: PathIndex) {
        if self.0.is_empty() {
            *self = other;
        } else {
            other.0.into_iter().for_each(|(h, n)| *self.0.entry(h).or_default() += n);
        }
    }

    pub(crate) fn remove_all(&mut self, hashes: &[u64]) {
        for hash in hashes {
            if let Some(count) = self.0.get_mut(hash) {
                *count -= 1;
                if *count == 0 {
                    self.0.remove(hash);
                }
            }
        }
    }
}
