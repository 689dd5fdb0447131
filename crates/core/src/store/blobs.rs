//! Content-addressed blobs (raw messages, exports). In a data directory they
//! are files named by SHA-256, written to a temporary file, fsynced, renamed
//! and the directory fsynced, so a blob that was acknowledged survives a
//! crash. On PostgreSQL they live in the `blobs` table so every node sees them.
//!
//! Hand-written rather than `object_store`: we need the explicit fsync of the
//! file and its directory before acknowledging, which it does not promise.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use sqlx::Any;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub(crate) enum BlobStore {
    Files(PathBuf),
    Database,
}

pub(crate) fn blob_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl BlobStore {
    pub fn files(root: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(BlobStore::Files(root))
    }

    fn path_for(root: &Path, hash: &str) -> PathBuf {
        root.join(&hash[..2]).join(hash)
    }

    /// Stores the bytes durably and returns their hash. On the database
    /// backend the insert joins the caller's transaction.
    pub async fn put(&self, tx: &mut sqlx::Transaction<'static, Any>, bytes: &[u8]) -> Result<String> {
        let hash = blob_hash(bytes);
        match self {
            BlobStore::Files(root) => {
                let root = root.clone();
                let data = bytes.to_vec();
                let h = hash.clone();
                tokio::task::spawn_blocking(move || write_durably(&root, &h, &data))
                    .await
                    .map_err(|e| Error::Internal(format!("blob writer: {e}")))??;
            }
            BlobStore::Database => {
                sqlx::query("INSERT INTO blobs (hash, data) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING")
                    .bind(&hash)
                    .bind(bytes.to_vec())
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(hash)
    }

    pub async fn get(&self, pool: &sqlx::AnyPool, hash: &str) -> Result<Option<Vec<u8>>> {
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        match self {
            BlobStore::Files(root) => match tokio::fs::read(Self::path_for(root, hash)).await {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
            BlobStore::Database => {
                let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT data FROM blobs WHERE hash = $1")
                    .bind(hash)
                    .fetch_optional(pool)
                    .await?;
                Ok(row.map(|r| r.0))
            }
        }
    }
}

fn write_durably(root: &Path, hash: &str, data: &[u8]) -> Result<()> {
    let dest = BlobStore::path_for(root, hash);
    if dest.exists() {
        return Ok(());
    }
    let dir = dest.parent().unwrap_or(root).to_path_buf();
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(root.join("tmp"))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&dest).map_err(|e| Error::Internal(format!("blob rename: {e}")))?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(())
}
