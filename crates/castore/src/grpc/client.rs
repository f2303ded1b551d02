//! Client backends: [`GrpcBlobService`] and [`GrpcDirectoryService`] talk to
//! any castore server (storefront, tvix/snix daemons) and check what it
//! sends: every blob and chunk against its BLAKE3, every directory against
//! its digest and its parent's record.
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use futures::{FutureExt, StreamExt, TryStreamExt, future::BoxFuture, stream::BoxStream};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, ReadBuf};
use tonic::{Code, transport::Channel};

use super::{
    Package, PackageRewrite,
    closures::{self, Arrivals},
    server::{EXPECTED_DIGEST_HEADER, MAX_BATCH_DIGESTS},
};
use crate::{
    B3Digest, BlobReader, BlobService, ChunkMeta, Directory, DirectoryService, Error, Result,
    blob::{ChunkFetch, ChunkedReader, check_expected, check_whole, checked, copy_out, read_each},
    dirsvc::{MAX_CLOSURE_BYTES, closures_each},
    proto::{
        self,
        batch::{
            blob_batch_service_client::BlobBatchServiceClient,
            directory_batch_service_client::DirectoryBatchServiceClient,
        },
        blob_service_client::BlobServiceClient,
        directory_service_client::DirectoryServiceClient,
    },
};

/// The transport clients use: a channel speaking the chosen package.
pub type Transport = PackageRewrite<Channel>;

/// Largest message accepted from a server.
const MAX_MESSAGE: usize = 64 << 20;
/// Size of the BlobChunks we upload.
const PUT_CHUNK_SIZE: usize = 1 << 20;

/// Where a client's token comes from when its address carries none.
pub const TOKEN_ENV: &str = "STOREFRONT_TOKEN";

/// Opens a (lazy) channel for `grpc+http://host:port`, `grpc+https://…` or
/// `grpc+unix:/abs/path.sock`. `?package=tvix` speaks the tvix package names
/// (default: snix). A token, the address's password
/// (`grpc+http://:TOKEN@host:port`, any user name) or else
/// `$STOREFRONT_TOKEN`, goes with every call as `authorization: Bearer
/// TOKEN`: storefront asks writers (and, if configured, readers) for one.
/// `grpc+https` trusts the system's CAs, or instead the certificates in the
/// file `$SSL_CERT_FILE` names (rustls-native-certs reads it): that is how
/// a server with a private CA is trusted.
pub fn connect(url: &url::Url) -> Result<Transport> {
    let package = match url.query_pairs().find(|(k, _)| k == "package").map(|(_, v)| v.into_owned()) {
        None => Package::Snix,
        Some(p) if p == "snix" => Package::Snix,
        Some(p) if p == "tvix" => Package::Tvix,
        Some(p) => return Err(Error::InvalidRequest(format!("unknown package {p:?}: use snix or tvix"))),
    };
    let bad = |e: &dyn std::fmt::Display| Error::InvalidRequest(format!("{}: {e}", redacted(url.as_str())));
    let channel = match url.scheme() {
        "grpc+unix" => {
            let path = url.path().to_owned();
            if path.is_empty() {
                return Err(bad(&"needs a socket path"));
            }
            tuned(tonic::transport::Endpoint::from_static("http://[::1]:50051")).connect_with_connector_lazy(
                tower::service_fn(move |_: http::Uri| {
                    let path = path.clone();
                    async move { Ok::<_, io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                }),
            )
        }
        scheme @ ("grpc+http" | "grpc+https") => {
            let host = url.host_str().ok_or_else(|| bad(&"needs a host"))?;
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            let target = format!("{}://{host}{port}", &scheme[5..]);
            let mut endpoint =
                tuned(tonic::transport::Endpoint::from_shared(target).map_err(|e| bad(&e))?).tcp_nodelay(true);
            if scheme == "grpc+https" {
                let tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
                endpoint = endpoint.tls_config(tls).map_err(|e| bad(&e))?;
            }
            endpoint.connect_lazy()
        }
        other => return Err(bad(&format!("not a gRPC scheme: {other}"))),
    };
    let transport = PackageRewrite::speak(channel, package);
    match token(url, std::env::var(TOKEN_ENV).ok()) {
        Some(t) => transport.with_token(&t),
        None => Ok(transport),
    }
}

/// HTTP/2 settings for moving blobs: frames of up to 1 MiB (the default
/// 16 KiB makes a frame, and a read, per 16 KiB received) and flow-control
/// windows that let a stream run ahead of the reader.
fn tuned(endpoint: tonic::transport::Endpoint) -> tonic::transport::Endpoint {
    endpoint.max_frame_size(1 << 20).initial_stream_window_size(8 << 20).initial_connection_window_size(32 << 20)
}

/// The token for `url`: its password, percent-decoded, else `from_env`.
fn token(url: &url::Url, from_env: Option<String>) -> Option<String> {
    url.password()
        .map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned())
        .or(from_env)
        .filter(|t| !t.is_empty())
}

