//! Packing samples into `sequence_len` bins, and padding batches when not packing.
//!
//! Packing is first-fit-decreasing (a max segment tree finds the leftmost bin with room in
//! O(log bins)). Each pack carries its samples' lengths and position ids that restart at 0 per
//! sample, so the engine can keep attention inside each sample.

use crate::sample::{IGNORE, Sample};

/// Several samples laid end to end in one row of at most `sequence_len` tokens. A pack holds
/// sample indices, not copies: rows are built when batched ([`pad_packs`]), so packing costs no
/// second copy of the data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pack {
    /// Indices into the sample list, in order.
    pub samples: Vec<u32>,
    /// The length each sample takes in the row; attention must not cross these boundaries.
    pub seq_lens: Vec<u32>,
}

impl Pack {
    pub fn len(&self) -> usize {
        self.seq_lens.iter().map(|&l| l as usize).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.seq_lens.is_empty()
    }

    /// The row: ids, labels and position ids restarting at 0 per sample.
    pub fn row(&self, samples: &[Sample]) -> (Vec<u32>, Vec<i32>, Vec<u32>) {
        let n = self.len();
        let (mut ids, mut labels, mut pos) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (&i, &l) in self.samples.iter().zip(&self.seq_lens) {
            let s = &samples[i as usize];
            ids.extend_from_slice(&s.input_ids[..l as usize]);
            labels.extend_from_slice(&s.labels[..l as usize]);
            pos.extend(0..l);
        }
        (ids, labels, pos)
    }
}

/// Packs samples (each at most `capacity` long) first-fit-decreasing. Returns the packs in
/// creation order; samples keep their relative order inside a pack.
pub fn pack_ffd(samples: &[Sample], capacity: usize) -> Vec<Pack> {
    let lens: Vec<usize> = samples.iter().map(Sample::len).collect();
    pack_lengths(&lens, capacity)
}

/// [`pack_ffd`] from the samples' lengths alone (index `i` is sample `i`): packing needs no
/// tokens, so `runner preprocess` packs a dataset it never holds in memory.
pub fn pack_lengths(lens: &[usize], capacity: usize) -> Vec<Pack> {
    let mut order: Vec<usize> = (0..lens.len()).filter(|&i| lens[i] > 0).collect();
    // Stable: equal lengths keep input order, so the result is deterministic.
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let mut tree = MaxTree::new(order.len().max(1));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    for &i in &order {
        let len = lens[i].min(capacity);
        let b = match tree.leftmost_at_least(len) {
            Some(b) if b < bins.len() => b,
            _ => {
                bins.push(Vec::new());
                tree.set(bins.len() - 1, capacity);
                bins.len() - 1
            }
        };
        bins[b].push(i);
        let rem = tree.get(b) - len;
        tree.set(b, rem);
    }
    bins.into_iter()
        .map(|mut members| {
            members.sort_unstable();
            Pack {
                seq_lens: members
                    .iter()
                    .map(|&i| lens[i].min(capacity) as u32)
                    .collect(),
                samples: members.into_iter().map(|i| i as u32).collect(),
            }
        })
        .collect()
}

/// Tokens used over tokens available (`packs × capacity`).
pub fn packing_efficiency(packs: &[Pack], capacity: usize) -> f64 {
    if packs.is_empty() || capacity == 0 {
        return 0.0;
    }
    let used: usize = packs.iter().map(Pack::len).sum();
    used as f64 / (packs.len() * capacity) as f64
}

/// A padded batch: every row as long as the longest (or `pad_to`), padding masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub input_ids: Vec<Vec<u32>>,
    pub labels: Vec<Vec<i32>>,
    pub attention_mask: Vec<Vec<u8>>,
    pub position_ids: Vec<Vec<u32>>,
    /// Per row, the lengths of the samples laid end to end in it (one entry when not packed);
    /// padding comes after them. Attention must stay inside each sample.
    pub seq_lens: Vec<Vec<u32>>,
}

/// Pads samples on the right with `pad_id`; labels there are `IGNORE`, attention 0.
pub fn pad_batch(samples: &[&Sample], pad_id: u32, pad_to: Option<usize>) -> Batch {
    let longest = samples.iter().map(|s| s.len()).max().unwrap_or(0);
    let width = pad_to.map_or(longest, |p| p.max(longest));
    let mut b = Batch {
        input_ids: Vec::with_capacity(samples.len()),
        labels: Vec::with_capacity(samples.len()),
        attention_mask: Vec::with_capacity(samples.len()),
        position_ids: Vec::with_capacity(samples.len()),
        seq_lens: Vec::with_capacity(samples.len()),
    };
    for s in samples {
        let pad = width - s.len();
        let mut ids = s.input_ids.clone();
        ids.resize(width, pad_id);
        let mut labels = s.labels.clone();
        labels.resize(width, IGNORE);
        let mut mask = vec![1u8; s.len()];
        mask.resize(s.len() + pad, 0);
        b.input_ids.push(ids);
        b.labels.push(labels);
        b.attention_mask.push(mask);
        b.position_ids.push((0..width as u32).collect());
        b.seq_lens.push(vec![s.len() as u32]);
    }
    b
}

