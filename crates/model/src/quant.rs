//! Quantized frozen weights: NF4 with double quantization exactly as bitsandbytes lays it out
//! (`bnb_4bit_quant_type: nf4`, `bnb_4bit_use_double_quant`), and row-wise int8 (LLM.int8's
//! `int8_vectorwise_quant`, no outlier split). Checked bit for bit against bitsandbytes 0.50.2 on
//! the CPU by `tools/model/nf4_reference.py` (fixtures in `fixtures/nf4/`).
//!
//! NF4: blocks of 64 over the flattened row-major `[out, in]` weight, an fp32 absmax per block,
//! each value mapped to the nearest of 16 code values (ties to the lower one), two per byte with
//! the first in the HIGH nibble. The absmax values are themselves quantized: their mean
//! (`offset`) is subtracted and the rest stored as 8-bit indices into bitsandbytes' signed
//! dynamic map, in blocks of 256 with one fp32 scale each. Resident size per parameter:
//! 1/2 + 1/64 + 4/(64·256) ≈ 0.5159 bytes.

use crate::error::Result;
use candle_core::{DType, Device, Tensor};
use runner_recipe::plan::BaseQuant;
use std::sync::{Arc, OnceLock};

// NF4 on a GPU: the packed parts uploaded once, dequantized by the kernel.
#[cfg(feature = "cuda")]
mod cuda;

/// The 16 NF4 code values: the one table, in [`crate::ops::dequant`].
pub use crate::ops::dequant::NF4_CODE;

/// NF4 block size (bitsandbytes' `blocksize=64`, QLoRA's default).
pub const NF4_BLOCK: usize = 64;
/// Block size of the double quantization of the absmax values.
pub const NF4_BLOCK2: usize = 256;

/// bitsandbytes' `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`, as fp32
/// bit patterns (written by `tools/model/nf4_reference.py` into `fixtures/nf4/dynamic_map.f32`;
/// a test checks the two agree). Computing it here would need `torch.linspace`'s exact rounding.
const DYNAMIC_MAP_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// The signed dynamic 8-bit map used for the absmax values.
pub fn dynamic_map() -> [f32; 256] {
    DYNAMIC_MAP_BITS.map(f32::from_bits)
}

/// bitsandbytes' CPU `quantize_blockwise` searches a 65536-point grid over [-1, 1]: point `i`
/// (`-1 + 2i/65535`) maps to the number of code midpoints below it.
fn dynamic_lut() -> &'static [u8] {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| {
        let code = dynamic_map();
        let mids: Vec<f32> = code.windows(2).map(|w| 0.5f32 * (w[0] + w[1])).collect();
        let mut lut = vec![0u8; 65536];
        let mut j = 0usize;
        for (i, slot) in lut.iter_mut().enumerate() {
            let pt = -1.0f32 + (2.0f32 * i as f32) / 65535.0f32;
            while j < mids.len() && mids[j] < pt {
                j += 1;
            }
            *slot = j as u8;
        }
        lut
    })
}

/// A weight `[rows, cols]` in NF4 with double-quantized absmax.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4 {
    pub rows: usize,
    pub cols: usize,
    /// `ceil(n/2)` bytes, element `2i` in the high nibble of byte `i`.
    pub packed: Vec<u8>,
    /// One byte per 64-block: the index of `absmax - offset` in the dynamic map.
    pub absmax_q: Vec<u8>,
    /// One fp32 scale per 256 absmax values (bitsandbytes' `state2.absmax`).
    pub absmax2: Vec<f32>,
    /// The mean of the absmax values (bitsandbytes' `offset`).
    pub offset: f32,
}

