//! Collectives over TCP between the processes of a job, through rank 0: each rank sends its
//! values, rank 0 sums them in rank order (the same order every time: reproducible) and sends
//! the sum back. It is the CPU engine's communicator and, under CUDA, the rendezvous that hands
//! NCCL's unique id from rank 0 to the others. Every read has a deadline: a rank that stops
//! answering is reported by rank and stage instead of hanging the job.

use super::{Communicator, DistError, RankInfo};
use candle_core::{DType, Tensor};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"RUNR";

enum Links {
    /// Rank 0: a stream per other rank, index `r - 1`.
    Root(Vec<TcpStream>),
    /// Other ranks: the stream to rank 0.
    Leaf(TcpStream),
}

pub struct TcpComm {
    rank: usize,
    world_size: usize,
    timeout: Duration,
    links: Mutex<Links>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Kind {
    F64 = 1,
    F32 = 2,
    Bytes = 3,
}

impl TcpComm {
    /// Meets the other ranks at `MASTER_ADDR:MASTER_PORT` (rank 0 listens there). `timeout`
    /// bounds the rendezvous and every later wait for another rank.
    pub fn connect(info: &RankInfo, timeout: Duration) -> Result<Self, DistError> {
        let err = |message: String| DistError::Comm {
            rank: info.rank,
            message,
        };
        let links = if info.rank == 0 {
            let listener = TcpListener::bind(("0.0.0.0", info.master_port)).map_err(|e| {
                err(format!(
                    "cannot listen on port {} (MASTER_PORT): {e}; pick a free port",
                    info.master_port
                ))
            })?;
            listener
                .set_nonblocking(true)
                .map_err(|e| err(e.to_string()))?;
            let deadline = Instant::now() + timeout;
            let mut slots: Vec<Option<TcpStream>> = (1..info.world_size).map(|_| None).collect();
            while slots.iter().any(Option::is_none) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).map_err(|e| err(e.to_string()))?;
                        s.set_read_timeout(Some(timeout))
                            .map_err(|e| err(e.to_string()))?;
                        s.set_nodelay(true).map_err(|e| err(e.to_string()))?;
                        let mut hello = [0u8; 12];
                        s.read_exact(&mut hello)
                            .map_err(|e| err(format!("a rank's greeting failed: {e}")))?;
                        let (r, w) = (
                            u32::from_le_bytes(hello[4..8].try_into().unwrap_or_default()) as usize,
                            u32::from_le_bytes(hello[8..12].try_into().unwrap_or_default())
                                as usize,
                        );
                        if &hello[..4] != MAGIC {
                            return Err(err(format!(
                                "something that is not a runner rank connected to port {}",
                                info.master_port
                            )));
                        }
                        if w != info.world_size || r == 0 || r >= w {
                            return Err(err(format!(
                                "rank {r} of a job of {w} connected, but this job has WORLD_SIZE={}",
                                info.world_size
                            )));
                        }
                        if slots[r - 1].is_some() {
                            return Err(err(format!("two processes claim RANK={r}")));
                        }
                        s.write_all(MAGIC).map_err(|e| err(e.to_string()))?;
                        slots[r - 1] = Some(s);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            let missing: Vec<String> = slots
                                .iter()
                                .enumerate()
                                .filter(|(_, s)| s.is_none())
                                .map(|(i, _)| (i + 1).to_string())
                                .collect();
                            return Err(DistError::Stalled {
                                rank: 0,
                                message: format!(
                                    "rank(s) {} did not join within {} s (stage: rendezvous)",
                                    missing.join(", "),
                                    timeout.as_secs()
                                ),
                            });
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(err(format!("accepting ranks: {e}"))),
                }
            }
            Links::Root(slots.into_iter().flatten().collect())
        } else {
            let deadline = Instant::now() + timeout;
            let addr = format!("{}:{}", info.master_addr, info.master_port);
            let mut s = loop {
                let attempt = addr
                    .to_socket_addrs()
                    .map_err(|e| err(format!("MASTER_ADDR {addr}: {e}")))?
                    .find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok());
                if let Some(s) = attempt {
                    break s;
                }
                if Instant::now() > deadline {
                    return Err(DistError::Stalled {
                        rank: info.rank,
                        message: format!(
                            "rank 0 did not listen at {addr} within {} s (stage: rendezvous)",
                            timeout.as_secs()
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            s.set_read_timeout(Some(timeout))
                .map_err(|e| err(e.to_string()))?;
            s.set_nodelay(true).map_err(|e| err(e.to_string()))?;
            let mut hello = MAGIC.to_vec();
            hello.extend((info.rank as u32).to_le_bytes());
            hello.extend((info.world_size as u32).to_le_bytes());
            s.write_all(&hello).map_err(|e| err(e.to_string()))?;
            let mut ok = [0u8; 4];
            s.read_exact(&mut ok)
                .map_err(|e| err(format!("rank 0 refused this rank: {e}")))?;
            Links::Leaf(s)
        };
        Ok(Self {
            rank: info.rank,
            world_size: info.world_size,
            timeout,
            links: Mutex::new(links),
        })
    }

    fn io_err(&self, peer: usize, stage: &str, e: std::io::Error) -> DistError {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => DistError::Stalled {
                rank: self.rank,
                message: format!(
                    "waited {} s for rank {peer} at stage \"{stage}\"; rank {peer} is stuck or too slow",
                    self.timeout.as_secs()
                ),
            },
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
                DistError::Comm {
                    rank: self.rank,
                    message: format!(
                        "rank {peer} went away at stage \"{stage}\" (it failed; see its error)"
                    ),
                }
            }
            _ => DistError::Comm {
                rank: self.rank,
                message: format!("talking to rank {peer} at stage \"{stage}\": {e}"),
            },
        }
    }

    fn send(
        &self,
        s: &mut TcpStream,
        peer: usize,
        stage: &str,
        kind: Kind,
        payload: &[u8],
    ) -> Result<(), DistError> {
        let mut msg = Vec::with_capacity(payload.len() + stage.len() + 16);
        msg.extend((stage.len() as u32).to_le_bytes());
        msg.extend(stage.as_bytes());
        msg.push(kind as u8);
        msg.extend((payload.len() as u64).to_le_bytes());
        msg.extend(payload);
        s.write_all(&msg).map_err(|e| self.io_err(peer, stage, e))
    }

    fn recv(
        &self,
        s: &mut TcpStream,
        peer: usize,
        stage: &str,
        kind: Kind,
        len: Option<usize>,
    ) -> Result<Vec<u8>, DistError> {
        let mut n4 = [0u8; 4];
        s.read_exact(&mut n4)
            .map_err(|e| self.io_err(peer, stage, e))?;
        let mut theirs = vec![0u8; u32::from_le_bytes(n4) as usize];
        s.read_exact(&mut theirs)
            .map_err(|e| self.io_err(peer, stage, e))?;
        let mut head = [0u8; 9];
        s.read_exact(&mut head)
            .map_err(|e| self.io_err(peer, stage, e))?;
        let their_len = u64::from_le_bytes(head[1..9].try_into().unwrap_or_default()) as usize;
        let theirs = String::from_utf8_lossy(&theirs).into_owned();
        if theirs != stage || head[0] != kind as u8 || len.is_some_and(|l| l != their_len) {
            return Err(DistError::Comm {
                rank: self.rank,
                message: format!(
                    "ranks disagree: this rank is at stage \"{stage}\", rank {peer} at \"{theirs}\" (a bug: every rank must run the same collectives)"
                ),
            });
        }
        let mut payload = vec![0u8; their_len];
        s.read_exact(&mut payload)
            .map_err(|e| self.io_err(peer, stage, e))?;
        Ok(payload)
    }

    /// Sum of same-length little-endian arrays: rank 0 adds the ranks' contributions in order.
    fn reduce_bytes(
        &self,
        stage: &str,
        kind: Kind,
        mine: Vec<u8>,
        add: impl Fn(&mut [u8], &[u8]),
    ) -> Result<Vec<u8>, DistError> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *links {
            Links::Root(peers) => {
                let mut acc = mine;
                for (i, s) in peers.iter_mut().enumerate() {
                    let theirs = self.recv(s, i + 1, stage, kind, Some(acc.len()))?;
                    add(&mut acc, &theirs);
                }
                for (i, s) in peers.iter_mut().enumerate() {
                    self.send(s, i + 1, stage, kind, &acc)?;
                }
                Ok(acc)
            }
            Links::Leaf(s) => {
                let len = mine.len();
                self.send(s, 0, stage, kind, &mine)?;
                self.recv(s, 0, stage, kind, Some(len))
            }
        }
    }

    /// Rank 0's `data` on every rank (others pass `None`).
    pub fn broadcast(&self, stage: &str, data: Option<Vec<u8>>) -> Result<Vec<u8>, DistError> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *links {
            Links::Root(peers) => {
                let data = data.unwrap_or_default();
                for (i, s) in peers.iter_mut().enumerate() {
                    self.send(s, i + 1, stage, Kind::Bytes, &data)?;
                }
                Ok(data)
            }
            Links::Leaf(s) => self.recv(s, 0, stage, Kind::Bytes, None),
        }
    }
}

