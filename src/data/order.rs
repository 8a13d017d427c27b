//! The order items are drawn in, and the seeds of each step: both depend only on the
//! run's seed and the position, so a resumed run draws what an unbroken one would.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// A shuffled order over `len` items that reshuffles every epoch; item k of the
/// stream depends only on (seed, k), so a resumed run draws the same items.
pub struct DataOrder {
    len: usize,
    seed: u64,
    epoch: Option<(usize, Vec<usize>)>,
}

impl DataOrder {
    pub fn new(len: usize, seed: u64) -> Self {
        Self {
            len,
            seed,
            epoch: None,
        }
    }

    /// The index of the k-th item drawn.
    pub fn get(&mut self, k: usize) -> usize {
        let epoch = k / self.len;
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..self.len).collect();
            let seed = self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            order.shuffle(&mut StdRng::seed_from_u64(seed));
            self.epoch = Some((epoch, order));
        }
        self.epoch
            .as_ref()
            .map(|(_, order)| order[k % self.len])
            .unwrap_or(0)
    }
}

/// A seed for one use (`stream`) at one step, mixed so nearby inputs give unrelated seeds.
pub fn step_seed(seed: u64, step: usize, stream: u64) -> u64 {
    let mut z = seed
        .wrapping_add((step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