impl Nf4 {
    /// Quantizes a row-major `[rows, cols]` fp32 weight.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Self {
        Self::quantize_with_offset(w, rows, cols, None)
    }

    /// As [`Nf4::quantize`]; `offset` replaces the mean of the absmax values (bitsandbytes takes
    /// `torch.mean`, whose summation order can move the last bit; the fixtures pass it in).
    pub fn quantize_with_offset(w: &[f32], rows: usize, cols: usize, offset: Option<f32>) -> Self {
        assert_eq!(w.len(), rows * cols, "NF4: weight length");
        let n = w.len();
        let bounds: Vec<f32> = NF4_CODE
            .windows(2)
            .map(|p| (p[0] + p[1]) / 2.0f32)
            .collect();
        let index = |v: f32| bounds.iter().filter(|&&b| b < v).count() as u8;
        let nblocks = n.div_ceil(NF4_BLOCK);
        let mut absmax = Vec::with_capacity(nblocks);
        let mut packed = vec![0u8; n.div_ceil(2)];
        for (b, block) in w.chunks(NF4_BLOCK).enumerate() {
            let am = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            absmax.push(am);
            let inv = 1.0f32 / am.max(1e-38);
            for (j, &v) in block.iter().enumerate() {
                let q = index((v * inv).clamp(-1.0, 1.0));
                let i = b * NF4_BLOCK + j;
                packed[i / 2] |= if i.is_multiple_of(2) { q << 4 } else { q };
            }
        }
        if n % 2 == 1 {
            packed[n / 2] |= 7; // bitsandbytes pads with 0.0, code index 7
        }
        let offset = offset.unwrap_or_else(|| {
            (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len().max(1) as f64) as f32
        });
        let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let (absmax_q, absmax2) = quantize_blockwise_dynamic(&centred);
        Self {
            rows,
            cols,
            packed,
            absmax_q,
            absmax2,
            offset,
        }
    }

    /// The per-block absmax values as bitsandbytes restores them: `code[q]·absmax2 + offset`.
    pub fn absmax(&self) -> Vec<f32> {
        let code = dynamic_map();
        self.absmax_q
            .iter()
            .enumerate()
            .map(|(i, &q)| code[q as usize] * self.absmax2[i / NF4_BLOCK2] + self.offset)
            .collect()
    }

    /// The fp32 weight, row-major (`dequantize_4bit`): `nf4[nibble]·absmax[block]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let n = self.rows * self.cols;
        let absmax = self.absmax();
        let mut out = vec![0f32; n];
        // Blocks are independent: split the work over the cores for large weights.
        let threads = if n >= 1 << 18 {
            std::thread::available_parallelism().map_or(1, |t| t.get())
        } else {
            1
        };
        let per = n.div_ceil(NF4_BLOCK).div_ceil(threads) * NF4_BLOCK;
        std::thread::scope(|s| {
            for (c, chunk) in out.chunks_mut(per.max(NF4_BLOCK)).enumerate() {
                let start = c * per.max(NF4_BLOCK);
                let packed = &self.packed;
                let absmax = &absmax;
                let mut work = move || {
                    for (k, blk) in chunk.chunks_mut(NF4_BLOCK).enumerate() {
                        let first = start + k * NF4_BLOCK; // even: blocks are 64 long
                        let scale = absmax[first / NF4_BLOCK];
                        for (j, pair) in blk.chunks_mut(2).enumerate() {
                            let byte = packed[(first >> 1) + j];
                            pair[0] = NF4_CODE[(byte >> 4) as usize] * scale;
                            if let Some(second) = pair.get_mut(1) {
                                *second = NF4_CODE[(byte & 15) as usize] * scale;
                            }
                        }
                    }
                };
                if threads == 1 {
                    work();
                } else {
                    s.spawn(work);
                }
            }
        });
        out
    }

    /// Bytes held: packed values, absmax indices, their scales and the offset.
    pub fn nbytes(&self) -> usize {
        self.packed.len() + self.absmax_q.len() + 4 * self.absmax2.len() + 4
    }
}

/// bitsandbytes' CPU `quantize_blockwise` (fp32 input, blocks of 256, the dynamic map):
/// `v = clamp(x·(1/absmax), -1, 1)`, `t = trunc(((v + 1)·0.5)·65535 + 0.5)` with each step
/// rounded to fp32, index `lut[t]`; an all-zero block gets index 0.
fn quantize_blockwise_dynamic(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let lut = dynamic_lut();
    let mut q = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len().div_ceil(NF4_BLOCK2));
    for block in x.chunks(NF4_BLOCK2) {
        let am = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        scales.push(am);
        if am == 0.0 {
            q.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        let inv = 1.0f32 / am;
        for &v in block {
            let v = (v * inv).clamp(-1.0, 1.0);
            let t = ((v + 1.0f32) * 0.5f32) * 65535.0f32 + 0.5f32;
            q.push(lut[t as u16 as usize]);
        }
    }
    (q, scales)
}

