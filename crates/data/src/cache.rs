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
use arrow_buffer::OffsetBuffer;
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
    let offsets = || OffsetBuffer::<i32>::from_lengths(samples.iter().map(Sample::len));
    let ids =
        UInt32Array::from_iter_values(samples.iter().flat_map(|s| s.input_ids.iter().copied()));
    let labels =
        Int32Array::from_iter_values(samples.iter().flat_map(|s| s.labels.iter().copied()));
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
            samples.iter().map(|s| s.len() as u32),
        )),
    ];
    RecordBatch::try_new(schema(), cols).map_err(|e| DataError::Cache {
        path: PathBuf::new(),
        message: e.to_string(),
    })
}

/// Writes samples as an Arrow IPC stream, in record batches of up to 10k rows.
pub fn write_samples(path: &Path, samples: &[Sample]) -> Result<()> {
    let bad = |e: &dyn std::fmt::Display| DataError::Cache {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let f = std::fs::File::create(path).map_err(|e| DataError::write(path, e))?;
    let mut w = arrow_ipc::writer::StreamWriter::try_new(std::io::BufWriter::new(f), &schema())
        .map_err(|e| bad(&e))?;
    for chunk in samples.chunks(10_000) {
        w.write(&batch(chunk)?).map_err(|e| bad(&e))?;
    }
    w.finish().map_err(|e| bad(&e))?;
    let f = w.into_inner().map_err(|e| bad(&e))?;
    f.into_inner()
        .map_err(|e| bad(&e))?
        .sync_all()
        .map_err(|e| DataError::write(path, e))
}

pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    let bad = |e: &dyn std::fmt::Display| DataError::Cache {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let r = arrow_ipc::reader::StreamReader::try_new(std::io::BufReader::new(f), None)
        .map_err(|e| bad(&e))?;
    let mut out = Vec::new();
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
            out.push(Sample {
                input_ids: a.values().to_vec(),
                labels: l.values().to_vec(),
            });
        }
    }
    Ok(out)
}

/// Writes a cache entry atomically: files go to a temporary folder that is renamed to `dir`.
pub fn write_entry(dir: &Path, files: &[(&str, &[Sample])], summary_json: &str) -> Result<()> {
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
        for (file, samples) in files {
            write_samples(&tmp.join(file), samples)?;
        }
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
}
