//! The content-addressed prepared-data cache under `dataset_prepared_path`.
//!
//! The key is a blake3 over the runner version, the tokenizer fingerprint, every chat template's
//! text, the data settings, and the bytes of every input file. The prepared samples are written
//! as Arrow IPC stream files (`train.arrow`, `eval.arrow`; readable with
//! `datasets.Dataset.from_file` or `pyarrow.ipc.open_stream`) into a temporary folder that is
//! renamed into place only when complete, so a crash never leaves a cache that is later reused.

use crate::error::{DataError, Result};
use crate::sample::Sample;
use arrow_array::{
    Array, ArrayRef, Int32Array, ListArray, RecordBatch, UInt32Array, cast::AsArray,
};
use arrow_buffer::{MutableBuffer, OffsetBuffer, ScalarBuffer, ToByteSlice};
use arrow_schema::{DataType, Field, Schema};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Incrementally builds a cache key.
pub struct KeyBuilder(blake3::Hasher);

impl Default for KeyBuilder {
    fn default() -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"runner-data prepared v1\0");
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        KeyBuilder(h)
    }
}

impl KeyBuilder {
    pub fn text(&mut self, label: &str, s: &str) {
        self.0.update(label.as_bytes());
        self.0.update(&(s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
    }

    pub fn file(&mut self, path: &Path) -> Result<()> {
        self.text("file", &path.to_string_lossy());
        let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut h = blake3::Hasher::new();
        loop {
            let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        self.0.update(h.finalize().as_bytes());
        Ok(())
    }

    /// 16 bytes of hex are plenty for a cache name.
    pub fn finish(&self) -> String {
        self.0.finalize().to_hex()[..32].to_string()
    }
}

fn schema() -> Arc<Schema> {
    let item = |t| Arc::new(Field::new("item", t, false));
    Arc::new(Schema::new(vec![
        Field::new("input_ids", DataType::List(item(DataType::UInt32)), false),
        Field::new("labels", DataType::List(item(DataType::Int32)), false),
        Field::new("length", DataType::UInt32, false),
    ]))
}

fn batch(samples: &[Sample]) -> Result<RecordBatch> {
    let total: usize = samples.iter().map(Sample::len).sum();
    let mut ids = MutableBuffer::new(4 * total);
    let mut labels = MutableBuffer::new(4 * total);
    for s in samples {
        ids.extend_from_slice(&s.input_ids);
        labels.extend_from_slice(&s.labels);
    }
    let lens: Vec<usize> = samples.iter().map(Sample::len).collect();
    batch_from(&lens, ids, labels)
}

/// One record batch from the samples' lengths and their ids and labels laid end to end (whole
/// slices copied at once: per-token iterator code is slow in the dev build).
fn batch_from(lens: &[usize], ids: MutableBuffer, labels: MutableBuffer) -> Result<RecordBatch> {
    let offsets = || OffsetBuffer::<i32>::from_lengths(lens.iter().copied());
    let ids = UInt32Array::new(ScalarBuffer::from(ids), None);
    let labels = Int32Array::new(ScalarBuffer::from(labels), None);
    let item = |t| Arc::new(Field::new("item", t, false));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(ListArray::new(
            item(DataType::UInt32),
            offsets(),
            Arc::new(ids),
            None,
        )),
        Arc::new(ListArray::new(
            item(DataType::Int32),
            offsets(),
            Arc::new(labels),
            None,
        )),
        Arc::new(UInt32Array::from_iter_values(
            lens.iter().map(|&n| n as u32),
        )),
    ];
    RecordBatch::try_new(schema(), cols).map_err(|e| DataError::Cache {
        path: PathBuf::new(),
        message: e.to_string(),
    })
}

/// Rows per Arrow record batch in the cache files.
pub const BATCH_ROWS: usize = 10_000;

/// Writes samples as an Arrow IPC stream, in record batches of up to [`BATCH_ROWS`] rows.
pub fn write_samples(path: &Path, samples: &[Sample]) -> Result<()> {
    let mut w = SampleWriter::create(path)?;
    for chunk in samples.chunks(BATCH_ROWS) {
        w.write(chunk)?;
    }
    w.finish()
}

/// An Arrow IPC stream of samples written one record batch at a time, so a cache file never
/// needs the whole dataset in memory.
pub struct SampleWriter {
    path: PathBuf,
    w: arrow_ipc::writer::StreamWriter<std::io::BufWriter<std::fs::File>>,
}

impl SampleWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let f = std::fs::File::create(path).map_err(|e| DataError::write(path, e))?;
        let w = arrow_ipc::writer::StreamWriter::try_new(std::io::BufWriter::new(f), &schema())
            .map_err(|e| cache_error(path, &e))?;
        Ok(SampleWriter {
            path: path.to_path_buf(),
            w,
        })
    }

    /// Writes `samples` as one record batch.
    pub fn write(&mut self, samples: &[Sample]) -> Result<()> {
        self.write_batch(&batch(samples)?)
    }

    fn write_batch(&mut self, b: &RecordBatch) -> Result<()> {
        self.w.write(b).map_err(|e| cache_error(&self.path, &e))
    }

