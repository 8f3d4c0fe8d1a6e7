//! TensorBoard event files (`use_tensorboard: true`, issue 15): the scalars of each
//! metrics.jsonl record, written as TensorFlow `Event` protos in TFRecord framing under
//! `output_dir/runs/`, which TensorBoard reads without TensorFlow. Written by hand: the format
//! is four fields of two small protos, and a crate for it would bring a protobuf stack.
//!
//! TFRecord frame: `u64 length (LE) | u32 masked_crc32c(length) | data | u32 masked_crc32c(data)`.
//! `Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }`
//! `Summary { repeated Value value = 1; }`, `Value { string tag = 1; float simple_value = 2; }`.

use crate::error::TrainError;
use crate::metrics::Record;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Appends events to `output_dir/runs/events.out.tfevents.<unix seconds>.runner`.
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl EventWriter {
    /// Creates `dir/runs/` and a new event file (a resumed run adds a file; TensorBoard reads
    /// every event file in the folder as one run).
    pub fn open(dir: &Path) -> Result<Self, TrainError> {
        let runs = dir.join("runs");
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let path = runs.join(format!("events.out.tfevents.{secs}.runner"));
        let io = |source| TrainError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&runs).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let mut writer = EventWriter { path, file };
        let mut first = Vec::new();
        field_double(&mut first, 1, wall_time());
        field_bytes(&mut first, 3, b"brain.Event:2");
        writer.append(&first)?;
        Ok(writer)
    }

    /// One event holding every scalar of the record, under the tags transformers'
    /// TensorBoard callback uses (`train/loss`, `eval/loss`, ...).
    pub fn write(&mut self, record: &Record) -> Result<(), TrainError> {
        let scalars = [
            ("train/loss", record.loss),
            ("train/learning_rate", record.learning_rate),
            ("train/grad_norm", record.grad_norm),
            ("train/tokens_per_second", record.tokens_per_second),
            ("eval/loss", record.eval_loss),
            ("eval/perplexity", record.eval_perplexity),
        ];
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let Some(v) = value else { continue };
            let mut val = Vec::new();
            field_bytes(&mut val, 1, tag.as_bytes());
            val.push((2 << 3) | 5); // simple_value: float, fixed32
            val.extend_from_slice(&(v as f32).to_le_bytes());
            field_bytes(&mut summary, 1, &val);
        }
        if summary.is_empty() {
            return Ok(());
        }
        let mut epoch = Vec::new();
        field_bytes(&mut epoch, 1, b"train/epoch");
        epoch.push((2 << 3) | 5);
        epoch.extend_from_slice(&(record.epoch as f32).to_le_bytes());
        field_bytes(&mut summary, 1, &epoch);
        let mut event = Vec::new();
        field_double(&mut event, 1, wall_time());
        event.push(2 << 3); // step: varint
        varint(&mut event, record.step);
        field_bytes(&mut event, 5, &summary);
        self.append(&event)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&mut self, data: &[u8]) -> Result<(), TrainError> {
        let len = (data.len() as u64).to_le_bytes();
        let mut frame = Vec::with_capacity(data.len() + 16);
        frame.extend_from_slice(&len);
        frame.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        frame.extend_from_slice(data);
        frame.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        // One write per record, flushed: a crash leaves whole records (TensorBoard stops at a
        // cut one, as it does for TensorFlow's own files).
        self.file
            .write_all(&frame)
            .and_then(|_| self.file.flush())
            .map_err(|source| TrainError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2): strings and embedded messages.
fn field_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    varint(out, (number << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A double field (wire type 1, fixed64).
fn field_double(out: &mut Vec<u8>, number: u64, v: f64) {
    varint(out, (number << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: rotated right by 15 bits plus a constant.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xA282_EAD8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf reader for the test only: (field number, value) pairs of one message.
    enum Field<'a> {
        Varint(u64),
        Fixed64([u8; 8]),
        Fixed32([u8; 4]),
        Bytes(&'a [u8]),
    }

    fn read_varint(data: &[u8], at: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = data[*at];
            *at += 1;
            v |= ((b & 0x7F) as u64) << shift;
            if b < 0x80 {
                return v;
            }
            shift += 7;
        }
    }

    fn fields(data: &[u8]) -> Vec<(u64, Field<'_>)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < data.len() {
            let key = read_varint(data, &mut at);
            let field = match key & 7 {
                0 => Field::Varint(read_varint(data, &mut at)),
                1 => {
                    at += 8;
                    Field::Fixed64(data[at - 8..at].try_into().unwrap())
                }
                2 => {
                    let n = read_varint(data, &mut at) as usize;
                    at += n;
                    Field::Bytes(&data[at - n..at])
                }
                5 => {
                    at += 4;
                    Field::Fixed32(data[at - 4..at].try_into().unwrap())
                }
                w => panic!("unexpected wire type {w}"),
            };
            out.push((key >> 3, field));
        }
        out
    }

    /// The records of a TFRecord file, with both CRCs checked.
    fn records(bytes: &[u8]) -> Vec<&[u8]> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(len_crc, masked_crc32c(len_bytes), "length CRC");
            let data = &bytes[at + 12..at + 12 + len];
            let data_crc =
                u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(data_crc, masked_crc32c(data), "data CRC");
            out.push(data);
            at += 16 + len;
        }
        out
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // RFC 3720 (iSCSI) CRC-32C check value of "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn issue_15_event_file_parses_back_with_the_metrics_scalars() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::open(dir.path()).unwrap();
        w.write(&Record {
            step: 1,
            epoch: 0.25,
            loss: Some(2.5),
            learning_rate: Some(1e-4),
            grad_norm: Some(0.75),
            tokens_per_second: Some(300.0),
            ..Default::default()
        })
        .unwrap();
        w.write(&Record {
            step: 300,
            epoch: 1.0,
            eval_loss: Some(1.5),
            eval_perplexity: Some(1.5f64.exp()),
            ..Default::default()
        })
        .unwrap();
        let path = w.path().to_path_buf();
        assert!(path.starts_with(dir.path().join("runs")));
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .contains("tfevents")
        );
        let bytes = std::fs::read(&path).unwrap();
        let recs = records(&bytes);
        assert_eq!(recs.len(), 3);

        // The first event names the file format version.
        let first = fields(recs[0]);
        let (1, Field::Fixed64(wall)) = first[0] else {
            panic!("the first field is not wall_time")
        };
        assert!(
            f64::from_le_bytes(wall) > 1.6e9,
            "wall_time is Unix seconds"
        );
        assert!(matches!(first[1], (3, Field::Bytes(b"brain.Event:2"))));

        let scalars = |event: &[u8]| -> (u64, Vec<(String, f32)>) {
            let mut step = 0;
            let mut out = Vec::new();
            for (n, f) in fields(event) {
                match (n, f) {
                    (2, Field::Varint(s)) => step = s,
                    (5, Field::Bytes(summary)) => {
                        for (_, value) in fields(summary) {
                            let Field::Bytes(value) = value else {
                                panic!("value")
                            };
                            let (mut tag, mut v) = (String::new(), f32::NAN);
                            for (n, f) in fields(value) {
                                match (n, f) {
                                    (1, Field::Bytes(t)) => {
                                        tag = String::from_utf8(t.to_vec()).unwrap()
                                    }
                                    (2, Field::Fixed32(b)) => v = f32::from_le_bytes(b),
                                    _ => panic!("unexpected field in Value"),
                                }
                            }
                            out.push((tag, v));
                        }
                    }
                    (1, Field::Fixed64(_)) => {}
                    _ => panic!("unexpected field {n} in Event"),
                }
            }
            (step, out)
        };
        let (step, train) = scalars(recs[1]);
        assert_eq!(step, 1);
        assert_eq!(
            train,
            [
                ("train/loss".to_string(), 2.5),
                ("train/learning_rate".to_string(), 1e-4),
                ("train/grad_norm".to_string(), 0.75),
                ("train/tokens_per_second".to_string(), 300.0),
                ("train/epoch".to_string(), 0.25),
            ]
        );
        let (step, eval) = scalars(recs[2]);
        assert_eq!(step, 300); // a two-byte varint
        assert_eq!(eval[0], ("eval/loss".to_string(), 1.5));
        assert_eq!(eval[1].0, "eval/perplexity");
        assert!((eval[1].1 - 1.5f32.exp()).abs() < 1e-6);
    }
}