impl Communicator for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_f64(&self, stage: &str, values: &mut [f64]) -> Result<(), DistError> {
        let mine: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sum = self.reduce_bytes(stage, Kind::F64, mine, |acc, theirs| {
            for (a, b) in acc.chunks_exact_mut(8).zip(theirs.chunks_exact(8)) {
                let s = f64::from_le_bytes(a.try_into().unwrap_or_default())
                    + f64::from_le_bytes(b.try_into().unwrap_or_default());
                a.copy_from_slice(&s.to_le_bytes());
            }
        })?;
        for (v, b) in values.iter_mut().zip(sum.chunks_exact(8)) {
            *v = f64::from_le_bytes(b.try_into().unwrap_or_default());
        }
        Ok(())
    }

    fn all_reduce_f32(&self, stage: &str, bucket: &Tensor) -> Result<Tensor, DistError> {
        let values = bucket
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mine: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sum = self.reduce_bytes(stage, Kind::F32, mine, |acc, theirs| {
            for (a, b) in acc.chunks_exact_mut(4).zip(theirs.chunks_exact(4)) {
                let s = f32::from_le_bytes(a.try_into().unwrap_or_default())
                    + f32::from_le_bytes(b.try_into().unwrap_or_default());
                a.copy_from_slice(&s.to_le_bytes());
            }
        })?;
        let out: Vec<f32> = sum
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect();
        Ok(Tensor::from_vec(out, bucket.elem_count(), bucket.device())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn info(rank: usize, world: usize, port: u16) -> RankInfo {
        RankInfo {
            rank,
            world_size: world,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        }
    }

    /// Three ranks (threads) sum scalars and tensors, and receive rank 0's broadcast.
    #[test]
    fn three_ranks_all_reduce_and_broadcast() {
        let port = free_port();
        let handles: Vec<_> = (0..3)
            .map(|r| {
                thread::spawn(move || {
                    let c = TcpComm::connect(&info(r, 3, port), Duration::from_secs(20)).unwrap();
                    let mut v = [r as f64, 1.0];
                    c.all_reduce_f64("scalars", &mut v).unwrap();
                    let t = Tensor::from_vec(
                        vec![r as f32, 2.0 * r as f32, 1.5],
                        3,
                        &candle_core::Device::Cpu,
                    )
                    .unwrap();
                    let s = c
                        .all_reduce_f32("bucket", &t)
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    let b = c
                        .broadcast("id", (r == 0).then(|| b"nccl-id".to_vec()))
                        .unwrap();
                    (v, s, b)
                })
            })
            .collect();
        for h in handles {
            let (v, s, b) = h.join().unwrap();
            assert_eq!(v, [3.0, 3.0]);
            assert_eq!(s, vec![3.0, 6.0, 4.5]);
            assert_eq!(b, b"nccl-id");
        }
    }

    /// A rank that never reaches a collective is named, with the stage, within the timeout.
    #[test]
    fn a_stalled_rank_is_named() {
        let port = free_port();
        let stalled = thread::spawn(move || {
            let c = TcpComm::connect(&info(1, 2, port), Duration::from_secs(20)).unwrap();
            thread::sleep(Duration::from_secs(3));
            drop(c);
        });
        let c = TcpComm::connect(&info(0, 2, port), Duration::from_secs(1)).unwrap();
        let e = c
            .all_reduce_f64("step 7: scalars", &mut [1.0])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rank 0: stalled") && e.contains("rank 1") && e.contains("step 7: scalars"),
            "{e}"
        );
        stalled.join().unwrap();
    }

    /// Ranks at different collectives are a clear error, not a wrong sum.
    #[test]
    fn disagreeing_stages_are_an_error() {
        let port = free_port();
        let other = thread::spawn(move || {
            let c = TcpComm::connect(&info(1, 2, port), Duration::from_secs(20)).unwrap();
            let _ = c.all_reduce_f64("step 1: tokens", &mut [1.0]);
        });
        let c = TcpComm::connect(&info(0, 2, port), Duration::from_secs(20)).unwrap();
        let e = c
            .all_reduce_f64("step 1: scalars", &mut [1.0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ranks disagree"), "{e}");
        drop(c); // rank 1 then sees the connection close instead of waiting for its timeout
        other.join().unwrap();
    }

    #[test]
    fn a_missing_rank_fails_the_rendezvous_by_name() {
        let port = free_port();
        let e = TcpComm::connect(&info(0, 3, port), Duration::from_millis(300))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("rank(s) 1, 2 did not join"), "{e}");
    }
}
