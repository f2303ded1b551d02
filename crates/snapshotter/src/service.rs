//! The gRPC face: containerd's Snapshots service over a [`Snapshotter`],
//! served on a unix socket.
use std::{collections::BTreeMap, path::Path, pin::Pin};

use futures::Stream;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::{
    error::Error,
    meta::Kind,
    proto::{self, snapshots_server::SnapshotsServer},
    snapshots::{Info, Snapshotter},
};

/// How many infos one List message carries.
const LIST_BATCH: usize = 100;

/// The Snapshots service of one snapshotter.
#[derive(Clone)]
pub struct SnapshotsService {
    snapshotter: Snapshotter,
}

impl SnapshotsService {
    pub fn new(snapshotter: Snapshotter) -> Self {
        Self { snapshotter }
    }

    /// The tonic service, to add to a server.
    pub fn into_server(self) -> SnapshotsServer<Self> {
        SnapshotsServer::new(self)
    }
}

/// Serves `snapshotter` on a unix socket at `socket` (a stale socket file
/// there is replaced) until `shutdown` resolves.
pub async fn serve(
    snapshotter: Snapshotter,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(socket).map_err(Error::io(format!("removing the stale {}", socket.display())))?;
        }
        Ok(_) => {
            return Err(Error::Io {
                context: format!("binding {}", socket.display()),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a file that is not a socket is there"),
            });
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(socket).map_err(Error::io(format!("binding {}", socket.display())))?;
    tracing::info!(socket = %socket.display(), "serving containerd.services.snapshots.v1.Snapshots");
    let result = tonic::transport::Server::builder()
        .add_service(SnapshotsService::new(snapshotter).into_server())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(socket);
    result.map_err(|e| Error::Io { context: "serving gRPC".into(), source: std::io::Error::other(e) })
}

fn labels(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn kind_to_proto(kind: Kind) -> proto::Kind {
    match kind {
        Kind::View => proto::Kind::View,
        Kind::Active => proto::Kind::Active,
        Kind::Committed => proto::Kind::Committed,
    }
}

fn info_to_proto(info: Info) -> proto::Info {
    proto::Info {
        name: info.name,
        parent: info.parent.unwrap_or_default(),
        kind: kind_to_proto(info.kind) as i32,
        created_at: Some(info.created.into()),
        updated_at: Some(info.updated.into()),
        labels: info.labels.into_iter().collect(),
    }
}

/// Logs failures other than the answers containerd expects routinely.
fn answer<T>(op: &'static str, key: &str, result: Result<T, Error>) -> Result<Response<T>, Status> {
    match result {
        Ok(v) => Ok(Response::new(v)),
        Err(e) => {
            match e {
                Error::NotFound(_) | Error::AlreadyExists(_) => tracing::debug!(op, key, error = %e),
                Error::FailedPrecondition(_) | Error::InvalidArgument(_) => tracing::info!(op, key, error = %e),
                _ => tracing::warn!(op, key, error = %e),
            }
            Err(e.into())
        }
    }
}

#[tonic::async_trait]
impl proto::snapshots_server::Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        request: Request<proto::PrepareSnapshotRequest>,
    ) -> Result<Response<proto::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        let key = r.key.clone();
        let result = self.snapshotter.prepare(r.key, r.parent, labels(r.labels)).await;
        answer("prepare", &key, result.map(|mounts| proto::PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        request: Request<proto::ViewSnapshotRequest>,
    ) -> Result<Response<proto::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let key = r.key.clone();
        let result = self.snapshotter.view(r.key, r.parent, labels(r.labels)).await;
        answer("view", &key, result.map(|mounts| proto::ViewSnapshotResponse { mounts }))
    }

    async fn mounts(&self, request: Request<proto::MountsRequest>) -> Result<Response<proto::MountsResponse>, Status> {
        let key = request.into_inner().key;
        let result = self.snapshotter.mounts(key.clone()).await;
        answer("mounts", &key, result.map(|mounts| proto::MountsResponse { mounts }))
    }

    async fn commit(&self, request: Request<proto::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let key = r.key.clone();
        answer("commit", &key, self.snapshotter.commit(r.name, r.key, labels(r.labels)).await)
    }

    async fn remove(&self, request: Request<proto::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let key = request.into_inner().key;
        answer("remove", &key, self.snapshotter.remove(key.clone()).await)
    }

    async fn stat(
        &self,
        request: Request<proto::StatSnapshotRequest>,
    ) -> Result<Response<proto::StatSnapshotResponse>, Status> {
        let key = request.into_inner().key;
        let result = self.snapshotter.stat(key.clone()).await;
        answer("stat", &key, result.map(|info| proto::StatSnapshotResponse { info: Some(info_to_proto(info)) }))
    }

    async fn update(
        &self,
        request: Request<proto::UpdateSnapshotRequest>,
    ) -> Result<Response<proto::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let Some(info) = r.info else { return Err(Status::invalid_argument("Update without an info")) };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let name = info.name.clone();
        // Only the name and the labels are read: the rest cannot change.
        let result = self.snapshotter.update(info.name, labels(info.labels), paths).await;
        answer("update", &name, result.map(|info| proto::UpdateSnapshotResponse { info: Some(info_to_proto(info)) }))
    }

    type ListStream = Pin<Box<dyn Stream<Item = Result<proto::ListSnapshotsResponse, Status>> + Send>>;

    async fn list(&self, request: Request<proto::ListSnapshotsRequest>) -> Result<Response<Self::ListStream>, Status> {
        let filters = request.into_inner().filters;
        let infos = match self.snapshotter.list(&filters).await {
            Ok(infos) => infos,
            Err(e) => return answer("list", "", Err(e)),
        };
        let mut batches = Vec::new();
        let mut infos = infos.into_iter().map(info_to_proto).peekable();
        while infos.peek().is_some() {
            let info: Vec<proto::Info> = infos.by_ref().take(LIST_BATCH).collect();
            batches.push(Ok(proto::ListSnapshotsResponse { info }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, request: Request<proto::UsageRequest>) -> Result<Response<proto::UsageResponse>, Status> {
        let key = request.into_inner().key;
        let result = self.snapshotter.usage(key.clone()).await;
        answer(
            "usage",
            &key,
            result.map(|u| proto::UsageResponse {
                size: i64::try_from(u.size).unwrap_or(i64::MAX),
                inodes: i64::try_from(u.inodes).unwrap_or(i64::MAX),
            }),
        )
    }

    async fn cleanup(&self, _request: Request<proto::CleanupRequest>) -> Result<Response<()>, Status> {
        answer("cleanup", "", self.snapshotter.cleanup().await)
    }
}
