//! NCCL all-reduce between GPU ranks (feature `cuda`), on candle's stream of each rank's device
//! so it orders with the backward's kernels. Rank 0 makes NCCL's unique id and hands it out over
//! the TCP rendezvous; each collective runs under the stall watchdog and waits for the stream,
//! so a rank that died is reported (rank and stage) instead of blocking NCCL forever.

use super::tcp::TcpComm;
use super::watchdog::Watchdog;
use super::{Communicator, DistError};
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::DeviceRepr;
use candle_core::cuda::cudarc::nccl::{Comm, Id, NcclType, ReduceOp};
use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

pub struct NcclComm {
    comm: Comm,
    device: Device,
    dog: Watchdog,
}

impl NcclComm {
    /// Every rank calls this at the same time, with its own GPU.
    pub fn new(tcp: &TcpComm, device: &Device, dog: Watchdog) -> Result<Self, DistError> {
        let rank = tcp.rank();
        let err = |message: String| DistError::Comm { rank, message };
        let Device::Cuda(dev) = device else {
            return Err(err("NCCL needs a GPU device".into()));
        };
        let id = if rank == 0 {
            let id = Id::new().map_err(|e| err(format!("ncclGetUniqueId: {e:?}")))?;
            Some(id.internal().iter().map(|&c| c as u8).collect())
        } else {
            None
        };
        let bytes = tcp.broadcast("NCCL unique id", id)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        if bytes.len() != internal.len() {
            return Err(err(format!(
                "NCCL unique id of {} bytes, 128 expected",
                bytes.len()
            )));
        }
        for (d, s) in internal.iter_mut().zip(&bytes) {
            *d = *s as std::ffi::c_char;
        }
        let comm = {
            let _g = dog.stage("NCCL initialisation");
            Comm::from_rank(
                dev.cuda_stream(),
                rank,
                tcp.world_size(),
                Id::uninit(internal),
            )
            .map_err(|e| err(format!("ncclCommInitRank: {e:?}")))?
        };
        Ok(Self {
            comm,
            device: device.clone(),
            dog,
        })
    }

    fn reduce(&self, stage: &str, t: &Tensor) -> Result<Tensor, DistError> {
        let _g = self.dog.stage(stage);
        let out = t
            .contiguous()?
            .apply_op1_no_bwd(&AllReduce { comm: &self.comm })?;
        // NCCL calls are asynchronous: wait here, under the watchdog, for the sum to exist.
        self.device.synchronize()?;
        Ok(out)
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_f64(&self, stage: &str, values: &mut [f64]) -> Result<(), DistError> {
        let t = Tensor::from_slice(values, values.len(), &self.device)?;
        let sum = self.reduce(stage, &t)?.to_vec1::<f64>()?;
        values.copy_from_slice(&sum);
        Ok(())
    }

    fn all_reduce_f32(&self, stage: &str, bucket: &Tensor) -> Result<Tensor, DistError> {
        self.reduce(stage, &bucket.to_dtype(candle_core::DType::F32)?)
    }
}

/// The sum over the ranks of a contiguous f32/f64 tensor into a new buffer.
struct AllReduce<'a> {
    comm: &'a Comm,
}

impl CustomOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("nccl-all-reduce: the tensor is on the CPU; NCCL sums GPU tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        fn go<T: CudaDType + DeviceRepr + NcclType>(
            comm: &Comm,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<CudaStorage> {
            let (a, b) = l
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("nccl-all-reduce: not contiguous".into()))?;
            let src = s.as_cuda_slice::<T>()?.slice(a..b);
            let dev = s.device().clone();
            let mut dst = unsafe { dev.alloc::<T>(b - a)? };
            comm.all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
            Ok(CudaStorage::wrap_cuda_slice(dst, dev))
        }
        let out = match s.dtype() {
            candle_core::DType::F32 => go::<f32>(self.comm, s, l)?,
            candle_core::DType::F64 => go::<f64>(self.comm, s, l)?,
            other => candle_core::bail!("nccl-all-reduce: {other:?} (f32 or f64 expected)"),
        };
        Ok((out, l.shape().clone()))
    }
}
