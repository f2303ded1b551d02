//! One NAR and its metadata (a `.narinfo` file, or the caller's flags).
use std::path::Path;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{ImportError, Summary, Target};
use crate::{
    ContentAddress, NixHash, StorePath,
    nar::{self, IngestOptions},
    narinfo::NarInfo,
    pathinfo::PathInfo,
    signing::Signature,
};

/// What a NAR on its own does not say about its store path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NarFileMeta {
    pub path: Option<StorePath>,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub signatures: Vec<Signature>,
    pub ca: Option<ContentAddress>,
    /// NarSize and NarHash the NAR must have (a narinfo's): a NAR that
    /// differs is refused before anything is stored.
    pub expected: Option<(u64, [u8; 32])>,
}

impl NarFileMeta {
    /// The metadata of a narinfo; it must name a sha256 NarHash.
    pub fn from_narinfo(info: &NarInfo) -> Result<Self, ImportError> {
        let sha = info.nar_hash.as_sha256().ok_or_else(|| ImportError::Path {
            path: info.store_path.to_string(),
            message: format!("the narinfo's NarHash {} is not sha256", info.nar_hash),
        })?;
        Ok(Self {
            path: Some(info.store_path.clone()),
            references: info.references.clone(),
            deriver: info.deriver.clone(),
            signatures: info.signatures.clone(),
            ca: info.ca,
            expected: Some((info.nar_size, sha)),
        })
    }
}

/// Imports the NAR in the file at `nar_path`. With an expected NarHash, the
/// file is hashed first, so a NAR that does not match stores nothing at all.
pub async fn import_nar_file(target: &Target, nar_path: &Path, meta: NarFileMeta) -> Result<Summary, ImportError> {
    let path = meta.path.as_ref().ok_or_else(|| ImportError::Usage("a NAR needs its store path".into()))?.clone();
    if let Some(expected) = meta.expected {
        let file = nar_path.to_owned();
        let got = tokio::task::spawn_blocking(move || hash_file(&file))
            .await
            .map_err(|e| ImportError::Io(std::io::Error::other(e)))?
            .map_err(|e| ImportError::Io(std::io::Error::new(e.kind(), format!("{}: {e}", nar_path.display()))))?;
        check(&path, got, expected, &nar_path.display().to_string())?;
    }
    let mut file = tokio::fs::File::open(nar_path)
        .await
        .map_err(|e| ImportError::Io(std::io::Error::new(e.kind(), format!("{}: {e}", nar_path.display()))))?;
    import_nar(target, &mut file, meta).await
}

/// Imports one NAR from `reader` (which ends where the NAR ends) as the
/// store path `meta.path`. Its references must be stored already (or be
/// the path itself). Nothing becomes visible unless the NAR is valid and
/// matches `meta.expected`.
pub async fn import_nar(
    target: &Target,
    reader: &mut (dyn AsyncRead + Send + Unpin),
    meta: NarFileMeta,
) -> Result<Summary, ImportError> {
    let path = meta.path.clone().ok_or_else(|| ImportError::Usage("a NAR needs its store path".into()))?;
    let mut summary = Summary::default();
    if let Some(stored) = target.paths.get(path.digest()).await? {
        // Still read the NAR: the caller asked for it to be checked.
        let got = hash_reader(reader).await?;
        check(&path, got, (stored.nar_size, stored.nar_sha256), "the stored PathInfo")?;
        if let Some(expected) = meta.expected {
            check(&path, got, expected, "the metadata")?;
        }
        summary.skipped = 1;
        return Ok(summary);
    }
    let options = IngestOptions { expected_size: meta.expected.map(|e| e.0), ..IngestOptions::default() };
    let ingested = nar::ingest_with(reader, &*target.blobs, &*target.directories, &options)
        .await
        .map_err(|e| ImportError::Path { path: path.to_string(), message: e.to_string() })?;
    if let Some(expected) = meta.expected {
        check(&path, (ingested.nar_size, ingested.nar_sha256), expected, "the metadata")?;
    }
    let info = PathInfo {
        store_path: path.clone(),
        node: ingested.node,
        references: meta.references,
        nar_size: ingested.nar_size,
        nar_sha256: ingested.nar_sha256,
        signatures: meta.signatures,
        deriver: meta.deriver,
        ca: meta.ca,
    };
    let stored = target.paths.put(info).await.map_err(|e| ImportError::Path {
        path: path.to_string(),
        message: match e {
            castore::Error::FailedPrecondition(m) | castore::Error::InvalidRequest(m) => m,
            castore::Error::Remote(s)
                if matches!(s.code(), tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument) =>
            {
                s.message().to_owned()
            }
            e => format!("putting the PathInfo: {e}"),
        },
    })?;
    super::check_same_nar(&stored, &ingested.nar_sha256)
        .map_err(|message| ImportError::Path { path: path.to_string(), message })?;
    summary.imported = 1;
    summary.bytes = ingested.nar_size;
    Ok(summary)
}

/// Fails unless `got` (size, sha256) is `expected`, which `source` stated.
fn check(path: &StorePath, got: (u64, [u8; 32]), expected: (u64, [u8; 32]), source: &str) -> Result<(), ImportError> {
    if got == expected {
        return Ok(());
    }
    Err(ImportError::Path {
        path: path.to_string(),
        message: format!(
            "the NAR has {} bytes and NarHash {}, but {source} says {} bytes and {}; nothing was stored",
            got.0,
            NixHash::sha256(got.1),
            expected.0,
            NixHash::sha256(expected.1)
        ),
    })
}

fn hash_file(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, sha.finalize().into()))
}

async fn hash_reader(reader: &mut (dyn AsyncRead + Send + Unpin)) -> std::io::Result<(u64, [u8; 32])> {
    let mut sha = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, sha.finalize().into()))
}