/// A service address as it may be logged or shown: a password (a token) is
/// replaced by `***`.
pub fn redacted(addr: &str) -> String {
    match url::Url::parse(addr) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => addr.to_owned(),
    }
}

fn not_found<T>(r: Result<T, tonic::Status>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

/// A [`BlobService`] on a remote castore server.
///
/// [`BlobService::read_many`] first tries storefront's batch call
/// ([`crate::proto::batch`]); a server that answers UNIMPLEMENTED (tvix and
/// snix daemons) is remembered and read blob by blob from then on.
#[derive(Clone)]
pub struct GrpcBlobService {
    client: BlobServiceClient<Transport>,
    batch: BlobBatchServiceClient<Transport>,
    /// Cleared once the server turned the batch call down.
    batch_served: Arc<AtomicBool>,
}

impl GrpcBlobService {
    pub fn new(transport: Transport) -> Self {
        let client = BlobServiceClient::new(transport.clone()).max_decoding_message_size(MAX_MESSAGE);
        let batch = BlobBatchServiceClient::new(transport).max_decoding_message_size(MAX_MESSAGE);
        Self { client, batch, batch_served: Arc::new(AtomicBool::new(true)) }
    }

    /// One batch call for `wanted` (at most [`MAX_BATCH_DIGESTS`]), or blob
    /// by blob if the server has no batch call.
    async fn read_batch(&self, wanted: Vec<(B3Digest, u64)>) -> Result<BoxStream<'_, Result<Bytes>>> {
        let req = proto::batch::ReadBlobsRequest { digests: wanted.iter().map(|(d, _)| d.to_bytes()).collect() };
        let pieces = match self.batch.clone().read(req).await {
            Ok(resp) => resp.into_inner(),
            Err(s) if s.code() == Code::Unimplemented => {
                tracing::debug!("the server has no batch read; reading blob by blob");
                self.batch_served.store(false, Ordering::Relaxed);
                return Ok(read_each(self, wanted));
            }
            Err(s) => return Err(s.into()),
        };
        let start = Assembly { pieces, wanted, next: 0, carry: None };
        Ok(futures::stream::try_unfold(start, |mut a| async move {
            match a.blob().await? {
                Some(blob) => Ok(Some((blob, a))),
                None => Ok(None),
            }
        })
        .boxed())
    }

    /// Reads a whole blob or chunk that the caller expects to be `digest`.
    async fn read_verified(mut client: BlobServiceClient<Transport>, digest: B3Digest) -> Result<Bytes> {
        let mut stream = client
            .read(proto::ReadBlobRequest { digest: digest.to_bytes() })
            .await
            .map_err(|s| match s.code() {
                Code::NotFound => Error::Storage(format!("chunk {digest} is missing on the server")),
                _ => s.into(),
            })?
            .into_inner();
        let mut data = Vec::new();
        while let Some(msg) = stream.message().await? {
            data.extend_from_slice(&msg.data);
        }
        let actual = B3Digest::of(&data);
        if actual != digest {
            return Err(Error::Storage(format!("server sent {actual} for chunk {digest}")));
        }
        Ok(data.into())
    }
}

/// Blobs up to this size are read in one request, without a Stat first
/// ([`BlobService::open_read_sized`]); larger ones by their chunks.
const DIRECT_READ_MAX: u64 = 1 << 20;

