//! Where base weights come from: memory-mapped safetensors (one file or sharded), a GGUF read one
//! tensor at a time, or tensors in memory. Every lookup checks the shape and names the tensor on
//! failure. With a [`StreamingQuantizer`] the decoder projections are quantized as they are read
//! (read one tensor, quantize it, drop it), so loading a QLoRA base never holds the unquantized
//! model: its peak is the quantized model plus the largest tensor (issue 12).

use crate::error::{Error, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A named store of tensors in Hugging Face names.
pub trait TensorSource: Send + Sync {
    /// Human-readable origin (a file path), used in errors.
    fn source_name(&self) -> String;
    /// The tensor's shape, or None when absent.
    fn shape_of(&self, name: &str) -> Option<Vec<usize>>;
    /// Loads a tensor (already known to exist).
    fn load(&self, name: &str, device: &Device) -> Result<Tensor>;
    /// All tensor names (for diagnostics).
    fn names(&self) -> Vec<String>;
}

/// Memory-mapped safetensors: a single file or the shards of an index.
pub struct SafetensorsSource {
    files: Vec<PathBuf>,
    inner: MmapedSafetensors,
    shapes: HashMap<String, Vec<usize>>,
}

impl SafetensorsSource {
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        for f in files {
            check_safetensors_header(f)?;
        }
        // SAFETY: the files are mapped read-only; like every mmap-based loader we rely on them not
        // being truncated while the process runs (the header and sizes are checked first).
        let inner = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| Error::Safetensors {
            path: files.first().cloned().unwrap_or_default(),
            message: e.to_string(),
        })?;
        let shapes = inner
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec()))
            .collect();
        Ok(Self {
            files: files.to_vec(),
            inner,
            shapes,
        })
    }
}

/// Checks that a safetensors header parses, that each entry's bytes are what its shape and
/// dtype need (naming the tensor that lies, issue 17) and that the data section is as long as
/// it claims, so a truncated download is a clear error instead of a failure deep inside a load.
fn check_safetensors_header(path: &Path) -> Result<()> {
    match runner_io::safetensors::read_header(path) {
        Ok(_) => Ok(()),
        Err(runner_io::safetensors::HeaderError::Io(e)) => {
            Err(crate::error::io_err(path)(e.source))
        }
        Err(runner_io::safetensors::HeaderError::Corrupt { path, message }) => {
            Err(Error::Safetensors { path, message })
        }
    }
}

impl TensorSource for SafetensorsSource {
    fn source_name(&self) -> String {
        match self.files.as_slice() {
            [one] => one.display().to_string(),
            many => format!(
                "{} ({} shards)",
                many.first()
                    .and_then(|p| p.parent())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                many.len()
            ),
        }
    }
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.shapes.get(name).cloned()
    }
    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.inner
            .load(name, device)
            .map_err(|e| Error::Safetensors {
                path: PathBuf::from(self.source_name()),
                message: format!("tensor `{name}`: {e}"),
            })
    }
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shapes.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Tensors already in memory (GGUF after dequantization, tests).
pub struct MemorySource {
    pub name: String,
    pub tensors: HashMap<String, Tensor>,
}

impl TensorSource for MemorySource {
    fn source_name(&self) -> String {
        self.name.clone()
    }
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.dims().to_vec())
    }
    fn load(&self, name: &str, _device: &Device) -> Result<Tensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| Error::MissingTensor {
                source_name: self.name.clone(),
                name: name.to_string(),
            })
    }
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tensors.keys().cloned().collect();
        v.sort();
        v
    }
}

/// A prefix-scoped view of a [`TensorSource`], like candle's `VarBuilder` but with our errors and
/// a compute dtype. Tensors come back as constants (never `Var`s): the base is frozen.
#[derive(Clone)]
pub struct Weights {
    source: Arc<dyn TensorSource>,
    prefix: String,
    dtype: DType,
    device: Device,
    /// Names loaded so far, to find tensors the model never asked for.
    used: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Quantizes decoder projections as they load (`load_in_4bit` / `load_in_8bit`).
    quantizer: Option<Arc<StreamingQuantizer>>,
}

/// Quantizes each decoder projection weight (`model.layers.N.{self_attn,mlp}.*_proj.weight`)
/// when [`Weights::get`] reads it: the tensor is read in f32 on the CPU, quantized, and dropped;
/// the model receives the shape-carrying placeholder of [`crate::quant`] and
/// [`StreamingQuantizer::attach`] hands the quantized weights to their layers afterwards. The
/// result is what [`crate::quant::quantize_frozen`] makes of the loaded model, without ever
/// holding it unquantized.
pub struct StreamingQuantizer {
    kind: runner_recipe::plan::BaseQuant,
    done: std::sync::Mutex<HashMap<String, Arc<crate::quant::QuantWeight>>>,
}

impl StreamingQuantizer {
    pub fn new(kind: runner_recipe::plan::BaseQuant) -> Arc<Self> {
        Arc::new(Self {
            kind,
            done: Default::default(),
        })
    }

    /// The projections [`crate::quant::quantize_frozen`] quantizes, by tensor name.
    fn wants(name: &str) -> bool {
        let Some(rest) = name.strip_prefix("model.layers.") else {
            return false;
        };
        let Some((layer, module)) = rest.split_once('.') else {
            return false;
        };
        layer.parse::<usize>().is_ok()
            && [
                "self_attn.q_proj.weight",
                "self_attn.k_proj.weight",
                "self_attn.v_proj.weight",
                "self_attn.o_proj.weight",
                "mlp.gate_proj.weight",
                "mlp.up_proj.weight",
                "mlp.down_proj.weight",
            ]
            .contains(&module)
    }

