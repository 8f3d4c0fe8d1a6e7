//! Safetensors headers, read and checked without touching the data (so a truncated download or
//! a header that lies is refused, naming the tensor, before anything is loaded or written), and
//! written for tensors laid out in order. The model loader, the merge and the exports use it.
//!
//! Format: a little-endian u64 header length `n`, `n` bytes of JSON (`{name: {dtype, shape,
//! data_offsets: [start, end]}, "__metadata__": {...}}`, offsets relative to the data section),
//! then the data section.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A header larger than this is refused (the reference writer's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Why a safetensors file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error(transparent)]
    Io(#[from] crate::Error),
    #[error("{}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
}

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range of the data, from the start of the file.
    pub start: u64,
    pub end: u64,
}

/// Bytes per element of a safetensors dtype; `None` for one this reader does not know (its
/// size is then not checked: candle names an unknown dtype itself when it loads).
pub fn dtype_width(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// Reads and checks the header of `path`: every entry's byte range is what its dtype and shape
/// need, and the file is as long as the header says. The tensors by name.
pub fn read_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>, HeaderError> {
    let corrupt = |message: String| HeaderError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(crate::Error::at(path))?;
    let file_len = f.metadata().map_err(crate::Error::at(path))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| {
        corrupt("file is shorter than the 8-byte header length (truncated?)".into())
    })?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(corrupt(format!(
            "header claims {n} bytes but the file has {file_len} (truncated or not safetensors)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(crate::Error::at(path))?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("header is not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| corrupt("header is not a JSON object".into()))?;
    let mut out = BTreeMap::new();
    let mut end_max = 0u64;
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let (start, end) = entry(t).map_err(|m| corrupt(format!("tensor `{name}`: {m}")))?;
        end_max = end_max.max(end);
        let shape = t["shape"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as usize)
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            name.clone(),
            TensorInfo {
                dtype: t["dtype"].as_str().unwrap_or_default().to_string(),
                shape,
                start: 8 + n + start,
                end: 8 + n + end,
            },
        );
    }
    if 8 + n + end_max > file_len {
        return Err(corrupt(format!(
            "data section needs {} bytes, file has {file_len} (truncated download?)",
            8 + n + end_max
        )));
    }
    Ok(out)
}

/// One header entry's data range, checked against its dtype and shape (issue 17: a header that
/// lies about a shape is refused naming the tensor).
fn entry(info: &serde_json::Value) -> Result<(u64, u64), String> {
    let offs = info["data_offsets"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let (Some(start), Some(end), 2) = (
        offs.first().and_then(|x| x.as_u64()),
        offs.get(1).and_then(|x| x.as_u64()),
        offs.len(),
    ) else {
        return Err("data_offsets are not two numbers".into());
    };
    if end < start {
        return Err(format!(
            "data_offsets [{start}, {end}] end before they start"
        ));
    }
    let dtype = info["dtype"].as_str().unwrap_or("");
    let Some(width) = dtype_width(dtype) else {
        return Ok((start, end));
    };
    let shape: Vec<u64> = info["shape"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
        .unwrap_or_default();
    let need = shape
        .iter()
        .try_fold(width, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if need != end - start {
        return Err(format!(
            "the header says shape {shape:?} {dtype} ({need} bytes) but gives it {} bytes",
            end - start
        ));
    }
    Ok((start, end))
}

/// Reads one tensor's bytes from `file` (whose header gave `info`).
pub fn read_bytes(
    file: &mut std::fs::File,
    path: &Path,
    info: &TensorInfo,
) -> Result<Vec<u8>, crate::Error> {
    use std::io::{Seek, SeekFrom};
    let mut buf = vec![0u8; (info.end - info.start) as usize];
    file.seek(SeekFrom::Start(info.start))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(crate::Error::at(path))?;
    Ok(buf)
}

/// The safetensors header for tensors written in the given order: `(name, dtype, shape, bytes)`.
/// Padded with spaces to a multiple of 8 bytes, as the reference writer does.
pub fn header(entries: &[(String, String, Vec<usize>, u64)]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, dtype, shape, bytes) in entries {
        map.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_default();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(header_json: &str, data: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let mut bytes = (header_json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header_json.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data));
        std::fs::write(&p, bytes).unwrap();
        (dir, p)
    }

    #[test]
    fn written_headers_read_back() {
        let entries = vec![
            ("a".to_string(), "F32".to_string(), vec![2, 3], 24),
            ("b".to_string(), "BF16".to_string(), vec![3], 6),
        ];
        let head = header(&entries);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        let mut bytes = head.clone();
        bytes.extend(std::iter::repeat_n(0u8, 30));
        std::fs::write(&p, bytes).unwrap();
        let h = read_header(&p).unwrap();
        let base = head.len() as u64;
        assert_eq!(h["a"].shape, [2, 3]);
        assert_eq!((h["a"].start, h["a"].end), (base, base + 24));
        assert_eq!((h["b"].start, h["b"].end), (base + 24, base + 30));
    }

    #[test]
    fn lies_and_truncation_are_refused_naming_the_tensor() {
        let (_d, p) = file_with(
            r#"{"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,16]}}"#,
            16,
        );
        let e = read_header(&p).unwrap_err().to_string();
        assert!(
            e.contains(
                "tensor `w`: the header says shape [4, 4] F32 (64 bytes) but gives it 16 bytes"
            ),
            "{e}"
        );
        let (_d, p) = file_with(
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
        );
        let e = read_header(&p).unwrap_err().to_string();
        assert!(e.contains("truncated download"), "{e}");
        let (_d, p) = file_with(r#"{"w":{"dtype":"F32","shape":[4]}}"#, 16);
        let e = read_header(&p).unwrap_err().to_string();
        assert!(
            e.contains("tensor `w`: data_offsets are not two numbers"),
            "{e}"
        );
        // an unknown dtype is left to the loader, which names it
        let (_d, p) = file_with(
            r#"{"w":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}}"#,
            2,
        );
        assert_eq!(read_header(&p).unwrap()["w"].dtype, "F4");
    }
}