#[async_trait]
impl BlobService for GrpcBlobService {
    async fn stat(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>> {
        let req = proto::StatBlobRequest { digest: digest.to_bytes(), send_chunks: true, send_bao: false };
        let Some(resp) = not_found(self.client.clone().stat(req).await)? else {
            return Ok(None);
        };
        let chunks = resp
            .into_inner()
            .chunks
            .into_iter()
            .map(|c| {
                let digest = B3Digest::try_from(&c.digest)
                    .map_err(|e| Error::Storage(format!("server sent a bad chunk digest: {e}")))?;
                Ok(ChunkMeta { digest, size: c.size })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(chunks))
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<BlobReader>> {
        let Some(chunks) = self.stat(digest).await? else {
            return Ok(None);
        };
        if !chunks.is_empty() {
            let client = self.client.clone();
            let fetch: ChunkFetch = Arc::new(move |d| Self::read_verified(client.clone(), d).boxed());
            return Ok(Some(Box::new(ChunkedReader::new(chunks, fetch))));
        }
        Ok(Some(Box::new(StreamingReader::new(self.client.clone(), *digest))))
    }

    async fn open_read_sized(&self, digest: &B3Digest, size: u64) -> Result<Option<BlobReader>> {
        if size > DIRECT_READ_MAX {
            return self.open_read(digest).await;
        }
        // Small: one Read of the whole blob, checked against its digest at
        // the end of the stream, without asking for a chunk list first.
        Ok(Some(Box::new(StreamingReader::new(self.client.clone(), *digest))))
    }

    async fn read_checked(&self, digest: &B3Digest, size: u64) -> Result<Option<BoxStream<'static, Result<Bytes>>>> {
        // One call for the whole blob, however it is chunked: checked here
        // as a whole (the caller learns of a mismatch at the end, before it
        // uses what it wrote).
        let req = proto::ReadBlobRequest { digest: digest.to_bytes() };
        let Some(stream) = not_found_stream(self.client.clone().read(req).await)? else {
            return Ok(None);
        };
        Ok(Some(checked(stream.map_ok(|c| c.data).map_err(Error::from).boxed(), *digest, size)))
    }

    fn read_many(&self, wanted: Vec<(B3Digest, u64)>) -> BoxStream<'_, Result<Bytes>> {
        if !self.batch_served.load(Ordering::Relaxed) {
            return read_each(self, wanted);
        }
        let mut groups = Vec::new();
        let mut rest = wanted;
        while rest.len() > MAX_BATCH_DIGESTS {
            let tail = rest.split_off(MAX_BATCH_DIGESTS);
            groups.push(std::mem::replace(&mut rest, tail));
        }
        groups.push(rest);
        futures::stream::iter(groups)
            .map(move |group| futures::stream::once(self.read_batch(group)).try_flatten())
            .flatten()
            .boxed()
    }

    async fn put(&self, reader: &mut (dyn AsyncRead + Send + Unpin), expected: Option<&B3Digest>) -> Result<B3Digest> {
        let (tx, rx) = tokio::sync::mpsc::channel::<proto::BlobChunk>(4);
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(e) = expected {
            req.metadata_mut().insert(EXPECTED_DIGEST_HEADER, e.to_string().parse().expect("ascii"));
        }
        let mut client = self.client.clone();
        let call = client.put(req);
        let feed = async move {
            let mut hasher = blake3::Hasher::new();
            loop {
                let mut buf = Vec::with_capacity(PUT_CHUNK_SIZE);
                let n = (&mut *reader).take(PUT_CHUNK_SIZE as u64).read_to_end(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, Error>(B3Digest::from(hasher.finalize()));
                }
                hasher.update(&buf);
                if tx.send(proto::BlobChunk { data: buf.into() }).await.is_err() {
                    // The call ended early; its status says why.
                    return Ok(B3Digest::from(hasher.finalize()));
                }
            }
        };
        let (resp, local) = tokio::join!(call, feed);
        let local = local?;
        let remote = B3Digest::try_from(&resp?.into_inner().digest)
            .map_err(|e| Error::Storage(format!("server sent a bad digest: {e}")))?;
        if remote != local {
            return Err(Error::Storage(format!("server stored {remote}, but we sent {local}")));
        }
        check_expected(&local, expected)?;
        Ok(local)
    }
}

/// Whole blobs put together from the pieces of one batch call, checked
/// against what was asked: each blob's pieces in turn, exactly its size,
/// its digest, nothing more after the last.
struct Assembly {
    pieces: tonic::Streaming<proto::batch::BlobPiece>,
    wanted: Vec<(B3Digest, u64)>,
    /// Index of the blob to put together next.
    next: usize,
    /// What was read past the end of the previous blob: its next piece, or
    /// the error that ended the stream.
    carry: Option<Result<proto::batch::BlobPiece>>,
}

impl Assembly {
    async fn piece(&mut self) -> Result<Option<proto::batch::BlobPiece>> {
        match self.carry.take() {
            Some(p) => p.map(Some),
            None => Ok(self.pieces.message().await?),
        }
    }

