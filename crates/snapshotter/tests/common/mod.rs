//! A snapshotter served on a real unix socket in this process, and a tonic
//! client of containerd's Snapshots service connected to it.
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
};

use snapshotter::{
    PathFetcher, Snapshotter,
    proto::{self, Mount, snapshots_client::SnapshotsClient},
};
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Status, transport::Channel};

pub type Client = SnapshotsClient<Channel>;

/// A snapshotter process stand-in: state under `root`, served on `socket`.
pub struct Served {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Served {
    /// Serves a snapshotter on `root` (created if needed).
    pub async fn start(root: &Path, fetcher: Option<Arc<dyn PathFetcher>>) -> Served {
        let socket = root.with_extension("sock");
        let snapshotter = Snapshotter::open(root, fetcher).expect("opening the snapshotter");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let socket = socket.clone();
            async move {
                snapshotter::serve(snapshotter, &socket, async {
                    let _ = stopped.await;
                })
                .await
                .expect("serving");
            }
        });
        let client = connect(&socket).await;
        Served { root: root.to_path_buf(), socket, client, stop: Some(stop), task: Some(task) }
    }

    /// Stops serving (the state stays on disk).
    pub async fn stop(mut self) {
        self.stop.take().map(|s| s.send(()));
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }
}

/// Connects to a unix socket, waiting for it to appear.
pub async fn connect(socket: &Path) -> Client {
    for _ in 0..200 {
        if socket.exists() {
            let socket = socket.to_path_buf();
            let channel = tonic::transport::Endpoint::from_static("http://snapshotter.invalid")
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                }))
                .await;
            if let Ok(channel) = channel {
                return SnapshotsClient::new(channel);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("nothing answers on {}", socket.display());
}

pub fn temp_root() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    (dir, root)
}

pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub async fn prepare(c: &mut Client, key: &str, parent: &str, l: &[(&str, &str)]) -> Result<Vec<Mount>, Status> {
    let req = proto::PrepareSnapshotRequest {
        snapshotter: "storefront".into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels(l),
    };
    Ok(c.prepare(req).await?.into_inner().mounts)
}

pub async fn view(c: &mut Client, key: &str, parent: &str) -> Result<Vec<Mount>, Status> {
    let req = proto::ViewSnapshotRequest {
        snapshotter: "storefront".into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    };
    Ok(c.view(req).await?.into_inner().mounts)
}

pub async fn mounts(c: &mut Client, key: &str) -> Result<Vec<Mount>, Status> {
    Ok(c.mounts(proto::MountsRequest { snapshotter: "storefront".into(), key: key.into() }).await?.into_inner().mounts)
}

pub async fn commit(c: &mut Client, name: &str, key: &str, l: &[(&str, &str)]) -> Result<(), Status> {
    let req = proto::CommitSnapshotRequest {
        snapshotter: "storefront".into(),
        name: name.into(),
        key: key.into(),
        labels: labels(l),
    };
    c.commit(req).await.map(|_| ())
}

pub async fn remove(c: &mut Client, key: &str) -> Result<(), Status> {
    c.remove(proto::RemoveSnapshotRequest { snapshotter: "storefront".into(), key: key.into() }).await.map(|_| ())
}

pub async fn stat(c: &mut Client, key: &str) -> Result<proto::Info, Status> {
    let resp = c.stat(proto::StatSnapshotRequest { snapshotter: "storefront".into(), key: key.into() }).await?;
    Ok(resp.into_inner().info.expect("Stat answered without an info"))
}

pub async fn update(
    c: &mut Client,
    name: &str,
    l: &[(&str, &str)],
    paths: Option<&[&str]>,
) -> Result<proto::Info, Status> {
    let req = proto::UpdateSnapshotRequest {
        snapshotter: "storefront".into(),
        info: Some(proto::Info { name: name.into(), labels: labels(l), ..Default::default() }),
        update_mask: paths.map(|p| prost_types::FieldMask { paths: p.iter().map(|s| s.to_string()).collect() }),
    };
    Ok(c.update(req).await?.into_inner().info.expect("Update answered without an info"))
}

/// Every info List streams, and how many messages carried them.
pub async fn list(c: &mut Client, filters: &[&str]) -> Result<(Vec<proto::Info>, usize), Status> {
    let req = proto::ListSnapshotsRequest {
        snapshotter: "storefront".into(),
        filters: filters.iter().map(|s| s.to_string()).collect(),
    };
    let mut stream = c.list(req).await?.into_inner();
    let (mut infos, mut messages) = (Vec::new(), 0);
    while let Some(msg) = stream.message().await? {
        messages += 1;
        infos.extend(msg.info);
    }
    Ok((infos, messages))
}

pub async fn list_names(c: &mut Client, filters: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = list(c, filters).await.expect("List").0.into_iter().map(|i| i.name).collect();
    names.sort();
    names
}

pub async fn usage(c: &mut Client, key: &str) -> Result<(i64, i64), Status> {
    let resp = c.usage(proto::UsageRequest { snapshotter: "storefront".into(), key: key.into() }).await?;
    let u = resp.into_inner();
    Ok((u.size, u.inodes))
}

pub async fn cleanup(c: &mut Client) -> Result<(), Status> {
    c.cleanup(proto::CleanupRequest { snapshotter: "storefront".into() }).await.map(|_| ())
}

#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, what: &str) -> Status {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {}", s.message());
            s
        }
    }
}

pub fn kind(info: &proto::Info) -> proto::Kind {
    proto::Kind::try_from(info.kind).expect("a known kind")
}

pub fn label_map(info: &proto::Info) -> BTreeMap<String, String> {
    info.labels.clone().into_iter().collect()
}

/// `key=value` options of a mount, by key.
pub fn option<'a>(m: &'a Mount, key: &str) -> Option<&'a str> {
    m.options.iter().find_map(|o| o.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}
