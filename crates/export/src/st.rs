//! Safetensors for the merge: `runner_io`'s header reader (checked without loading the data, so
//! a truncated or corrupt file is refused before anything is written) with export's errors.

use crate::ExportError;
use std::collections::BTreeMap;
use std::path::Path;

/// One tensor entry of a safetensors header (the one reader, in `runner_io`).
pub use runner_io::safetensors::{TensorInfo, header};

fn export_err(e: runner_io::safetensors::HeaderError) -> ExportError {
    match e {
        runner_io::safetensors::HeaderError::Io(e) => ExportError::Io {
            path: e.path,
            source: e.source,
        },
        runner_io::safetensors::HeaderError::Corrupt { path, message } => {
            ExportError::Corrupt { path, message }
        }
    }
}

/// Reads and checks the header of `path` (see [`runner_io::safetensors::read_header`]); a dtype
/// the merge cannot size is refused here.
pub fn read_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>, ExportError> {
    let h = runner_io::safetensors::read_header(path).map_err(export_err)?;
    if let Some((name, t)) = h
        .iter()
        .find(|(_, t)| runner_io::safetensors::dtype_width(&t.dtype).is_none())
    {
        return Err(ExportError::Corrupt {
            path: path.to_path_buf(),
            message: format!("tensor `{name}`: unknown dtype {:?}", t.dtype),
        });
    }
    Ok(h)
}

/// Reads one tensor's bytes from `file` (whose header gave `info`).
pub fn read_bytes(
    file: &mut std::fs::File,
    path: &Path,
    info: &TensorInfo,
) -> Result<Vec<u8>, ExportError> {
    runner_io::safetensors::read_bytes(file, path, info).map_err(|e| ExportError::Io {
        path: e.path,
        source: e.source,
    })
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