    async fn blob(&mut self) -> Result<Option<Bytes>> {
        let Some(&(digest, size)) = self.wanted.get(self.next) else {
            if let Some(extra) = self.piece().await? {
                return Err(Error::Storage(format!(
                    "server sent a piece of blob #{} after the {} blobs asked for",
                    extra.index,
                    self.wanted.len()
                )));
            }
            return Ok(None);
        };
        let index = self.next;
        let unexpected = |got: Option<u32>, have: usize| {
            Error::Storage(match got {
                Some(i) => format!(
                    "server sent a piece of blob #{i} while blob #{index} ({digest}) had {have} of {size} bytes"
                ),
                None => format!("server ended the batch while blob #{index} ({digest}) had {have} of {size} bytes"),
            })
        };
        let first = match self.piece().await? {
            Some(p) if p.index as usize == index => p.data,
            other => return Err(unexpected(other.map(|p| p.index), 0)),
        };
        let data = if first.len() as u64 >= size {
            first
        } else {
            let mut data = bytes::BytesMut::with_capacity(size as usize);
            data.extend_from_slice(&first);
            while (data.len() as u64) < size {
                match self.piece().await? {
                    Some(p) if p.index as usize == index => data.extend_from_slice(&p.data),
                    other => return Err(unexpected(other.map(|p| p.index), data.len())),
                }
            }
            data.freeze()
        };
        // A further piece of this blob makes it longer than its size. (An
        // error instead is the next blob's: this one is whole.)
        match self.piece().await {
            Ok(Some(p)) if p.index as usize == index => {
                return Err(Error::Storage(format!("server sent more than the {size} bytes of blob {digest}")));
            }
            Ok(next) => self.carry = next.map(Ok),
            Err(e) => self.carry = Some(Err(e)),
        }
        check_whole(&digest, size, &data)?;
        self.next += 1;
        Ok(Some(data))
    }
}

type ByteStream = BoxStream<'static, io::Result<Bytes>>;

enum ReadState {
    Idle,
    Opening(BoxFuture<'static, io::Result<ByteStream>>),
    Streaming(ByteStream),
}

/// Reads a blob the server keeps unchunked, as one stream. Seeking forward
/// skips; seeking backward reopens the stream. A read from start to end is
/// checked against the digest.
struct StreamingReader {
    client: BlobServiceClient<Transport>,
    digest: B3Digest,
    state: ReadState,
    /// Position of the next byte returned.
    pos: u64,
    /// Position of the next byte the stream yields (`current` ends here).
    stream_pos: u64,
    current: Bytes,
    /// Hash of everything streamed so far, while the read is contiguous from 0.
    hasher: Option<blake3::Hasher>,
}

impl StreamingReader {
    fn new(client: BlobServiceClient<Transport>, digest: B3Digest) -> Self {
        Self { client, digest, state: ReadState::Idle, pos: 0, stream_pos: 0, current: Bytes::new(), hasher: None }
    }

    fn open(&self) -> BoxFuture<'static, io::Result<ByteStream>> {
        let mut client = self.client.clone();
        let digest = self.digest;
        async move {
            let stream = client
                .read(proto::ReadBlobRequest { digest: digest.to_bytes() })
                .await
                .map_err(|s| io::Error::from(Error::from(s)))?
                .into_inner();
            Ok(stream.map_ok(|c| c.data).map_err(|s| io::Error::from(Error::from(s))).boxed())
        }
        .boxed()
    }
}

impl AsyncRead for StreamingReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if copy_out(&mut this.current, &mut this.pos, buf) {
                return Poll::Ready(Ok(()));
            }
            match &mut this.state {
                ReadState::Idle => {
                    this.stream_pos = 0;
                    this.hasher = Some(blake3::Hasher::new());
                    this.state = ReadState::Opening(this.open());
                }
                ReadState::Opening(f) => {
                    let stream = ready!(f.poll_unpin(cx));
                    this.state = match stream {
                        Ok(s) => ReadState::Streaming(s),
                        Err(e) => {
                            this.state = ReadState::Idle;
                            return Poll::Ready(Err(e));
                        }
                    };
                }
                ReadState::Streaming(s) => match ready!(s.poll_next_unpin(cx)) {
                    Some(Ok(data)) => {
                        if let Some(h) = &mut this.hasher {
                            h.update(&data);
                        }
                        let start = this.stream_pos;
                        this.stream_pos += data.len() as u64;
                        if this.stream_pos > this.pos {
                            this.current = data.slice((this.pos - start) as usize..);
                        }
                    }
                    Some(Err(e)) => {
                        this.state = ReadState::Idle;
                        return Poll::Ready(Err(e));
                    }
                    None => {
                        if let Some(h) = this.hasher.take() {
                            let actual = B3Digest::from(h.finalize());
                            if actual != this.digest {
                                let msg = format!("server sent {actual} for blob {}", this.digest);
                                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, msg)));
                            }
                        }
                        return Poll::Ready(Ok(()));
                    }
                },
            }
        }
    }
}