/// A weight `[rows, cols]` quantized row-wise to int8 (`int8_vectorwise_quant`):
/// `q = round_half_even(w·(127/absmax_row))`, restored as `q·absmax_row·(1/127)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8 {
    pub rows: usize,
    pub cols: usize,
    pub q: Vec<i8>,
    /// `max |w|` of each row.
    pub stats: Vec<f32>,
}

impl Int8 {
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "int8: weight length");
        let mut q = Vec::with_capacity(w.len());
        let mut stats = Vec::with_capacity(rows);
        for row in w.chunks(cols.max(1)) {
            let am = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            stats.push(am);
            if am == 0.0 {
                q.extend(std::iter::repeat_n(0i8, row.len()));
                continue;
            }
            let scale = 127.0f32 / am;
            q.extend(row.iter().map(|&v| (v * scale).round_ties_even() as i8));
        }
        Self {
            rows,
            cols,
            q,
            stats,
        }
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let inv = 1.0f32 / 127.0f32;
        let mut out = Vec::with_capacity(self.q.len());
        for (row, &s) in self.q.chunks(self.cols.max(1)).zip(&self.stats) {
            out.extend(row.iter().map(|&q| (q as f32 * s) * inv));
        }
        out
    }

    pub fn nbytes(&self) -> usize {
        self.q.len() + 4 * self.stats.len()
    }
}

/// A frozen weight held quantized; dequantized on the fly by the matmul ops.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantWeight {
    Nf4(Nf4),
    Int8(Int8),
}

impl QuantWeight {
    pub fn quantize(w: &[f32], rows: usize, cols: usize, kind: BaseQuant) -> Option<Self> {
        match kind {
            BaseQuant::None => None,
            BaseQuant::Nf4 => Some(Self::Nf4(Nf4::quantize(w, rows, cols))),
            BaseQuant::Int8 => Some(Self::Int8(Int8::quantize(w, rows, cols))),
        }
    }

    /// `(rows, cols)` = `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Self::Nf4(q) => (q.rows, q.cols),
            Self::Int8(q) => (q.rows, q.cols),
        }
    }

    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            Self::Nf4(q) => q.dequantize(),
            Self::Int8(q) => q.dequantize(),
        }
    }

    /// The dequantized weight `[out, in]` in `dtype` on `device`.
    pub fn to_tensor(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = Tensor::from_vec(self.dequantize(), self.dims(), &Device::Cpu)?;
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    pub fn nbytes(&self) -> usize {
        match self {
            Self::Nf4(q) => q.nbytes(),
            Self::Int8(q) => q.nbytes(),
        }
    }
}

/// What [`quantize_frozen`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuantSummary {
    /// Linear layers quantized.
    pub layers: usize,
    /// Parameters held quantized.
    pub params: usize,
    /// Bytes those parameters now take.
    pub bytes: usize,
}

/// The `weight` of a quantized layer: its shape, dtype and device with one NaN behind a
/// zero-stride view (4 bytes), so shape queries work and any read of its values by code that
/// should have called [`crate::nn::Linear::dense_weight`] shows as NaN, never as silent zeros.
pub(crate) fn placeholder(
    rows: usize,
    cols: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    Ok(Tensor::new(&[f32::NAN], device)?
        .to_dtype(dtype)?
        .reshape(())?
        .broadcast_as((rows, cols))?)
}

/// `x Wᵀ` for a quantized frozen `W`, `x: (m, in)`: the op of [`crate::ops::frozen_matmul`]
/// (dequantized for the forward and again in the backward, which computes only `dy·W`).
pub fn quant_matmul(x: &Tensor, w: &Arc<QuantWeight>) -> Result<Tensor> {
    let frozen = crate::ops::frozen_matmul::Frozen::Quant(w.clone());
    crate::ops::frozen_matmul::frozen_matmul(x, &frozen)
}

impl crate::ops::dequant::Dequantize for QuantWeight {
    fn dims(&self) -> (usize, usize) {
        QuantWeight::dims(self)
    }

    fn dequantize(&self) -> Vec<f32> {
        QuantWeight::dequantize(self)
    }

