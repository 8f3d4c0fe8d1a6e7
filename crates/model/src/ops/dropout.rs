//! Inverted dropout (`torch.nn.Dropout`: zero with probability `p`, scale the rest by
//! `1/(1-p)`) with masks from a counter-based generator, Philox4x32-10 (Salmon et al., SC'11;
//! Random123): the bit of element `e` is a pure function of (seed, step, micro-batch, layer,
//! projection, `e`), so a mask is recomputed instead of stored or replayed (gradient
//! checkpointing), is the same for any number of data-parallel ranks (the micro-batch index is
//! the step's global one, never the rank's) and is the same on the CPU and on a GPU
//! (`kernels/dropout.cu` computes the same function; checked on the CPU by the emulation
//! harness in `tools/cuda-emu/`).
//!
//! Layout, shared with the kernel: counter = `[e / 4, step, micro, layer << 8 | projection]`,
//! key = `[seed_lo, seed_hi]`; element `e` takes word `e % 4` of the output and is kept when that
//! word is `≥ p·2³²`. Bits are packed 32 to a `u32` word, element `e` at bit `e % 32` of word
//! `e / 32`.

use super::{cpu_f32, cpu_store};
use crate::error::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds.
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            key = [key[0].wrapping_add(W0), key[1].wrapping_add(W1)];
        }
        let p0 = u64::from(M0) * u64::from(ctr[0]);
        let p1 = u64::from(M1) * u64::from(ctr[2]);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        ctr = [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0];
    }
    ctr
}

/// Where a mask sits in the training run: set by the trainer before each micro-batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropoutKey {
    pub seed: u64,
    /// The optimizer step (0-based).
    pub step: u64,
    /// The micro-batch's index within the step, over all ranks.
    pub micro: u64,
}

/// The key every adapter of one model reads.
pub type SharedKey = Arc<Mutex<DropoutKey>>;

/// Which projection a mask is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    pub layer: u32,
    pub projection: u32,
}

impl DropoutKey {
    fn counter(&self, stream: Stream, block: u32) -> ([u32; 4], [u32; 2]) {
        (
            [
                block,
                self.step as u32,
                self.micro as u32,
                (stream.layer << 8) | (stream.projection & 0xff),
            ],
            [self.seed as u32, (self.seed >> 32) as u32],
        )
    }

    /// The 32-bit draw of element `e`.
    pub fn draw(&self, stream: Stream, e: usize) -> u32 {
        let (ctr, key) = self.counter(stream, (e / 4) as u32);
        philox4x32_10(ctr, key)[e % 4]
    }
}

/// The keep threshold: element kept when its draw is `≥ p·2³²`.
pub fn threshold(p: f64) -> u32 {
    (p * 4_294_967_296.0).min(u32::MAX as f64) as u32
}

/// Which of `n` inputs inverted dropout keeps, one bit each, and `1/(1-p)` for the kept ones.
#[derive(Debug, Clone)]
pub struct DropMask {
    pub bits: Vec<u32>,
    pub scale: f32,
}

impl DropMask {
    /// The mask of `n` elements for `stream` under `key` (computed on the CPU; the GPU side
    /// runs `kernels/dropout.cu` for the same bits).
    pub fn new(key: &DropoutKey, stream: Stream, n: usize, p: f64) -> Self {
        let th = threshold(p);
        let bits = (0..n.div_ceil(32))
            .into_par_iter()
            .map(|w| {
                let mut word = 0u32;
                for blk in 0..8 {
                    let e0 = w * 32 + blk * 4;
                    if e0 >= n {
                        break;
                    }
                    let (ctr, k) = key.counter(stream, (e0 / 4) as u32);
                    let r = philox4x32_10(ctr, k);
                    for (j, &u) in r.iter().enumerate() {
                        if e0 + j < n && u >= th {
                            word |= 1 << (blk * 4 + j);
                        }
                    }
                }
                word
            })
            .collect();
        Self {
            bits,
            scale: (1.0 / (1.0 - p)) as f32,
        }
    }

    pub fn keeps(&self, i: usize) -> bool {
        self.bits[i / 32] >> (i % 32) & 1 == 1
    }

    /// `x ∘ mask`, scaled, in place.
    pub fn apply_in_place(&self, x: &mut [f32]) {
        const CHUNK: usize = super::CHUNK;
        x.par_chunks_mut(CHUNK).enumerate().for_each(|(c, xc)| {
            for (j, v) in xc.iter_mut().enumerate() {
                *v = if self.keeps(c * CHUNK + j) {
                    *v * self.scale
                } else {
                    0.0
                };
            }
        });
    }