impl AsyncSeek for StreamingReader {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let target = match position {
            io::SeekFrom::Start(n) => n,
            io::SeekFrom::Current(d) => this
                .pos
                .checked_add_signed(d)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?,
            io::SeekFrom::End(_) => {
                return Err(io::Error::new(io::ErrorKind::Unsupported, "the server did not say how long this blob is"));
            }
        };
        if target >= this.pos && target <= this.stream_pos {
            this.current.advance((target - this.pos) as usize);
        } else if target > this.stream_pos {
            this.current = Bytes::new();
        } else {
            this.current = Bytes::new();
            this.state = ReadState::Idle;
        }
        if target != this.pos {
            this.hasher = None;
        }
        this.pos = target;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

/// A [`DirectoryService`] on a remote castore server.
///
/// [`DirectoryService::get_closures`] first tries storefront's batch call
/// ([`crate::proto::batch`]); a server that answers UNIMPLEMENTED (tvix and
/// snix daemons) is remembered and asked root by root from then on.
#[derive(Clone)]
pub struct GrpcDirectoryService {
    client: DirectoryServiceClient<Transport>,
    batch: DirectoryBatchServiceClient<Transport>,
    /// Cleared once the server turned the batch call down.
    batch_served: Arc<AtomicBool>,
}

impl GrpcDirectoryService {
    pub fn new(transport: Transport) -> Self {
        let client = DirectoryServiceClient::new(transport.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let batch = DirectoryBatchServiceClient::new(transport).max_decoding_message_size(MAX_MESSAGE);
        Self { client, batch, batch_served: Arc::new(AtomicBool::new(true)) }
    }
}

fn received(msg: proto::Directory) -> Result<Directory> {
    Directory::try_from(msg).map_err(|e| Error::Storage(format!("server sent an invalid directory: {e}")))
}

#[async_trait]
impl DirectoryService for GrpcDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>> {
        let req = proto::GetDirectoryRequest {
            by_what: Some(proto::get_directory_request::ByWhat::Digest(digest.to_bytes())),
            recursive: false,
        };
        let Some(resp) = not_found(self.client.clone().get(req).await)? else {
            return Ok(None);
        };
        let Some(msg) = resp.into_inner().message().await? else {
            return Ok(None);
        };
        let dir = received(msg)?;
        if dir.digest() != *digest {
            return Err(Error::Storage(format!("server sent {} for directory {digest}", dir.digest())));
        }
        Ok(Some(dir))
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'static, Result<Directory>> {
        let mut client = self.client.clone();
        let root = *root;
        crate::dirsvc::async_stream(move |tx| async move {
            let req = proto::GetDirectoryRequest {
                by_what: Some(proto::get_directory_request::ByWhat::Digest(root.to_bytes())),
                recursive: true,
            };
            let not_found = || Error::NotFound(format!("directory {root} not found"));
            let mut stream = not_found_stream(client.get(req).await)?.ok_or_else(not_found)?;
            let mut arrivals = Arrivals::new([root]);
            let mut first = true;
            while let Some(msg) = stream.message().await? {
                let dir = received(msg)?;
                if first && dir.digest() != root {
                    return Err(Error::Storage(format!("server sent {} as root {root}", dir.digest())));
                }
                first = false;
                arrivals.accept(&dir)?;
                if tx.send(Ok(dir)).await.is_err() {
                    return Ok(());
                }
            }
            if first {
                return Err(not_found());
            }
            arrivals.finish().map_err(|e| Error::Storage(format!("{e} below {root}")))
        })
        .boxed()
    }