    /// On a GPU, NF4 is dequantized there by its kernel from packed parts uploaded once.
    fn dense_on(self: Arc<Self>, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if device.is_cuda()
            && let Some(t) = cuda::nf4_dense(&self, dtype, device)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?
        {
            return Ok(t);
        }
        Tensor::from_vec(QuantWeight::dequantize(&self), self.dims(), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }
}

#[cfg(test)]
mod tests {
    //! Fixtures: `python3 tools/model/nf4_reference.py` (bitsandbytes 0.50.2, CPU).
    use super::*;
    use std::path::PathBuf;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/nf4")
    }

    fn bytes(name: &str) -> Vec<u8> {
        std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn f32s(name: &str) -> Vec<f32> {
        bytes(name)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    struct Case {
        name: &'static str,
        rows: usize,
        cols: usize,
        offset: f32,
    }

    fn cases() -> Vec<Case> {
        let meta: serde_json::Value =
            serde_json::from_slice(&bytes("meta.json")).expect("meta.json");
        ["a", "b"]
            .into_iter()
            .map(|name| {
                let c = &meta["cases"][name];
                Case {
                    name,
                    rows: c["shape"][0].as_u64().unwrap() as usize,
                    cols: c["shape"][1].as_u64().unwrap() as usize,
                    offset: f32::from_bits(c["offset_bits"].as_u64().unwrap() as u32),
                }
            })
            .collect()
    }

    #[test]
    fn dynamic_map_matches_bitsandbytes() {
        assert_eq!(bits(&dynamic_map()), bits(&f32s("dynamic_map.f32")));
    }

    #[test]
    fn nf4_matches_bitsandbytes_bit_for_bit() {
        for c in cases() {
            let f = |s: &str| format!("{}.{s}", c.name);
            let w = f32s(&f("weight.f32"));
            // Packed values do not depend on the offset.
            let ours = Nf4::quantize(&w, c.rows, c.cols);
            assert_eq!(ours.packed, bytes(&f("packed.u8")), "{}: packed", c.name);
            // Our offset is the f64 mean; torch's fp32 summation can differ in the last bit.
            let ulps = (ours.offset.to_bits() as i64 - c.offset.to_bits() as i64).abs();
            assert!(
                ulps <= 1,
                "{}: offset {} vs {}",
                c.name,
                ours.offset,
                c.offset
            );
            // With bitsandbytes' offset everything else is identical.
            let q = Nf4::quantize_with_offset(&w, c.rows, c.cols, Some(c.offset));
            assert_eq!(q.packed, ours.packed);
            assert_eq!(q.absmax_q, bytes(&f("absmax_q.u8")), "{}: absmax_q", c.name);
            assert_eq!(
                bits(&q.absmax2),
                bits(&f32s(&f("absmax2.f32"))),
                "{}",
                c.name
            );
            assert_eq!(
                bits(&q.dequantize()),
                bits(&f32s(&f("dequant.f32"))),
                "{}: dequantized weight",
                c.name
            );
        }
    }

    #[test]
    fn int8_matches_bitsandbytes_bit_for_bit() {
        for c in cases() {
            let f = |s: &str| format!("{}.{s}", c.name);
            let q = Int8::quantize(&f32s(&f("weight.f32")), c.rows, c.cols);
            let want: Vec<i8> = bytes(&f("int8.i8")).into_iter().map(|b| b as i8).collect();
            assert_eq!(q.q, want, "{}: int8", c.name);
            assert_eq!(bits(&q.stats), bits(&f32s(&f("int8_stats.f32"))));
            assert_eq!(bits(&q.dequantize()), bits(&f32s(&f("int8_dequant.f32"))));
        }
    }

    #[test]
    fn nf4_round_trip_error_is_bounded() {
        // Every value lands within half the widest NF4 gap (0.152·absmax) plus the absmax's own
        // 8-bit error.
        let w: Vec<f32> = (0..64 * 300)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.03)
            .collect();
        let q = Nf4::quantize(&w, 300, 64);
        let d = q.dequantize();
        for (b, (x, y)) in w.chunks(64).zip(d.chunks(64)).enumerate() {
            let am = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (u, v) in x.iter().zip(y) {
                assert!((u - v).abs() <= 0.16 * am + 1e-3, "block {b}: {u} vs {v}");
            }
        }
        assert_eq!(q.nbytes(), 64 * 300 / 2 + 300 + 2 * 4 + 4);
    }
}