    /// The mask as a tensor of `1/(1-p)` and 0 (the composed paths multiply by it).
    pub fn to_tensor(
        &self,
        shape: &candle_core::Shape,
        dtype: candle_core::DType,
        dev: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        let n = shape.elem_count();
        let v: Vec<f32> = (0..n)
            .into_par_iter()
            .map(|i| if self.keeps(i) { self.scale } else { 0.0 })
            .collect();
        candle_core::Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)
    }
}

/// One dropout: where its mask sits and the drop probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropSpec {
    pub key: DropoutKey,
    pub stream: Stream,
    pub p: f64,
}

impl DropSpec {
    /// The mask of `n` elements, on the host.
    pub fn mask(&self, n: usize) -> DropMask {
        DropMask::new(&self.key, self.stream, n, self.p)
    }
}

/// Inverted dropout of `x` with the mask of `spec`, on `x`'s device (a GPU computes the bits
/// itself with `kernels/dropout.cu`); the backward applies the same mask to the gradient.
pub fn dropout(x: &Tensor, spec: DropSpec) -> Result<Tensor> {
    if !x.device().is_cpu() {
        super::require(super::Op::Dropout, x)?;
    }
    Ok(x.contiguous()?.apply_op1(DropoutOp(spec))?)
}

struct DropoutOp(DropSpec);

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut y = cpu_f32(s, l, self.name())?.into_owned();
        self.0.mask(y.len()).apply_in_place(&mut y);
        Ok((cpu_store(s.dtype(), y, self.name())?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::apply(s, l, &self.0)?, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1(DropoutOp(self.0))?))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{DropSpec, threshold};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::cudarc::driver::{DeviceRepr, PushKernelArg};
    use candle_core::cuda::{CudaDType, CudaStorage};
    use candle_core::{DType, Layout, Result};
    use runner_kernels::cuda::{elementwise, entry, function, launch_err, view};
    use runner_kernels::source::DROPOUT;

    pub fn apply(s: &CudaStorage, l: &Layout, spec: &DropSpec) -> Result<CudaStorage> {
        fn go<T: CudaDType + DeviceRepr>(
            s: &CudaStorage,
            l: &Layout,
            spec: &DropSpec,
        ) -> Result<CudaStorage> {
            let n = l.shape().elem_count();
            let dev = s.device().clone();
            let f = function(&dev, &DROPOUT, &entry("dropout_apply", s.dtype())?)?;
            let x = view::<T>(s, l)?;
            let y = unsafe { dev.alloc::<T>(n)? };
            let k = spec.key;
            let (n64, lo, hi, step, micro) = (
                n as u64,
                k.seed as u32,
                (k.seed >> 32) as u32,
                k.step as u32,
                k.micro as u32,
            );
            let stream_id = (spec.stream.layer << 8) | (spec.stream.projection & 0xff);
            let (th, scale) = (threshold(spec.p), (1.0 / (1.0 - spec.p)) as f32);
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&x)
                .arg(&y)
                .arg(&n64)
                .arg(&lo)
                .arg(&hi)
                .arg(&step)
                .arg(&micro)
                .arg(&stream_id)
                .arg(&th)
                .arg(&scale);
            unsafe { b.launch(elementwise(n)) }.map_err(launch_err)?;
            drop(b);
            Ok(CudaStorage::wrap_cuda_slice(y, dev))
        }
        match s.dtype() {
            DType::F32 => go::<f32>(s, l, spec),
            DType::BF16 => go::<half::bf16>(s, l, spec),
            other => candle_core::bail!("dropout: no CUDA kernel for {other:?}"),
        }
    }
}