    /// Takes the quantized weight of tensor `name` (once); the caller gives it to its layer.
    pub(crate) fn take(&self, name: &str) -> Option<Arc<crate::quant::QuantWeight>> {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.remove(name)
    }

    /// A quantized tensor no layer took (a name mismatch that would leave a NaN placeholder).
    pub(crate) fn leftover(&self) -> Option<String> {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.keys().next().cloned()
    }
}

impl Weights {
    pub fn new(source: Arc<dyn TensorSource>, dtype: DType, device: Device) -> Self {
        Self {
            source,
            prefix: String::new(),
            dtype,
            device,
            used: Default::default(),
            quantizer: None,
        }
    }

    /// The same weights, quantizing decoder projections as they are read.
    pub fn with_quantizer(mut self, q: Arc<StreamingQuantizer>) -> Self {
        self.quantizer = Some(q);
        self
    }

    /// A view under `prefix.name`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            prefix,
            ..self.clone()
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Tensors of the source that were never loaded, except those transformers also ignores
    /// (`rotary_emb.inv_freq` buffers, an `lm_head.weight` saved beside tied embeddings).
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        self.source
            .names()
            .into_iter()
            .filter(|n| !used.contains(n))
            .filter(|n| !n.ends_with("rotary_emb.inv_freq") && n != "lm_head.weight")
            .collect()
    }

    pub fn source_name(&self) -> String {
        self.source.source_name()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.source.shape_of(&self.full_name(name)).is_some()
    }

    /// Loads `prefix.name`, checking its shape, converted to the compute dtype.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        let full = self.full_name(name);
        let found = self
            .source
            .shape_of(&full)
            .ok_or_else(|| Error::MissingTensor {
                source_name: self.source.source_name(),
                name: full.clone(),
            })?;
        if found != shape {
            return Err(Error::ShapeMismatch {
                source_name: self.source.source_name(),
                name: full,
                expected: shape.to_vec(),
                found,
            });
        }
        if let Some(q) = self
            .quantizer
            .as_ref()
            .filter(|_| StreamingQuantizer::wants(&full))
        {
            return self.get_quantized(q, &full, shape);
        }
        let t = self.source.load(&full, &self.device)?;
        self.check_finite(&full, &t)?;
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(full);
        if t.dtype() == self.dtype {
            Ok(t)
        } else {
            Ok(t.to_dtype(self.dtype)?)
        }
    }
}

impl Weights {
    /// A base weight with a NaN or an infinity would make every loss NaN, and the run would
    /// blame the learning rate (issue 17): it is refused by name while loading. One sum per
    /// tensor: NaN and ±inf propagate through it, and no finite weight of a real model sums
    /// to infinity in f32.
    fn check_finite(&self, full: &str, t: &Tensor) -> Result<()> {
        if !t.dtype().is_float() {
            return Ok(());
        }
        let sum = t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .sum(0)?
            .to_scalar::<f32>()?;
        if sum.is_finite() {
            return Ok(());
        }
        let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let bad = values
            .iter()
            .copied()
            .find(|v| !v.is_finite())
            .unwrap_or(sum);
        Err(self.not_finite(full, bad))
    }

    fn not_finite(&self, full: &str, value: f32) -> Error {
        Error::Weights {
            source_name: self.source.source_name(),
            message: format!(
                "tensor `{full}` holds {value}: the base model's weights are damaged (a NaN or \
                 an infinity in the checkpoint itself, not a training problem); download or \
                 convert the model again"
            ),
        }
    }

    /// Reads `full` in f32 on the CPU, quantizes it, drops it, and returns the placeholder.
    fn get_quantized(&self, q: &StreamingQuantizer, full: &str, shape: &[usize]) -> Result<Tensor> {
        let (rows, cols) = (shape[0], shape[1]);
        let values: Vec<f32> = self
            .source
            .load(full, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let Some(quantized) = crate::quant::QuantWeight::quantize(&values, rows, cols, q.kind)
        else {
            return Err(Error::Adapter(format!(
                "internal: {full}: a streaming quantizer without a quantization"
            )));
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(self.not_finite(full, values[i]));
        }
        drop(values);
        q.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(full.to_string(), Arc::new(quantized));
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(full.to_string());
        crate::quant::placeholder(rows, cols, self.dtype, &self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_17_group_7_a_header_that_lies_about_a_shape_names_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let header = br#"{"a.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b.weight":{"dtype":"F32","shape":[256,64],"data_offsets":[8,24]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 24]);
        std::fs::write(&path, &bytes).unwrap();
        let e = SafetensorsSource::open(&[path]).err().unwrap().to_string();
        assert!(
            e.contains("tensor `b.weight`: the header says shape [256, 64] F32 (65536 bytes) but gives it 16 bytes"),
            "{e}"
        );
    }

    #[test]
    fn issue_17_group_7_a_nan_base_weight_is_named_while_loading() {
        let mut tensors = HashMap::new();
        let t = Tensor::from_vec(vec![0.5f32, f32::NAN, 1.0, 2.0], (2, 2), &Device::Cpu).unwrap();
        tensors.insert("w".to_string(), t);
        let good = Tensor::from_vec(vec![0.5f32, 1.5], 2, &Device::Cpu).unwrap();
        tensors.insert("g".to_string(), good);
        let w = Weights::new(
            Arc::new(MemorySource {
                name: "mem".into(),
                tensors,
            }),
            DType::F32,
            Device::Cpu,
        );
        assert!(w.get(&[2], "g").is_ok());
        let e = w.get(&[2, 2], "w").unwrap_err().to_string();
        assert!(
            e.contains("tensor `w` holds NaN") && e.contains("weights are damaged"),
            "{e}"
        );
    }
}
