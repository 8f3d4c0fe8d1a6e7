//! Where `runner run` trains (CPU, one GPU, or one rank of a data-parallel job) and the
//! launcher behind `--gpus N` / `--processes N`: it starts N copies of this same command with
//! torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so a job
//! started by us and one started by torchrun, Slurm or Kubernetes run the same code.

use crate::args::ParallelArgs;
use anyhow::{Context, bail};
use runner_train::dist::RankInfo;
use std::process::{Child, Command, ExitCode};
use std::time::Duration;

/// Set in a launcher: SIGINT/SIGTERM are for its ranks, it only waits for them.
pub static IGNORE_SIGNALS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// This process trains alone: on the CPU (`None`) or one GPU.
    Single { gpu: Option<usize> },
    /// One rank of a job (started by [`launch`] or an outside launcher).
    Rank { info: RankInfo, gpu: Option<usize> },
    /// Start this many ranks of this command and wait for them.
    Launch { processes: usize },
}

impl Placement {
    /// The rank whose output the user reads.
    pub fn is_rank_zero(&self) -> bool {
        match self {
            Placement::Rank { info, .. } => info.rank == 0,
            _ => true,
        }
    }
}

pub fn placement(p: &ParallelArgs) -> anyhow::Result<Placement> {
    placement_from(p, |k| std::env::var(k).ok())
}

fn placement_from(
    p: &ParallelArgs,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Placement> {
    if p.gpus == Some(0) || p.processes == Some(0) {
        bail!("--gpus and --processes take a count of at least 1");
    }
    if let Some(n) = p.gpus
        && !runner_kernels::cuda_compiled()
    {
        // The same error a GPU request gets anywhere: built without CUDA.
        runner_kernels::select_device(Some(n - 1))?;
    }
    Ok(match RankInfo::from_env(env)? {
        Some(info) => Placement::Rank {
            gpu: p.gpus.map(|_| info.local_rank),
            info,
        },
        None => match (p.gpus, p.processes) {
            (Some(1), _) => Placement::Single { gpu: Some(0) },
            (Some(n), _) | (None, Some(n)) if n > 1 => Placement::Launch { processes: n },
            _ => Placement::Single { gpu: None },
        },
    })
}

/// Starts `n` ranks of this command on this machine and waits for them. When one fails the
/// others are stopped, and the error names the rank.
pub fn launch(n: usize) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("finding this executable to start the ranks")?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let port = match std::env::var("MASTER_PORT") {
        Ok(p) => p,
        Err(_) => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port for the ranks' rendezvous")?
            .port()
            .to_string(),
    };
    // Ctrl-C reaches every rank through the terminal; each finishes its step and saves. The
    // launcher only waits.
    IGNORE_SIGNALS.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(n);
    for rank in 0..n {
        let child = Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .spawn();
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop_all(&mut children);
                bail!("starting rank {rank}: {e}");
            }
        }
    }
    let mut first_failure: Option<(usize, std::process::ExitStatus)> = None;
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            match children[i].1.try_wait() {
                Ok(Some(status)) => {
                    let (rank, _) = children.remove(i);
                    if !status.success() && first_failure.is_none() {
                        first_failure = Some((rank, status));
                        // The others would wait for it until their timeout: stop them now.
                        stop_all(&mut children);
                    }
                }
                Ok(None) => i += 1,
                Err(e) => {
                    let rank = children[i].0;
                    stop_all(&mut children);
                    bail!("waiting for rank {rank}: {e}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match first_failure {
        None => Ok(ExitCode::SUCCESS),
        Some((rank, status)) => {
            eprintln!("error: rank {rank} of {n} failed ({status}); the other ranks were stopped");
            Ok(ExitCode::from(
                status.code().map_or(1, |c| c.clamp(1, 255) as u8),
            ))
        }
    }
}

/// Kills the ranks this launcher started (by their own process ids) and reaps them.
fn stop_all(children: &mut Vec<(usize, Child)>) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
    }
    for (_, c) in children.iter_mut() {
        let _ = c.wait();
    }
    children.clear();
}

/// How long a rank waits for another at a rendezvous or a collective before it reports the
/// stall: `RUNNER_DIST_TIMEOUT` seconds, default 600 (a first step can be slow).
pub fn dist_timeout() -> anyhow::Result<Duration> {
    match std::env::var("RUNNER_DIST_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(600)),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0)
            .map(Duration::from_secs_f64)
            .with_context(|| {
                format!("RUNNER_DIST_TIMEOUT={v:?} is not a positive number of seconds")
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(
        gpus: Option<usize>,
        processes: Option<usize>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Placement> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        placement_from(&ParallelArgs { gpus, processes }, move |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn plain_runs_and_launches() {
        assert_eq!(
            place(None, None, &[]).unwrap(),
            Placement::Single { gpu: None }
        );
        assert_eq!(
            place(None, Some(1), &[]).unwrap(),
            Placement::Single { gpu: None }
        );
        assert_eq!(
            place(None, Some(3), &[]).unwrap(),
            Placement::Launch { processes: 3 }
        );
        assert!(place(None, Some(0), &[]).is_err());
    }

    #[test]
    fn under_a_launcher_each_process_is_a_rank() {
        let env = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
        ];
        match place(None, Some(2), &env).unwrap() {
            Placement::Rank { info, gpu } => {
                assert_eq!((info.rank, info.world_size, gpu), (1, 2, None));
            }
            other => panic!("{other:?}"),
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn gpus_without_cuda_is_a_clear_error() {
        let e = place(Some(2), None, &[]).unwrap_err().to_string();
        assert!(e.contains("built without CUDA"), "{e}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn gpus_launch_one_rank_per_gpu() {
        assert_eq!(
            place(Some(1), None, &[]).unwrap(),
            Placement::Single { gpu: Some(0) }
        );
        assert_eq!(
            place(Some(4), None, &[]).unwrap(),
            Placement::Launch { processes: 4 }
        );
        let env = [("RANK", "0"), ("WORLD_SIZE", "1")];
        assert_eq!(
            place(Some(1), None, &env).unwrap(),
            Placement::Rank {
                info: RankInfo {
                    rank: 0,
                    world_size: 1,
                    local_rank: 0,
                    master_addr: String::new(),
                    master_port: 0
                },
                gpu: Some(0)
            }
        );
    }
}
