//! Safetensors headers read and checked without loading the data, so that a truncated or
//! corrupt file is refused before anything is written.

use crate::ExportError;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range of the data, from the start of the file.
    pub start: u64,
    pub end: u64,
}

/// Reads and checks the header of `path`: sizes agree with dtypes and shapes, and the file is
/// as long as the header says. Returns the tensors in header order (by name).
pub fn read_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>, ExportError> {
    let corrupt = |message: String| ExportError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let io = |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| corrupt("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 || 8 + n > file_len {
        return Err(corrupt(format!(
            "header claims {n} bytes but the file has {file_len}"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| corrupt(format!("header is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| corrupt("header is not a JSON object".into()))?;
    let data_len = file_len - 8 - n;
    let mut out = BTreeMap::new();
    let mut end_max = 0u64;
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t["dtype"].as_str().unwrap_or_default().to_string();
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as usize)
                    .collect()
            })
            .unwrap_or_default();
        let offsets: Vec<u64> = t["data_offsets"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
            .unwrap_or_default();
        let width = match dtype.as_str() {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "U8" | "I8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            other => return Err(corrupt(format!("tensor `{name}`: unknown dtype {other:?}"))),
        };
        if offsets.len() != 2 || offsets[1] < offsets[0] {
            return Err(corrupt(format!("tensor `{name}`: bad data_offsets")));
        }
        let want = shape.iter().product::<usize>() as u64 * width;
        if offsets[1] - offsets[0] != want {
            return Err(corrupt(format!(
                "tensor `{name}`: {} bytes for a {dtype} tensor of shape {shape:?}",
                offsets[1] - offsets[0]
            )));
        }
        end_max = end_max.max(offsets[1]);
        out.insert(
            name.clone(),
            TensorInfo {
                dtype,
                shape,
                start: 8 + n + offsets[0],
                end: 8 + n + offsets[1],
            },
        );
    }
    if end_max > data_len {
        return Err(corrupt(format!(
            "tensor data needs {end_max} bytes after the header, the file has {data_len}"
        )));
    }
    Ok(out)
}

/// Reads one tensor's bytes from `file` (whose header gave `info`).
pub fn read_bytes(
    file: &mut std::fs::File,
    path: &Path,
    info: &TensorInfo,
) -> Result<Vec<u8>, ExportError> {
    use std::io::{Seek, SeekFrom};
    let mut buf = vec![0u8; (info.end - info.start) as usize];
    file.seek(SeekFrom::Start(info.start))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|source| ExportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
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

/// Loads every tensor of a (checked) safetensors file on the CPU.
pub fn load(
    path: &Path,
) -> Result<std::collections::HashMap<String, candle_core::Tensor>, ExportError> {
    read_header(path)?;
    let bytes = std::fs::read(path).map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).map_err(|e| {
        ExportError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}

/// The one atomic multi-file writer, shared by every stage.
pub use runner_io::atomic::Staged;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_the_safetensors_reader() {
        let entries = vec![
            ("a".to_string(), "F32".to_string(), vec![2, 3], 24),
            ("b".to_string(), "BF16".to_string(), vec![3], 6),
        ];
        let mut bytes = header(&entries);
        assert_eq!((bytes.len() - 8) % 8, 0);
        bytes.extend(std::iter::repeat_n(0u8, 30));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("a").unwrap().shape(), [2, 3]);
        assert_eq!(st.tensor("b").unwrap().shape(), [3]);
    }
}
