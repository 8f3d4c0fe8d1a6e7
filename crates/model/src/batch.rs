//! A model batch: token ids, labels and the sample layout (padding or packing) of each row.

use crate::error::{Error, Result};

/// The label value transformers ignores in the loss.
pub const IGNORE_INDEX: i64 = -100;

/// `B` rows of `T` tokens, row-major.
///
/// `seq_ids` says which sample each token belongs to: 0 is padding, equal non-zero ids are one
/// sample. A padded batch has one sample per row; a packed row has several, and its position ids
/// restart at 0 for each. Attention never crosses a sample boundary, and neither does the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    /// Per token; [`IGNORE_INDEX`] for tokens not trained. Unshifted, as transformers takes them.
    pub labels: Vec<i64>,
    pub seq_ids: Vec<u32>,
    pub position_ids: Vec<u32>,
}

impl Batch {
    /// From `input_ids`, `attention_mask` (1 = real token) and `labels`, all `B×T` row-major.
    /// Position ids count the real tokens of each row from 0 (right padding gives 0..len).
    pub fn from_attention_mask(
        batch_size: usize,
        seq_len: usize,
        input_ids: Vec<u32>,
        attention_mask: &[u8],
        labels: Vec<i64>,
    ) -> Result<Self> {
        let seq_ids = attention_mask.iter().map(|&m| u32::from(m != 0)).collect();
        Self::from_seq_ids(batch_size, seq_len, input_ids, seq_ids, labels)
    }

    /// Packed rows: `cu_seqlens[row]` holds the cumulative sample boundaries of that row
    /// (`[0, len0, len0+len1, ...]`); tokens after the last boundary are padding.
    pub fn packed(
        batch_size: usize,
        seq_len: usize,
        input_ids: Vec<u32>,
        cu_seqlens: &[Vec<usize>],
        labels: Vec<i64>,
    ) -> Result<Self> {
        if cu_seqlens.len() != batch_size {
            return Err(Error::Batch(format!(
                "{} cu_seqlens rows for a batch of {batch_size}",
                cu_seqlens.len()
            )));
        }
        let mut seq_ids = vec![0u32; batch_size * seq_len];
        for (row, cu) in cu_seqlens.iter().enumerate() {
            for (k, w) in cu.windows(2).enumerate() {
                if w[1] < w[0] || w[1] > seq_len {
                    return Err(Error::Batch(format!(
                        "row {row}: cu_seqlens {cu:?} is not increasing within {seq_len}"
                    )));
                }
                for s in &mut seq_ids[row * seq_len + w[0]..row * seq_len + w[1]] {
                    *s = k as u32 + 1;
                }
            }
        }
        Self::from_seq_ids(batch_size, seq_len, input_ids, seq_ids, labels)
    }

    /// From per-token sample ids (0 = padding); position ids restart at each new sample.
    pub fn from_seq_ids(
        batch_size: usize,
        seq_len: usize,
        input_ids: Vec<u32>,
        seq_ids: Vec<u32>,
        labels: Vec<i64>,
    ) -> Result<Self> {
        let n = batch_size * seq_len;
        for (what, len) in [
            ("input_ids", input_ids.len()),
            ("seq_ids", seq_ids.len()),
            ("labels", labels.len()),
        ] {
            if len != n {
                return Err(Error::Batch(format!(
                    "{what} has {len} entries, expected {batch_size}×{seq_len}"
                )));
            }
        }
        let mut position_ids = vec![0u32; n];
        for row in 0..batch_size {
            let mut pos = 0u32;
            for i in 0..seq_len {
                let k = row * seq_len + i;
                if i > 0 && seq_ids[k] != seq_ids[k - 1] {
                    pos = 0;
                }
                position_ids[k] = pos;
                pos += 1;
            }
        }
        Ok(Self {
            batch_size,
            seq_len,
            input_ids,
            labels,
            seq_ids,
            position_ids,
        })
    }

    /// The trained predictions: `(flat index of the predicting token, target id)`. Token `t`
    /// predicts `labels[t+1]` (transformers' shift) when both are in the same sample.
    pub fn targets(&self) -> Result<Vec<(u32, u32)>> {
        let t = self.seq_len;
        let mut out = Vec::new();
        for row in 0..self.batch_size {
            for i in 0..t.saturating_sub(1) {
                let k = row * t + i;
                let label = self.labels[k + 1];
                if label == IGNORE_INDEX {
                    continue;
                }
                if self.seq_ids[k] == 0 || self.seq_ids[k] != self.seq_ids[k + 1] {
                    continue;
                }
                let target = u32::try_from(label).map_err(|_| {
                    Error::Batch(format!(
                        "label {label} at row {row}, position {} is negative and not -100",
                        i + 1
                    ))
                })?;
                out.push((k as u32, target));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_positions_restart() {
        let b = Batch::packed(
            1,
            6,
            vec![1, 2, 3, 4, 5, 0],
            &[vec![0, 3, 5]],
            vec![1, 2, 3, 4, 5, -100],
        )
        .unwrap();
        assert_eq!(b.seq_ids, vec![1, 1, 1, 2, 2, 0]);
        assert_eq!(b.position_ids, vec![0, 1, 2, 0, 1, 0]);
        // 0→2, 1→3, (2→4 crosses a boundary), 3→5
        assert_eq!(b.targets().unwrap(), vec![(0, 2), (1, 3), (3, 5)]);
    }
}
