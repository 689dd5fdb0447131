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
    pub async fn put(
        &self,
        tx: &mut sqlx::Transaction<'static, Any>,
        bytes: &[u8],
    ) -> Result<String> {
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
                sqlx::query(
                    "INSERT INTO blobs (hash, data) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
                )
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
                let row: Option<(Vec<u8>,)> =
                    sqlx::query_as("SELECT data FROM blobs WHERE hash = $1")
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
    tmp.persist(&dest)
        .map_err(|e| Error::Internal(format!("blob rename: {e}")))?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(())
}

// Used by the mailbox: inbound blobs are written before the group commit
// (outside the org write lock), and unreferenced ones are collected.
impl BlobStore {
    /// Stores the bytes durably on its own: an fsynced file, or a committed
    /// row in its own (lock-free) transaction. Returns the hash.
    pub async fn put_alone(&self, pool: &sqlx::AnyPool, bytes: &[u8]) -> Result<String> {
        let mut tx = match self {
            BlobStore::Files(_) => None,
            BlobStore::Database => Some(pool.begin().await?),
        };
        let hash = match (&mut tx, self) {
            (Some(tx), _) => self.put(tx, bytes).await?,
            (None, BlobStore::Files(root)) => {
                let hash = blob_hash(bytes);
                let (root, data, h) = (root.clone(), bytes.to_vec(), hash.clone());
                tokio::task::spawn_blocking(move || write_durably(&root, &h, &data))
                    .await
                    .map_err(|e| Error::Internal(format!("blob writer: {e}")))??;
                hash
            }
            (None, BlobStore::Database) => {
                return Err(Error::Internal("blob transaction missing".into()));
            }
        };
        if let Some(tx) = tx {
            tx.commit().await?;
        }
        Ok(hash)
    }

    /// Whether the blob is present (checked again under the write lock, in
    /// case the collector removed an identical, then unreferenced, blob).
    pub async fn exists(
        &self,
        tx: &mut sqlx::Transaction<'static, Any>,
        hash: &str,
    ) -> Result<bool> {
        match self {
            BlobStore::Files(root) => Ok(tokio::fs::try_exists(Self::path_for(root, hash)).await?),
            BlobStore::Database => {
                let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM blobs WHERE hash = $1")
                    .bind(hash)
                    .fetch_optional(&mut **tx)
                    .await?;
                Ok(row.is_some())
            }
        }
    }

    /// Removes a blob; call under the write lock after checking nothing
    /// references it. A file is removed at once (a crash then leaves no
    /// dangling reference, only a missing orphan).
    pub async fn delete(&self, tx: &mut sqlx::Transaction<'static, Any>, hash: &str) -> Result<()> {
        match self {
            BlobStore::Files(root) => {
                match tokio::fs::remove_file(Self::path_for(root, hash)).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            BlobStore::Database => {
                sqlx::query("DELETE FROM blobs WHERE hash = $1")
                    .bind(hash)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }
        }
    }

    /// Every stored hash (for collecting orphans left by crashes).
    pub async fn list(&self, pool: &sqlx::AnyPool) -> Result<Vec<String>> {
        match self {
            BlobStore::Files(root) => {
                let root = root.clone();
                tokio::task::spawn_blocking(move || {
                    let mut out = vec![];
                    for dir in std::fs::read_dir(&root)?.flatten() {
                        let name = dir.file_name();
                        if name.len() != 2 || !dir.path().is_dir() {
                            continue; // skips tmp/
                        }
                        for f in std::fs::read_dir(dir.path())?.flatten() {
                            let n = f.file_name().to_string_lossy().into_owned();
                            if n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) {
                                out.push(n);
                            }
                        }
                    }
                    Ok::<_, Error>(out)
                })
                .await
                .map_err(|e| Error::Internal(format!("blob lister: {e}")))?
            }
            BlobStore::Database => {
                let rows: Vec<(String,)> = sqlx::query_as("SELECT hash FROM blobs")
                    .fetch_all(pool)
                    .await?;
                Ok(rows.into_iter().map(|r| r.0).collect())
            }
        }
    }
}