/// Pads packs on the right like [`pad_batch`]; position ids restart per sample and padding
/// positions continue from 0.
pub fn pad_packs(packs: &[&Pack], samples: &[Sample], pad_id: u32, pad_to: Option<usize>) -> Batch {
    let longest = packs.iter().map(|p| p.len()).max().unwrap_or(0);
    let width = pad_to.map_or(longest, |p| p.max(longest));
    let mut b = Batch {
        input_ids: Vec::with_capacity(packs.len()),
        labels: Vec::with_capacity(packs.len()),
        attention_mask: Vec::with_capacity(packs.len()),
        position_ids: Vec::with_capacity(packs.len()),
        seq_lens: Vec::with_capacity(packs.len()),
    };
    for p in packs {
        let (mut ids, mut labels, mut pos) = p.row(samples);
        let n = ids.len();
        ids.resize(width, pad_id);
        labels.resize(width, IGNORE);
        let mut mask = vec![1u8; n];
        mask.resize(width, 0);
        pos.extend(0..(width - n) as u32);
        b.input_ids.push(ids);
        b.labels.push(labels);
        b.attention_mask.push(mask);
        b.position_ids.push(pos);
        b.seq_lens.push(p.seq_lens.clone());
    }
    b
}

/// Max segment tree over bin capacities.
struct MaxTree {
    n: usize,
    t: Vec<usize>,
}

impl MaxTree {
    fn new(n: usize) -> Self {
        let n = n.next_power_of_two();
        MaxTree {
            n,
            t: vec![0; 2 * n],
        }
    }
    fn get(&self, i: usize) -> usize {
        self.t[self.n + i]
    }
    fn set(&mut self, i: usize, v: usize) {
        let mut k = self.n + i;
        self.t[k] = v;
        while k > 1 {
            k /= 2;
            self.t[k] = self.t[2 * k].max(self.t[2 * k + 1]);
        }
    }
    fn leftmost_at_least(&self, v: usize) -> Option<usize> {
        if self.t[1] < v {
            return None;
        }
        let mut k = 1;
        while k < self.n {
            k = if self.t[2 * k] >= v { 2 * k } else { 2 * k + 1 };
        }
        Some(k - self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: usize, tag: u32) -> Sample {
        Sample {
            input_ids: vec![tag; n],
            labels: vec![tag as i32; n],
        }
    }

    #[test]
    fn ffd_packs_tightly_and_restarts_positions() {
        let samples = vec![s(6, 1), s(4, 2), s(3, 3), s(5, 4), s(2, 5)];
        let packs = pack_ffd(&samples, 10);
        // FFD: 6→A, 5→B, 4→A(10), 3→B(8), 2→B(10).
        assert_eq!(packs.len(), 2);
        assert_eq!(packs[0].seq_lens, vec![6, 4]);
        let (ids, _, pos) = packs[0].row(&samples);
        assert_eq!(ids, vec![1, 1, 1, 1, 1, 1, 2, 2, 2, 2]);
        assert_eq!(pos, vec![0, 1, 2, 3, 4, 5, 0, 1, 2, 3]);
        assert_eq!(packs[1].seq_lens, vec![3, 5, 2]);
        assert!((packing_efficiency(&packs, 10) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn every_sample_lands_in_exactly_one_pack() {
        let samples: Vec<Sample> = (0..500).map(|i| s(1 + (i * 37 % 97), i as u32)).collect();
        let packs = pack_ffd(&samples, 128);
        let total: usize = packs.iter().map(|p| p.seq_lens.len()).sum();
        assert_eq!(total, 500);
        assert!(packs.iter().all(|p| p.len() <= 128));
        assert!(packing_efficiency(&packs, 128) > 0.95);
    }

    #[test]
    fn padding_is_masked() {
        let a = s(3, 7);
        let b = s(1, 8);
        let batch = pad_batch(&[&a, &b], 0, None);
        assert_eq!(batch.input_ids[1], vec![8, 0, 0]);
        assert_eq!(batch.labels[1], vec![8, IGNORE, IGNORE]);
        assert_eq!(batch.attention_mask[1], vec![1, 0, 0]);
        assert_eq!(pad_batch(&[&a], 0, Some(5)).input_ids[0].len(), 5);
        let both = [a, b];
        let packs = pack_ffd(&both, 8);
        let pb = pad_packs(&[&packs[0]], &both, 0, Some(6));
        assert_eq!(pb.position_ids[0], vec![0, 1, 2, 0, 0, 1]);
        assert_eq!(pb.seq_lens[0], vec![3, 1]);
        assert_eq!(pb.labels[0][4..], [IGNORE, IGNORE]);
    }
}
