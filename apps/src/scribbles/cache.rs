//! A bounded cache of class probabilities, so that the next correction of the same structure on
//! the same image (or session) does not run the network again.
//!
//! An entry is keyed by the image file (path, size, modification time: a session or datastore
//! image replaced on disk is a new key), the weights (resolution and file modification time: a
//! new checkpoint invalidates it) and the class; it holds the probability on one box of the
//! input grid and answers any request whose box lies inside it. The least recently used entries
//! go first once the total exceeds the byte budget.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ferrolabel_models::probability::VoxelBox;
use ferrolabel_models::Resolution;

/// Default budget: 256 MiB of probabilities (a 400^3 box at 4 bytes a voxel).
pub const DEFAULT_BUDGET: usize = 256 << 20;

/// What a probability depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbKey {
    /// The image file.
    pub path: PathBuf,
    /// Its size.
    pub len: u64,
    /// Its modification time.
    pub mtime: Option<SystemTime>,
    /// The weights.
    pub resolution: Resolution,
    /// The weights file's modification time.
    pub weights_mtime: Option<SystemTime>,
    /// The class index.
    pub class: usize,
}

impl ProbKey {
    /// The key of `image` (its metadata is read now).
    pub fn of(
        image: &Path,
        resolution: Resolution,
        weights_mtime: Option<SystemTime>,
        class: usize,
    ) -> ProbKey {
        let meta = std::fs::metadata(image).ok();
        ProbKey {
            path: image.to_path_buf(),
            len: meta.as_ref().map(|m| m.len()).unwrap_or(0),
            mtime: meta.and_then(|m| m.modified().ok()),
            resolution,
            weights_mtime,
            class,
        }
    }
}

struct Entry {
    key: ProbKey,
    roi: VoxelBox,
    prob: Arc<Vec<f32>>,
}

/// The cache (cheap to share behind an `Arc`; all methods take `&self`).
pub struct ProbabilityCache {
    entries: Mutex<VecDeque<Entry>>,
    budget: usize,
}

impl std::fmt::Debug for ProbabilityCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbabilityCache")
            .field("budget", &self.budget)
            .field("entries", &self.len())
            .finish()
    }
}

impl Default for ProbabilityCache {
    fn default() -> Self {
        ProbabilityCache::new(DEFAULT_BUDGET)
    }
}

fn inside(inner: &VoxelBox, outer: &VoxelBox) -> bool {
    (0..3).all(|a| outer[a][0] <= inner[a][0] && inner[a][1] <= outer[a][1])
}

/// The part `roi` of a probability stored on box `outer` (x fastest).
fn sub_box(prob: &[f32], outer: &VoxelBox, roi: &VoxelBox) -> Vec<f32> {
    let nx = outer[0][1] - outer[0][0];
    let ny = outer[1][1] - outer[1][0];
    let mut out = Vec::with_capacity(
        (roi[0][1] - roi[0][0]) * (roi[1][1] - roi[1][0]) * (roi[2][1] - roi[2][0]),
    );
    for k in roi[2][0]..roi[2][1] {
        for j in roi[1][0]..roi[1][1] {
            let row = ((k - outer[2][0]) * ny + (j - outer[1][0])) * nx;
            let a = row + roi[0][0] - outer[0][0];
            out.extend_from_slice(&prob[a..a + (roi[0][1] - roi[0][0])]);
        }
    }
    out
}

impl ProbabilityCache {
    /// A cache holding at most `budget` bytes of probabilities.
    pub fn new(budget: usize) -> ProbabilityCache {
        ProbabilityCache {
            entries: Mutex::new(VecDeque::new()),
            budget,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The probability of `roi` if an entry of `key` covers it (the entry becomes the most
    /// recently used).
    pub fn get(&self, key: &ProbKey, roi: &VoxelBox) -> Option<Vec<f32>> {
        let mut entries = self.entries.lock().ok()?;
        let i = entries
            .iter()
            .position(|e| &e.key == key && inside(roi, &e.roi))?;
        let e = entries.remove(i)?;
        let out = if &e.roi == roi {
            e.prob.as_ref().clone()
        } else {
            sub_box(&e.prob, &e.roi, roi)
        };
        entries.push_back(e);
        Some(out)
    }

    /// Stores a probability; entries of the same key inside the new box are dropped, then the
    /// least recently used ones until the total fits the budget. A box larger than the whole
    /// budget is not stored.
    pub fn put(&self, key: ProbKey, roi: VoxelBox, prob: Arc<Vec<f32>>) {
        let bytes = |e: &Entry| e.prob.len() * 4;
        if prob.len() * 4 > self.budget {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        entries.retain(|e| !(e.key == key && inside(&e.roi, &roi)));
        entries.push_back(Entry { key, roi, prob });
        let mut total: usize = entries.iter().map(bytes).sum();
        while total > self.budget {
            match entries.pop_front() {
                Some(e) => total -= bytes(&e),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(class: usize) -> ProbKey {
        ProbKey {
            path: "/x/a.nii.gz".into(),
            len: 1,
            mtime: None,
            resolution: Resolution::High,
            weights_mtime: None,
            class,
        }
    }

    #[test]
    fn answers_boxes_inside_an_entry_and_evicts_the_oldest() {
        let cache = ProbabilityCache::new(64 * 4);
        let outer = [[0, 4], [0, 4], [0, 2]];
        let prob: Vec<f32> = (0..32).map(|i| i as f32).collect();
        cache.put(key(1), outer, Arc::new(prob));
        assert_eq!(cache.get(&key(1), &outer).unwrap().len(), 32);
        // x 1..3, y 2..3, z 1..2: voxels (1,2,1) = 1 + 4*(2 + 4*1) = 25 and 26
        assert_eq!(
            cache.get(&key(1), &[[1, 3], [2, 3], [1, 2]]).unwrap(),
            vec![25.0, 26.0]
        );
        assert!(cache.get(&key(2), &outer).is_none());
        assert!(cache.get(&key(1), &[[0, 5], [0, 4], [0, 2]]).is_none());
        cache.put(key(2), outer, Arc::new(vec![0.5; 32]));
        assert_eq!(cache.len(), 2);
        cache.put(key(3), outer, Arc::new(vec![0.5; 32]));
        assert_eq!(cache.len(), 2, "the budget holds two entries");
        assert!(
            cache.get(&key(1), &outer).is_none(),
            "the oldest went first"
        );
        cache.put(key(4), [[0, 100], [0, 1], [0, 1]], Arc::new(vec![0.0; 100]));
        assert_eq!(cache.len(), 2, "larger than the budget: not stored");
    }
}
