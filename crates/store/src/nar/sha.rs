//! SHA-256 of a byte stream, computed on a thread of its own.
//!
//! SHA-256 is the slowest per-byte step of NAR ingest and the whole cost of
//! CalculateNAR, so it runs beside the rest: pieces (shared [`Bytes`], no
//! copy) are handed to a blocking thread in batches of about a MiB, through a
//! bounded queue. Short streams are hashed inline, where starting a thread
//! would cost more than it saves.
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::{sync::mpsc, task::JoinHandle};

/// Bytes hashed inline before the work moves to a thread.
const INLINE: u64 = 1 << 20;
/// Bytes gathered before a batch is handed over.
const BATCH_BYTES: usize = 1 << 20;
/// Batches queued for the thread (so at most this many MiB are held).
const QUEUE: usize = 8;

enum State {
    Inline(Sha256),
    Thread { tx: mpsc::Sender<Vec<Bytes>>, handle: JoinHandle<Sha256> },
}

pub(crate) struct ShaPipe {
    state: State,
    batch: Vec<Bytes>,
    batch_bytes: usize,
    total: u64,
}

fn gone() -> std::io::Error {
    std::io::Error::other("the SHA-256 thread stopped")
}

impl ShaPipe {
    pub(crate) fn new() -> Self {
        Self { state: State::Inline(Sha256::new()), batch: Vec::new(), batch_bytes: 0, total: 0 }
    }

    /// Bytes passed in so far.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    pub(crate) async fn update(&mut self, data: Bytes) -> std::io::Result<()> {
        self.total += data.len() as u64;
        match &mut self.state {
            State::Inline(h) if self.total <= INLINE => {
                h.update(&data);
                Ok(())
            }
            State::Inline(h) => {
                let mut h = std::mem::take(h);
                let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(QUEUE);
                let handle = tokio::task::spawn_blocking(move || {
                    while let Some(batch) = rx.blocking_recv() {
                        for piece in batch {
                            h.update(&piece);
                        }
                    }
                    h
                });
                self.state = State::Thread { tx, handle };
                self.push(data).await
            }
            State::Thread { .. } => self.push(data).await,
        }
    }

    async fn push(&mut self, data: Bytes) -> std::io::Result<()> {
        self.batch_bytes += data.len();
        self.batch.push(data);
        if self.batch_bytes >= BATCH_BYTES {
            self.send().await?;
        }
        Ok(())
    }

    async fn send(&mut self) -> std::io::Result<()> {
        let State::Thread { tx, .. } = &self.state else { return Ok(()) };
        self.batch_bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        tx.send(batch).await.map_err(|_| gone())
    }

    pub(crate) async fn finish(mut self) -> std::io::Result<[u8; 32]> {
        self.send().await?;
        let hasher = match self.state {
            State::Inline(h) => h,
            State::Thread { tx, handle } => {
                drop(tx);
                handle.await.map_err(|_| gone())?
            }
        };
        Ok(hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn piecewise_equals_one_shot() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        let want: [u8; 32] = Sha256::digest(&data).into();
        for piece in [1usize, 1000, 65_536, 1 << 20, 3 << 20] {
            let mut pipe = ShaPipe::new();
            // Few one-byte pieces: that path is the same, only slower.
            let len = if piece == 1 { 3000 } else { data.len() };
            for c in data[..len].chunks(piece) {
                pipe.update(Bytes::copy_from_slice(c)).await.unwrap();
            }
            assert_eq!(pipe.total(), len as u64);
            let got = pipe.finish().await.unwrap();
            let want: [u8; 32] = if len == data.len() { want } else { Sha256::digest(&data[..len]).into() };
            assert_eq!(got, want, "pieces of {piece}");
        }
    }
}