/// The projection numbers of the mask streams: the one list of projections
/// ([`crate::ops::PROJECTIONS`]), then the LM head.
pub fn stream_of(module: &str) -> Stream {
    let layer = module
        .split('.')
        .skip_while(|p| *p != "layers")
        .nth(1)
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(u32::MAX >> 8);
    let last = module.rsplit('.').next().unwrap_or(module);
    let projection = super::PROJECTIONS
        .iter()
        .position(|p| p.leaf == last)
        .unwrap_or(super::PROJECTIONS.len()) as u32;
    Stream { layer, projection }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's `kat_vectors` for philox4x32 with 10 rounds: counter, key → output.
    #[test]
    fn issue_12_philox_matches_the_random123_known_answers() {
        let kat: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
            (
                [0; 4],
                [0; 2],
                [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (ctr, key, want) in kat {
            assert_eq!(philox4x32_10(ctr, key), want);
        }
    }

    #[test]
    fn masks_keep_the_expected_fraction_and_depend_on_every_key_part() {
        let key = DropoutKey {
            seed: 7,
            step: 3,
            micro: 1,
        };
        let s = Stream {
            layer: 2,
            projection: 4,
        };
        let n = 100_003;
        let m = DropMask::new(&key, s, n, 0.25);
        let kept = (0..n).filter(|&i| m.keeps(i)).count() as f64 / n as f64;
        assert!((kept - 0.75).abs() < 0.01, "{kept}");
        for i in [0, 1, 31, 32, 4097, n - 1] {
            assert_eq!(m.keeps(i), key.draw(s, i) >= threshold(0.25), "{i}");
        }
        let others = [
            DropMask::new(&DropoutKey { seed: 8, ..key }, s, n, 0.25),
            DropMask::new(&DropoutKey { step: 4, ..key }, s, n, 0.25),
            DropMask::new(&DropoutKey { micro: 2, ..key }, s, n, 0.25),
            DropMask::new(&key, Stream { layer: 3, ..s }, n, 0.25),
            DropMask::new(&key, Stream { projection: 5, ..s }, n, 0.25),
        ];
        for o in others {
            assert_ne!(o.bits, m.bits);
        }
    }

    /// `kernels/dropout.cu` run on the CPU by the CUDA emulator (`tools/cuda-emu/dropout-masks.sh`
    /// writes the fixture; the harness also checks the kernel's Philox on Random123's known
    /// answers) gives the same mask words as this generator.
    #[test]
    fn issue_12_cpu_masks_equal_the_cuda_kernel_run_by_the_emulator() {
        let text = include_str!("../../fixtures/dropout/emu_masks.txt");
        let mut cases = 0;
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f[0], "case", "{line}");
            let num = |i: usize| f[i].parse::<u64>().unwrap();
            let key = DropoutKey {
                seed: num(1),
                step: num(2),
                micro: num(3),
            };
            let stream = Stream {
                layer: num(4) as u32,
                projection: num(5) as u32,
            };
            let (n, p) = (num(6) as usize, f[7].parse::<f64>().unwrap());
            let mut words = Vec::new();
            while let Some(l) = lines.peek()
                && !l.starts_with("case")
            {
                words.extend(
                    l.split_whitespace()
                        .map(|w| u32::from_str_radix(w, 16).unwrap()),
                );
                lines.next();
            }
            assert_eq!(DropMask::new(&key, stream, n, p).bits, words, "{line}");
            cases += 1;
        }
        assert_eq!(cases, 4);
    }

    /// The op's forward is `x ∘ mask · 1/(1-p)` and its backward the same on the gradient.
    #[test]
    fn the_dropout_op_applies_the_mask_and_its_transpose() {
        let spec = DropSpec {
            key: DropoutKey {
                seed: 3,
                step: 1,
                micro: 0,
            },
            stream: Stream {
                layer: 0,
                projection: 1,
            },
            p: 0.4,
        };
        let x = candle_core::Var::from_tensor(&crate::ops::testing::randn(&[7, 11], 1)).unwrap();
        let y = dropout(x.as_tensor(), spec).unwrap();
        let m = spec.mask(77);
        let xs: Vec<f32> = x.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let ys: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..77 {
            let want = if m.keeps(i) { xs[i] / 0.6 } else { 0.0 };
            assert!((ys[i] - want).abs() < 1e-6);
        }
        let g = y.sum_all().unwrap().backward().unwrap();
        let gs: Vec<f32> = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (i, &gi) in gs.iter().enumerate() {
            let want = if m.keeps(i) { 1.0 / 0.6 } else { 0.0 };
            assert!((gi - want).abs() < 1e-6);
        }
    }

    #[test]
    fn streams_come_from_the_module_name() {
        assert_eq!(
            stream_of("base_model.model.model.layers.12.mlp.down_proj"),
            Stream {
                layer: 12,
                projection: 6
            }
        );
        assert_eq!(stream_of("model.layers.0.self_attn.q_proj").projection, 0);
        assert_eq!(stream_of("lm_head").projection, 7);
    }
}
