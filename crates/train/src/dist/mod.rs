//! Data parallelism: this process's rank in the job (torchrun-style environment), which
//! micro-batches of a step it trains, and the `Communicator` that sums what the ranks computed:
//! the adapter gradients (in buckets), the step's trained-token count and loss sum, and the stop
//! flag. One process per device; every rank holds the frozen base and applies the same update,
//! so the adapters stay identical without ever being sent.
//!
//! Implementations: none at world size 1 (the trainer skips every reduction), [`tcp::TcpComm`]
//! between CPU processes (also the rendezvous that hands out NCCL's unique id), and NCCL under
//! the `cuda` feature ([`nccl::NcclComm`]).

pub mod tcp;
pub mod watchdog;

#[cfg(feature = "cuda")]
pub mod nccl;

use crate::optim::{Grads, ParamGroup};
use candle_core::{DType, Tensor};
use std::ops::Range;

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("distributed launch: {0}")]
    Env(String),
    #[error("rank {rank}: {message}")]
    Comm { rank: usize, message: String },
    #[error("rank {rank}: stalled: {message}")]
    Stalled { rank: usize, message: String },
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// This process's place in a data-parallel job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankInfo {
    pub rank: usize,
    pub world_size: usize,
    /// The device index on this machine (torchrun's `LOCAL_RANK`).
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl RankInfo {
    /// torchrun's variables: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`.
    /// `None` when neither `RANK` nor `WORLD_SIZE` is set (a plain single process); an error
    /// naming the variable when they are set but incomplete or inconsistent.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        if get("RANK").is_none() && get("WORLD_SIZE").is_none() {
            return Ok(None);
        }
        let num = |name: &str| -> Result<usize, DistError> {
            let v = get(name).ok_or_else(|| {
                DistError::Env(format!(
                    "{name} is not set (RANK and WORLD_SIZE are; a launcher sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)"
                ))
            })?;
            v.trim()
                .parse()
                .map_err(|_| DistError::Env(format!("{name}={v:?} is not a non-negative integer")))
        };
        let rank = num("RANK")?;
        let world_size = num("WORLD_SIZE")?;
        if world_size == 0 || rank >= world_size {
            return Err(DistError::Env(format!(
                "RANK={rank} is not below WORLD_SIZE={world_size}"
            )));
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(_) => num("LOCAL_RANK")?,
            None if world_size == 1 => 0,
            None => return Err(DistError::Env("LOCAL_RANK is not set".into())),
        };
        let (master_addr, master_port) = if world_size == 1 {
            (String::new(), 0)
        } else {
            let addr = get("MASTER_ADDR")
                .filter(|a| !a.is_empty())
                .ok_or_else(|| DistError::Env("MASTER_ADDR is not set".into()))?;
            let port = num("MASTER_PORT")?;
            let port = u16::try_from(port)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| DistError::Env(format!("MASTER_PORT={port} is not a TCP port")))?;
            (addr, port)
        };
        Ok(Some(Self {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
        }))
    }
}

/// The micro-batches of a step (`n` of them, in schedule order) that `rank` trains: a
/// contiguous, balanced block, so the job's step covers exactly what one process with
/// `world_size ×` the gradient accumulation covers.
pub fn shard(n: usize, rank: usize, world_size: usize) -> Range<usize> {
    let w = world_size.max(1);
    (rank * n / w)..((rank + 1) * n / w)
}

/// Sums across the ranks of a job. Every rank calls the same collectives in the same order;
/// `stage` names the call in errors and stall reports ("step 12: gradients").
pub trait Communicator {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Sums `values` over the ranks, in place.
    fn all_reduce_f64(&self, stage: &str, values: &mut [f64]) -> Result<(), DistError>;
    /// The sum over the ranks of a 1-D f32 tensor (one bucket), on the tensor's device.
    fn all_reduce_f32(&self, stage: &str, bucket: &Tensor) -> Result<Tensor, DistError>;
}

