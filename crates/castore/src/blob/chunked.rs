//! [`ChunkedBlobService`]: blobs as content-defined chunks on a [`KvStore`].
use std::{collections::VecDeque, sync::Arc};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    task::JoinHandle,
};

use super::{BlobReader, BlobService, ChunkFetch, ChunkMeta, ChunkedReader, Chunker, check_expected};
use crate::{
    B3Digest, Error, Result,
    kv::{KvStore, Table},
    proto,
};

/// Chunks hashed and stored concurrently with reading the next ones.
const WRITE_WINDOW: usize = 8;

/// A [`BlobService`] that splits blobs into chunks (stored once each, by
/// digest) and keeps a chunk list for every blob of more than one chunk.
#[derive(Clone)]
pub struct ChunkedBlobService {
    kv: Arc<dyn KvStore>,
    chunker: Chunker,
}

impl ChunkedBlobService {
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Self::with_chunker(kv, Chunker::default())
    }

    pub fn with_chunker(kv: Arc<dyn KvStore>, chunker: Chunker) -> Self {
        Self { kv, chunker }
    }

    fn fetch(&self) -> ChunkFetch {
        let kv = self.kv.clone();
        Arc::new(move |digest: B3Digest| {
            let kv = kv.clone();
            Box::pin(async move {
                kv.get(Table::Chunks, digest.as_bytes())
                    .await?
                    .ok_or_else(|| Error::Storage(format!("chunk {digest} is missing")))
            })
        })
    }

    fn store_chunk(&self, data: Bytes) -> JoinHandle<Result<ChunkMeta>> {
        let kv = self.kv.clone();
        tokio::spawn(async move {
            let digest = B3Digest::of(&data);
            let meta = ChunkMeta { digest, size: data.len() as u64 };
            kv.put(Table::Chunks, vec![(digest.to_bytes(), data)]).await?;
            Ok(meta)
        })
    }
}

fn encode_chunks(chunks: &[ChunkMeta]) -> Bytes {
    let msg = proto::StatBlobResponse {
        chunks: chunks
            .iter()
            .map(|c| proto::stat_blob_response::ChunkMeta { digest: c.digest.to_bytes(), size: c.size })
            .collect(),
        bao: Bytes::new(),
    };
    msg.encode_to_vec().into()
}

fn decode_chunks(data: &[u8]) -> Result<Vec<ChunkMeta>> {
    let msg = proto::StatBlobResponse::decode(data).map_err(Error::storage)?;
    msg.chunks
        .into_iter()
        .map(|c| Ok(ChunkMeta { digest: B3Digest::try_from(&c.digest).map_err(Error::storage)?, size: c.size }))
        .collect()
}

async fn join(handle: JoinHandle<Result<ChunkMeta>>) -> Result<ChunkMeta> {
    handle.await.map_err(Error::storage)?
}

#[async_trait]
impl BlobService for ChunkedBlobService {
    async fn stat(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>> {
        if let Some(list) = self.kv.get(Table::Blobs, digest.as_bytes()).await? {
            return Ok(Some(decode_chunks(&list)?));
        }
        Ok(self.kv.contains(Table::Chunks, digest.as_bytes()).await?.then(Vec::new))
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<BlobReader>> {
        if let Some(list) = self.kv.get(Table::Blobs, digest.as_bytes()).await? {
            return Ok(Some(Box::new(ChunkedReader::new(decode_chunks(&list)?, self.fetch()))));
        }
        let chunk = self.kv.get(Table::Chunks, digest.as_bytes()).await?;
        Ok(chunk.map(|data| Box::new(std::io::Cursor::new(data)) as BlobReader))
    }

    async fn put(
        &self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
        expected: Option<&B3Digest>,
    ) -> Result<B3Digest> {
        let max = self.chunker.max;
        let mut buf = BytesMut::with_capacity(2 * max);
        let mut whole = blake3::Hasher::new();
        let mut pending: VecDeque<JoinHandle<Result<ChunkMeta>>> = VecDeque::new();
        let mut chunks = Vec::new();
        let mut held: Option<Bytes> = None;
        let mut eof = false;
        let result: Result<()> = async {
            loop {
                while !eof && buf.len() < max {
                    if buf.capacity() - buf.len() < max / 4 {
                        buf.reserve(2 * max);
                    }
                    eof = reader.read_buf(&mut buf).await? == 0;
                }
                while buf.len() >= max || (eof && !buf.is_empty()) {
                    let chunk = buf.split_to(self.chunker.cut(&buf)).freeze();
                    whole.update(&chunk);
                    // The first chunk waits for a second: a one-chunk blob is its
                    // own chunk, so it is stored only once its digest is checked.
                    if held.is_none() && pending.is_empty() && chunks.is_empty() {
                        held = Some(chunk);
                        continue;
                    }
                    for chunk in held.take().into_iter().chain([chunk]) {
                        if pending.len() >= WRITE_WINDOW {
                            chunks.push(join(pending.pop_front().expect("not empty")).await?);
                        }
                        pending.push_back(self.store_chunk(chunk));
                    }
                }
                if eof {
                    break;
                }
            }
            for handle in pending.drain(..) {
                chunks.push(join(handle).await?);
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            pending.iter().for_each(JoinHandle::abort);
            return Err(e);
        }

        let digest = B3Digest::from(whole.finalize());
        check_expected(&digest, expected)?;
        if chunks.is_empty() {
            // One chunk (the empty blob is one empty chunk): the blob is the chunk.
            self.kv.put(Table::Chunks, vec![(digest.to_bytes(), held.unwrap_or_default())]).await?;
        } else {
            self.kv.put(Table::Blobs, vec![(digest.to_bytes(), encode_chunks(&chunks))]).await?;
        }
        Ok(digest)
    }
}
