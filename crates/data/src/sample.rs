//! A tokenized training sample: ids and labels (`IGNORE` where no loss is taken).

/// The label of a token that is not trained (PyTorch's `ignore_index`).
pub const IGNORE: i32 = -100;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sample {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i32>,
}

impl Sample {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }
}