    /// Ends the stream and syncs the file.
    pub fn finish(mut self) -> Result<()> {
        let path = self.path;
        let bad = |e: &dyn std::fmt::Display| cache_error(&path, e);
        self.w.finish().map_err(|e| bad(&e))?;
        let f = self.w.into_inner().map_err(|e| bad(&e))?;
        f.into_inner()
            .map_err(|e| bad(&e))?
            .sync_all()
            .map_err(|e| DataError::write(&path, e))
    }
}

fn cache_error(path: &Path, e: &dyn std::fmt::Display) -> DataError {
    DataError::Cache {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Encoded samples parked in a scratch file while a dataset is read, so that preparing holds
/// one chunk of rows, not the dataset: only each sample's length and trained-token count stay in
/// memory (16 bytes a sample; the order of the cache files is decided from those). A sample is
/// its ids then its labels, 32-bit in the machine's byte order (the file never leaves the
/// process that writes it).
pub struct Spill {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    offsets: Vec<u64>,
    lens: Vec<u32>,
    trained: Vec<u32>,
    end: u64,
}

impl Spill {
    pub fn create(path: &Path) -> Result<Self> {
        let f = std::fs::File::create(path).map_err(|e| DataError::write(path, e))?;
        Ok(Spill {
            path: path.to_path_buf(),
            out: std::io::BufWriter::with_capacity(1 << 20, f),
            offsets: Vec::new(),
            lens: Vec::new(),
            trained: Vec::new(),
            end: 0,
        })
    }

    /// Appends a sample; returns its index.
    pub fn push(&mut self, s: &Sample) -> Result<u32> {
        use std::io::Write;
        let (ids, labels) = (s.input_ids.to_byte_slice(), s.labels.to_byte_slice());
        self.out
            .write_all(ids)
            .and_then(|_| self.out.write_all(labels))
            .map_err(|e| DataError::write(&self.path, e))?;
        self.offsets.push(self.end);
        self.end += (ids.len() + labels.len()) as u64;
        self.lens.push(s.len() as u32);
        self.trained.push(s.trained_tokens() as u32);
        Ok((self.lens.len() - 1) as u32)
    }

    pub fn len(&self) -> usize {
        self.lens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }
    /// Each sample's length, by index.
    pub fn lens(&self) -> &[u32] {
        &self.lens
    }
    /// Each sample's trained tokens, by index.
    pub fn trained(&self) -> &[u32] {
        &self.trained
    }

    /// Writes the samples `order` names, in that order, as an Arrow cache file (the same
    /// record batches [`write_samples`] writes for those samples in memory).
    pub fn write_arrow(&mut self, order: &[u32], path: &Path) -> Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        self.out
            .flush()
            .map_err(|e| DataError::write(&self.path, e))?;
        let mut f = std::fs::File::open(&self.path).map_err(|e| DataError::io(&self.path, e))?;
        let mut w = SampleWriter::create(path)?;
        let mut bytes = Vec::new();
        for part in order.chunks(BATCH_ROWS) {
            let lens: Vec<usize> = part
                .iter()
                .map(|&i| self.lens[i as usize] as usize)
                .collect();
            let total: usize = lens.iter().sum();
            let mut ids = MutableBuffer::new(4 * total);
            let mut labels = MutableBuffer::new(4 * total);
            for (&i, &n) in part.iter().zip(&lens) {
                bytes.resize(8 * n, 0);
                f.seek(SeekFrom::Start(self.offsets[i as usize]))
                    .and_then(|_| f.read_exact(&mut bytes))
                    .map_err(|e| DataError::io(&self.path, e))?;
                ids.extend_from_slice(&bytes[..4 * n]);
                labels.extend_from_slice(&bytes[4 * n..]);
            }
            w.write_batch(&batch_from(&lens, ids, labels)?)?;
        }
        w.finish()
    }

    /// Deletes the scratch file.
    pub fn remove(self) {
        let path = self.path.clone();
        drop(self);
        let _ = std::fs::remove_file(path);
    }
}

/// Each sample's length and trained tokens in a cache file, read one record batch at a time.
pub fn read_stats(path: &Path) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut lens = Vec::new();
    let mut trained = Vec::new();
    for_each_batch(path, &mut |ids, labels| {
        lens.push(ids.len() as u32);
        trained.push(
            labels
                .iter()
                .filter(|&&l| l != crate::sample::IGNORE)
                .count() as u32,
        );
    })?;
    Ok((lens, trained))
}

pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for_each_batch(path, &mut |ids, labels| {
        out.push(Sample {
            input_ids: ids.to_vec(),
            labels: labels.to_vec(),
        })
    })?;
    Ok(out)
}

