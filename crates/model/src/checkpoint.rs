//! Gradient checkpointing, on every device: a decoder layer keeps only its input during the
//! forward pass and recomputes itself in the backward pass (the same dropout masks: they are a
//! function of the model's dropout key, which does not move within a micro-batch), trading a
//! second forward for the activation memory. candle's backward cannot hand gradients for a layer's adapters back through
//! a custom op, so the recomputation deposits them in a [`GradSink`] and [`backward`] merges them.

use crate::error::Result;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, TensorId, Var};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Adapter gradients produced inside recomputed layers, keyed by the parameter.
#[derive(Clone, Default)]
pub struct GradSink(Arc<Mutex<HashMap<TensorId, (Tensor, Tensor)>>>);

impl GradSink {
    fn add(&self, param: &Tensor, grad: Tensor) -> candle_core::Result<()> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match m.remove(&param.id()) {
            Some((p, g)) => m.insert(param.id(), (p, (g + grad)?)),
            None => m.insert(param.id(), (param.clone(), grad)),
        };
        Ok(())
    }

    fn drain(&self) -> Vec<(Tensor, Tensor)> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.drain().map(|(_, v)| v).collect()
    }
}

/// A block that can run its forward pass again in the backward pass: a decoder layer with the
/// inputs it shares with the others (positions, masks), owned so the backward can hold it.
pub trait Recomputable: Send + Sync + 'static {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    /// The parameters whose gradients the recomputation deposits in the [`GradSink`].
    fn adapter_vars(&self) -> Vec<Var>;
}

/// `loss.backward()`, plus the adapter gradients that checkpointed blocks left in `sink`.
pub fn backward(loss: &Tensor, sink: &GradSink) -> Result<GradStore> {
    sink.drain(); // stale entries from a forward that was never backpropagated
    let mut grads = loss.backward()?;
    for (param, g) in sink.drain() {
        let total = match grads.remove(&param) {
            Some(existing) => (existing + g)?,
            None => g,
        };
        grads.insert(&param, total);
    }
    Ok(grads)
}

/// Everything a layer's recomputation needs.
struct Recompute {
    block: Box<dyn Recomputable>,
    train: bool,
    sink: GradSink,
    /// The forward output, handed over once in `cpu_fwd`.
    output: Mutex<Option<Tensor>>,
}

impl Recompute {
    fn take_output(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = crate::ops::take_output(&self.output, "checkpoint")?;
        let shape = y.shape().clone();
        let (st, l) = y.storage_and_layout();
        match (&*st, l.contiguous_offsets()) {
            (candle_core::Storage::Cpu(c), Some((0, n))) if n == shape.elem_count() => {
                Ok((c.clone(), shape))
            }
            _ => candle_core::bail!("checkpoint: unexpected output layout"),
        }
    }

    #[cfg(feature = "cuda")]
    fn take_cuda_output(&self) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let y = crate::ops::take_output(&self.output, "checkpoint")?;
        let (st, l) = y.storage_and_layout();
        match &*st {
            candle_core::Storage::Cuda(c) => Ok((c.try_clone(l)?, y.shape().clone())),
            _ => candle_core::bail!("checkpoint: the output is not on the GPU"),
        }
    }

    /// Re-runs the layer on `x` with a graph, deposits adapter gradients, returns d/dx.
    fn backward(&self, x: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        let xv = Var::from_tensor(&x.detach())?;
        let y = self
            .block
            .forward(xv.as_tensor(), self.train)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let gs = (y * grad.detach())?.sum_all()?.backward()?;
        for v in self.block.adapter_vars() {
            if let Some(g) = gs.get(v.as_tensor()) {
                self.sink.add(v.as_tensor(), g.clone())?;
            }
        }
        gs.get(xv.as_tensor())
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("checkpoint: no input gradient".into()))
    }
}

struct CheckpointOp1(Recompute);
struct CheckpointOp2(Recompute);

impl CustomOp1 for CheckpointOp1 {
    fn name(&self) -> &'static str {
        "checkpointed-layer"
    }
    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.0.take_output()
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _s: &candle_core::CudaStorage,
        _l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.0.take_cuda_output()
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.0.backward(x, grad)?))
    }
}

/// The second argument is one of the layer's adapter parameters: it only puts the op on the
/// backward path when the layer input itself carries no gradient (the first layers).
impl CustomOp2 for CheckpointOp2 {
    fn name(&self) -> &'static str {
        "checkpointed-layer"
    }
    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.0.take_output()
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _s1: &candle_core::CudaStorage,
        _l1: &Layout,
        _s2: &candle_core::CudaStorage,
        _l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.0.take_cuda_output()
    }
    fn bwd(
        &self,
        x: &Tensor,
        _anchor: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.0.backward(x, grad)?), None))
    }
}

/// Runs `block` on `x` keeping only `x` for the backward pass.
pub(crate) fn checkpointed(
    block: impl Recomputable,
    x: &Tensor,
    train: bool,
    sink: &GradSink,
) -> Result<Tensor> {
    let vars = block.adapter_vars();
    if vars.is_empty() && !x.track_op() {
        // Nothing upstream or inside needs a gradient: no graph to save.
        return block.forward(x, train);
    }
    let y = block.forward(&x.detach(), train)?.contiguous()?.detach();
    let op = Recompute {
        block: Box::new(block),
        train,
        sink: sink.clone(),
        output: Mutex::new(Some(y)),
    };
    Ok(match vars.first() {
        Some(anchor) => x.apply_op2(anchor.as_tensor(), CheckpointOp2(op))?,
        None => x.apply_op1(CheckpointOp1(op))?,
    })
}
