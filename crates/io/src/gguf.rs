//! Reads the metadata key/values at the head of a GGUF file (the tensors are not touched): the
//! tokenizer and chat template of a GGUF base, for the data stage.
//!
//! The format: magic `GGUF`, u32 version (2 or 3), u64 tensor count, u64 metadata count, then
//! `metadata count` entries of (string key, u32 type, value). Strings are u64 length + UTF-8
//! bytes; arrays are u32 element type + u64 count + elements. Little-endian throughout.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Why a GGUF header cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error(transparent)]
    Io(#[from] crate::Error),
    #[error("{}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
}

type Result<T> = std::result::Result<T, GgufError>;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// All metadata of a GGUF file, keyed by name.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, Value>> {
    let file = std::fs::File::open(path).map_err(crate::Error::at(path))?;
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 20, file),
        path,
    };
    let mut magic = [0u8; 4];
    r.bytes(&mut magic)?;
    if &magic != b"GGUF" {
        return Err(r.bad("not a GGUF file (bad magic)"));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(r.bad(&format!("unsupported GGUF version {version}")));
    }
    let _tensors = r.u64()?;
    let count = r.u64()?;
    let mut out = HashMap::new();
    for _ in 0..count {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r.value(ty)?;
        out.insert(key, value);
    }
    Ok(out)
}

struct Reader<'a> {
    inner: BufReader<std::fs::File>,
    path: &'a Path,
}

impl Reader<'_> {
    fn bad(&self, message: &str) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_path_buf(),
            message: message.to_string(),
        }
    }
    fn bytes(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner
            .read_exact(buf)
            .map_err(|e| self.bad(&format!("truncated GGUF header: {e}")))
    }
    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        // Metadata strings are names, tokens and chat templates; anything this long is a
        // corrupt file, not a reason to allocate gigabytes.
        if len > (64 << 20) {
            return Err(self.bad("metadata string length out of range (corrupt file?)"));
        }
        let mut buf = vec![0u8; len as usize];
        self.bytes(&mut buf)?;
        String::from_utf8(buf).map_err(|_| self.bad("metadata string is not UTF-8"))
    }
    fn value(&mut self, ty: u32) -> Result<Value> {
        let mut b8 = [0u8; 8];
        Ok(match ty {
            0 => {
                self.bytes(&mut b8[..1])?;
                Value::U64(b8[0] as u64)
            }
            1 => {
                self.bytes(&mut b8[..1])?;
                Value::I64(b8[0] as i8 as i64)
            }
            2 => {
                self.bytes(&mut b8[..2])?;
                Value::U64(u16::from_le_bytes([b8[0], b8[1]]) as u64)
            }
            3 => {
                self.bytes(&mut b8[..2])?;
                Value::I64(i16::from_le_bytes([b8[0], b8[1]]) as i64)
            }
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(self.u32()? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32()?) as f64),
            7 => {
                self.bytes(&mut b8[..1])?;
                Value::Bool(b8[0] != 0)
            }
            8 => Value::Str(self.string()?),
            9 => {
                let ety = self.u32()?;
                let n = self.u64()?;
                if n > (1 << 28) {
                    return Err(self.bad("array length out of range"));
                }
                let mut v = Vec::with_capacity((n as usize).min(1 << 16));
                for _ in 0..n {
                    v.push(self.value(ety)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            _ => return Err(self.bad(&format!("unknown metadata type {ty}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_headers_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        std::fs::write(&p, b"NOPE").unwrap();
        assert!(
            read_metadata(&p)
                .unwrap_err()
                .to_string()
                .contains("bad magic")
        );
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes()); // key length
        std::fs::write(&p, &b).unwrap();
        assert!(
            read_metadata(&p)
                .unwrap_err()
                .to_string()
                .contains("out of range")
        );
        b.truncate(b.len() - 8);
        b.extend(3u64.to_le_bytes());
        b.extend(b"abc");
        b.extend(9u32.to_le_bytes()); // array
        b.extend(8u32.to_le_bytes()); // of strings
        b.extend((1u64 << 27).to_le_bytes()); // claims many, has none
        std::fs::write(&p, &b).unwrap();
        assert!(
            read_metadata(&p)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
    }
}