    fn get_closures(&self, roots: Vec<B3Digest>) -> BoxStream<'_, Result<Directory>> {
        if !self.batch_served.load(Ordering::Relaxed) || roots.len() > MAX_BATCH_DIGESTS {
            return closures_each(self, roots);
        }
        let batch = self.batch.clone();
        futures::stream::once(async move {
            match closures::get_closures(batch, roots.clone()).await? {
                Some(stream) => Ok::<_, Error>(stream),
                None => {
                    tracing::debug!("the server has no batch call for directories; one Get per root");
                    self.batch_served.store(false, Ordering::Relaxed);
                    Ok(closures_each(self, roots))
                }
            }
        })
        .try_flatten()
        .boxed()
    }

    async fn put_closure(&self, dirs: Vec<Directory>) -> Result<B3Digest> {
        let root = dirs
            .last()
            .map(Directory::digest)
            .ok_or_else(|| Error::InvalidRequest("empty directory closure".into()))?;
        let msgs: Vec<proto::Directory> = dirs.iter().map(Directory::to_proto).collect();
        let total: usize = msgs.iter().map(prost::Message::encoded_len).sum();
        if total > MAX_CLOSURE_BYTES {
            return Err(Error::TooLarge(format!("directory closure exceeds {MAX_CLOSURE_BYTES} bytes")));
        }
        let stream = futures::stream::iter(msgs);
        let resp = self.client.clone().put(stream).await?.into_inner();
        let got = B3Digest::try_from(&resp.root_digest)
            .map_err(|e| Error::Storage(format!("server sent a bad root digest: {e}")))?;
        if got != root {
            return Err(Error::Storage(format!("server answered root {got}, we sent {root}")));
        }
        Ok(root)
    }
}

fn not_found_stream<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<Option<T>> {
    Ok(not_found(r)?.map(tonic::Response::into_inner))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    /// The password of the address wins over the environment, whatever the
    /// user name; it is percent-decoded; an empty one counts as none.
    #[test]
    fn token_sources() {
        let env = || Some("from-env".to_owned());
        assert_eq!(token(&url("grpc+http://:s3cr%2Ft@127.0.0.1:1"), env()).as_deref(), Some("s3cr/t"));
        assert_eq!(token(&url("grpc+http://nix:tok@127.0.0.1:1"), None).as_deref(), Some("tok"));
        assert_eq!(token(&url("grpc+http://127.0.0.1:1"), env()).as_deref(), Some("from-env"));
        assert_eq!(token(&url("grpc+unix:/run/castore.sock"), env()).as_deref(), Some("from-env"));
        assert_eq!(token(&url("grpc+http://127.0.0.1:1"), None), None);
        assert_eq!(token(&url("grpc+http://127.0.0.1:1"), Some(String::new())), None);
    }

    /// Every call through a transport with a token carries it as a Bearer
    /// header, which `Debug` does not show; without one, no header.
    #[tokio::test]
    async fn calls_carry_the_token() {
        use tower::{Service, ServiceExt};
        let seen = |req: http::Request<()>| async move {
            Ok::<_, Infallible>(req.headers().get(http::header::AUTHORIZATION).cloned())
        };
        let mut with = PackageRewrite::speak(tower::service_fn(seen), Package::Tvix).with_token("s3cret").unwrap();
        for _ in 0..2 {
            let req = http::Request::builder().uri("/snix.castore.v1.BlobService/Put").body(()).unwrap();
            let header = with.ready().await.unwrap().call(req).await.unwrap();
            assert_eq!(header.as_ref().and_then(|v| v.to_str().ok()), Some("Bearer s3cret"));
        }
        assert!(!format!("{with:?}").contains("s3cret"), "Debug shows the token: {with:?}");
        let without = PackageRewrite::speak(tower::service_fn(seen), Package::Snix);
        let req = http::Request::builder().uri("/snix.castore.v1.BlobService/Put").body(()).unwrap();
        assert_eq!(without.oneshot(req).await.unwrap(), None);
        assert!(PackageRewrite::speak(tower::service_fn(seen), Package::Snix).with_token("a\nb").is_err());
        let transport = connect(&url("grpc+http://:tok@127.0.0.1:1")).unwrap();
        assert!(format!("{transport:?}").contains("Sensitive"), "{transport:?}");
    }

    #[test]
    fn addresses_are_shown_without_their_token() {
        assert_eq!(redacted("grpc+http://:s3cret@127.0.0.1:8000"), "grpc+http://:***@127.0.0.1:8000");
        assert_eq!(redacted("grpc+http://127.0.0.1:8000?package=tvix"), "grpc+http://127.0.0.1:8000?package=tvix");
        assert_eq!(redacted("redb:/var/lib/storefront/castore.redb"), "redb:/var/lib/storefront/castore.redb");
    }
}