/// Calls `f` with each sample's ids and labels, holding one record batch at a time.
fn for_each_batch(path: &Path, f: &mut dyn FnMut(&[u32], &[i32])) -> Result<()> {
    let bad = |e: &dyn std::fmt::Display| cache_error(path, e);
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let r = arrow_ipc::reader::StreamReader::try_new(std::io::BufReader::new(file), None)
        .map_err(|e| bad(&e))?;
    for b in r {
        let b = b.map_err(|e| bad(&e))?;
        let (Some(ids), Some(labels)) = (b.column_by_name("input_ids"), b.column_by_name("labels"))
        else {
            return Err(bad(&"missing input_ids/labels columns"));
        };
        let (ids, labels) = (ids.as_list::<i32>(), labels.as_list::<i32>());
        for i in 0..b.num_rows() {
            let a = ids.value(i);
            let l = labels.value(i);
            let (Some(a), Some(l)) = (
                a.as_any().downcast_ref::<UInt32Array>(),
                l.as_any().downcast_ref::<Int32Array>(),
            ) else {
                return Err(bad(&"unexpected column types"));
            };
            f(a.values(), l.values());
        }
    }
    Ok(())
}

/// Writes a cache entry atomically: files go to a temporary folder that is renamed to `dir`.
pub fn write_entry(dir: &Path, files: &[(&str, &[Sample])], summary_json: &str) -> Result<()> {
    write_entry_with(dir, |tmp| {
        for (file, samples) in files {
            write_samples(&tmp.join(file), samples)?;
        }
        Ok(summary_json.to_string())
    })
}

/// Writes a cache entry atomically: `fill` writes the files into a temporary folder (which it
/// may also use as scratch space) and returns the summary JSON; the folder is renamed to `dir`
/// only when complete, and removed on an error or a signal.
pub fn write_entry_with(dir: &Path, fill: impl FnOnce(&Path) -> Result<String>) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| DataError::write(parent, e))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| DataError::write(&tmp, e))?;
    // A signal while it is written removes it (issue 17): no stale folder in the cache.
    runner_io::atomic::track_temporary(&tmp);
    let result = (|| {
        let summary_json = fill(&tmp)?;
        let s = tmp.join("summary.json");
        runner_io::atomic::write_synced(&s, summary_json.as_bytes())
            .map_err(|e| DataError::write(&e.path, e.source))?;
        // Another run may have finished the same key first; its content is identical.
        runner_io::atomic::publish_dir(&tmp, dir, runner_io::atomic::Existing::Keep)
            .map_err(|e| DataError::write(&e.path, e.source))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    runner_io::atomic::forget_temporary(&tmp);
    result
}

/// The entry folder for a key, when complete.
pub fn find_entry(prepared_path: &Path, key: &str) -> Option<PathBuf> {
    let dir = prepared_path.join(key);
    dir.join("summary.json").is_file().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_round_trip_through_arrow() {
        let dir = tempfile::tempdir().unwrap();
        let s = vec![
            Sample {
                input_ids: vec![1, 2, 3],
                labels: vec![-100, 2, 3],
            },
            Sample {
                input_ids: vec![9],
                labels: vec![9],
            },
        ];
        let entry = dir.path().join("abc");
        write_entry(&entry, &[("train.arrow", &s)], "{}").unwrap();
        assert_eq!(read_samples(&entry.join("train.arrow")).unwrap(), s);
        assert!(find_entry(dir.path(), "abc").is_some());
        assert!(find_entry(dir.path(), "abd").is_none());
        // No temporary folders are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn issue_14_spilled_samples_make_the_same_file_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        // Past one record batch, lengths and labels all different.
        let samples: Vec<Sample> = (0..BATCH_ROWS as u32 + 50)
            .map(|i| Sample {
                input_ids: (0..i % 13 + 1).map(|t| t * 7 + i).collect(),
                labels: (0..i % 13 + 1)
                    .map(|t| {
                        if t % 3 == 0 {
                            crate::sample::IGNORE
                        } else {
                            t as i32
                        }
                    })
                    .collect(),
            })
            .collect();
        let mut spill = Spill::create(&dir.path().join("s.spill")).unwrap();
        for (i, s) in samples.iter().enumerate() {
            assert_eq!(spill.push(s).unwrap(), i as u32);
        }
        // A permutation (7919 is prime to the count), as the seeded shuffle gives.
        let n = samples.len() as u32;
        let order: Vec<u32> = (0..n).map(|i| i * 7919 % n).collect();
        spill
            .write_arrow(&order, &dir.path().join("spilled.arrow"))
            .unwrap();
        let in_order: Vec<Sample> = order.iter().map(|&i| samples[i as usize].clone()).collect();
        write_samples(&dir.path().join("direct.arrow"), &in_order).unwrap();
        let spilled = std::fs::read(dir.path().join("spilled.arrow")).unwrap();
        assert!(spilled == std::fs::read(dir.path().join("direct.arrow")).unwrap());
        assert_eq!(
            read_samples(&dir.path().join("spilled.arrow")).unwrap(),
            in_order
        );
        let (lens, trained) = read_stats(&dir.path().join("spilled.arrow")).unwrap();
        assert_eq!(
            lens,
            in_order.iter().map(|s| s.len() as u32).collect::<Vec<_>>()
        );
        let want: Vec<u32> = in_order.iter().map(|s| s.trained_tokens() as u32).collect();
        assert_eq!(trained, want);
        assert_eq!(spill.trained()[5], samples[5].trained_tokens() as u32);
        spill.remove();
        assert!(!dir.path().join("s.spill").exists());
    }
}