/// Gradient bucket size: DDP's default, 25 MiB of f32.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Sums the step's adapter gradients over the ranks, bucketed in a fixed (name) order, together
/// with `extra` (token counts, loss sums, flags) in one scalar reduction. A rank that trained
/// no micro-batch contributes zeros; a parameter no rank has a gradient for stays without one
/// (the optimizer then leaves it alone, as on one process).
pub fn all_reduce_grads(
    comm: &dyn Communicator,
    grads: &mut Grads,
    groups: &[ParamGroup],
    extra: &mut [f64],
    stage: &str,
    bucket_bytes: usize,
) -> Result<(), DistError> {
    let mut params: Vec<(&String, &candle_core::Var)> = groups
        .iter()
        .flat_map(|g| g.params.iter().map(|(n, v)| (n, v)))
        .collect();
    params.sort_by(|a, b| a.0.cmp(b.0));
    // Scalars first: the caller's values, then one presence count per parameter.
    let mut scalars = extra.to_vec();
    scalars.extend(
        params
            .iter()
            .map(|(n, _)| if grads.get(n).is_some() { 1.0 } else { 0.0 }),
    );
    comm.all_reduce_f64(&format!("{stage}: scalars"), &mut scalars)?;
    extra.copy_from_slice(&scalars[..extra.len()]);
    let present = &scalars[extra.len()..];

    let per_bucket = (bucket_bytes / 4).max(1);
    let mut start = 0;
    let mut bucket_no = 0;
    while start < params.len() {
        // Whole parameters per bucket; a parameter larger than a bucket travels alone.
        let mut end = start;
        let mut elems = 0;
        while end < params.len() {
            let n = params[end].1.as_tensor().elem_count();
            if end > start && elems + n > per_bucket {
                break;
            }
            elems += n;
            end += 1;
        }
        let mut flat = Vec::with_capacity(end - start);
        for (name, var) in &params[start..end] {
            let t = match grads.get(name) {
                Some(g) => g.to_dtype(DType::F32)?.flatten_all()?,
                None => Tensor::zeros(
                    var.as_tensor().elem_count(),
                    DType::F32,
                    var.as_tensor().device(),
                )?,
            };
            flat.push(t);
        }
        let bucket = Tensor::cat(&flat, 0)?;
        let summed =
            comm.all_reduce_f32(&format!("{stage}: gradient bucket {bucket_no}"), &bucket)?;
        let mut offset = 0;
        for (k, (name, var)) in params[start..end].iter().enumerate() {
            let n = var.as_tensor().elem_count();
            if present[start + k] > 0.0 {
                let g = summed
                    .narrow(0, offset, n)?
                    .reshape(var.as_tensor().shape())?;
                grads.set((*name).clone(), g);
            } else {
                grads.remove(name);
            }
            offset += n;
        }
        start = end;
        bucket_no += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn no_launcher_variables_is_a_single_process() {
        assert_eq!(RankInfo::from_env(env(&[])).unwrap(), None);
    }

    #[test]
    fn torchrun_variables_are_read() {
        let r = RankInfo::from_env(env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            r,
            RankInfo {
                rank: 3,
                world_size: 4,
                local_rank: 1,
                master_addr: "node0".into(),
                master_port: 29500
            }
        );
    }

    #[test]
    fn incomplete_or_inconsistent_variables_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("RANK", "0")], "WORLD_SIZE is not set"),
            (
                &[("RANK", "2"), ("WORLD_SIZE", "2")],
                "RANK=2 is not below WORLD_SIZE=2",
            ),
            (&[("RANK", "x"), ("WORLD_SIZE", "2")], "RANK=\"x\" is not"),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")],
                "MASTER_ADDR is not set",
            ),
            (
                &[
                    ("RANK", "0"),
                    ("WORLD_SIZE", "2"),
                    ("LOCAL_RANK", "0"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "70000"),
                ],
                "MASTER_PORT=70000 is not a TCP port",
            ),
        ];
        for (vars, want) in cases {
            let e = RankInfo::from_env(env(vars)).unwrap_err().to_string();
            assert!(e.contains(want), "{vars:?}: {e}");
        }
    }

    /// The shards of every rank tile the step exactly once, in order, balanced within one.
    #[test]
    fn shards_tile_the_step() {
        for world in 1..=5 {
            for n in 0..=12 {
                let mut next = 0;
                for rank in 0..world {
                    let r = shard(n, rank, world);
                    assert_eq!(r.start, next, "n={n} world={world} rank={rank}");
                    assert!(r.len() == n / world || r.len() == n / world + 1);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
        assert_eq!(shard(4, 1, 2), 2..4);
        assert_eq!(shard(3, 0, 2), 0..1);
    }
}
