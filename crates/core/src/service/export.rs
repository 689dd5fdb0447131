//! The decommission export: one .tar.gz holding the agent's metadata, its
//! credentials (metadata only), its audit entries as JSON lines and its
//! messages as .eml files with JSON metadata beside each.

use super::{Agent, Ctx, Service};
use crate::error::{Error, Result};
use serde::Serialize;
use sqlx::Row;
// Dynamic SQL here is assembled from constant fragments and numbered
// placeholders only; every value is bound.
use sqlx::AssertSqlSafe;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExportInfo {
    pub id: String,
    pub agent_id: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub created_at: String,
    /// Where to download it (admin key).
    pub download_path: String,
}

fn append_file(
    tar: &mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
    path: &str,
    bytes: &[u8],
    mtime: u64,
) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(mtime);
    header.set_cksum();
    tar.append_data(&mut header, path, bytes)?;
    Ok(())
}

impl Service {
    pub(crate) async fn write_export(&self, agent: &Agent) -> Result<ExportInfo> {
        let now = self.now();
        let mtime = (now / 1_000_000).max(0) as u64;
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        let stem = format!("agentpost-export-{}", agent.id);
        append_file(
            &mut tar,
            &format!("{stem}/agent.json"),
            &serde_json::to_vec_pretty(agent).unwrap_or_default(),
            mtime,
        )?;

        let q = "SELECT id, kind, name, last4, scopes, created_at, last_used_at, expires_at, revoked_at FROM credentials WHERE agent_id = $1 ORDER BY id";
        let rows = sqlx::query(q)
            .bind(agent.id.as_str())
            .fetch_all(&self.db.pool)
            .await?;
        let mut creds = vec![];
        for r in &rows {
            creds.push(serde_json::json!({
                "id": r.try_get::<String, _>("id")?,
                "kind": r.try_get::<String, _>("kind")?,
                "name": r.try_get::<String, _>("name")?,
                "last4": r.try_get::<String, _>("last4")?,
                "scopes": r.try_get::<String, _>("scopes")?,
                "created_at": crate::clock::to_rfc3339(r.try_get("created_at")?),
                "revoked_at": super::opt_rfc3339(r.try_get("revoked_at")?),
            }));
        }
        append_file(
            &mut tar,
            &format!("{stem}/credentials.json"),
            &serde_json::to_vec_pretty(&creds).unwrap_or_default(),
            mtime,
        )?;

        let q = format!(
            "SELECT {} FROM audit_log WHERE agent_id = $1 ORDER BY id",
            crate::audit::COLUMNS
        );
        let rows = sqlx::query(AssertSqlSafe(q))
            .bind(agent.id.as_str())
            .fetch_all(&self.db.pool)
            .await?;
        let mut audit = Vec::new();
        for r in &rows {
            let (e, _, _) = crate::audit::from_row(r)?;
            audit.extend(serde_json::to_vec(&e).unwrap_or_default());
            audit.push(b'\n');
        }
        append_file(&mut tar, &format!("{stem}/audit.jsonl"), &audit, mtime)?;

        let mut n_messages = 0usize;
        for (name, eml, meta) in self.export_messages(agent).await? {
            append_file(
                &mut tar,
                &format!("{stem}/messages/{name}.eml"),
                &eml,
                mtime,
            )?;
            append_file(
                &mut tar,
                &format!("{stem}/messages/{name}.json"),
                &meta,
                mtime,
            )?;
            n_messages += 1;
        }
        let manifest = serde_json::json!({
            "format": "agentpost-export/1",
            "agent_id": agent.id,
            "address": agent.address,
            "created_at": crate::clock::to_rfc3339(now),
            "messages": n_messages,
            "audit_entries": rows.len(),
        });
        append_file(
            &mut tar,
            &format!("{stem}/manifest.json"),
            &serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
            mtime,
        )?;
        let bytes = tar
            .into_inner()
            .and_then(|gz| gz.finish())
            .map_err(|e| Error::Internal(format!("export archive: {e}")))?;

        let id = uuid::Uuid::now_v7().to_string();
        let mut tx = self.db.begin_write().await?;
        let hash = self.db.blobs.put(&mut tx, &bytes).await?;
        sqlx::query("INSERT INTO exports (id, agent_id, blob_hash, size_bytes, created_at) VALUES ($1,$2,$3,$4,$5)")
            .bind(&id)
            .bind(agent.id.as_str())
            .bind(&hash)
            .bind(bytes.len() as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ExportInfo {
            id,
            agent_id: agent.id.0.clone(),
            sha256: hash,
            size_bytes: bytes.len() as i64,
            created_at: crate::clock::to_rfc3339(now),
            download_path: format!("/v1/agents/{}/export", agent.id),
        })
    }

    /// (file stem, raw message, JSON metadata) for each stored message.
    async fn export_messages(&self, agent: &Agent) -> Result<Vec<(String, Vec<u8>, Vec<u8>)>> {
        self.export_mailbox(agent).await
    }

    /// The newest export of an agent, for download (admin only).
    pub async fn get_export(&self, ctx: &Ctx, agent_id: &str) -> Result<(ExportInfo, Vec<u8>)> {
        let agent = self.visible_agent(ctx, agent_id).await?;
        self.require_admin(ctx, "agent.export", Some(agent_id))
            .await?;
        let row = sqlx::query("SELECT id, blob_hash, size_bytes, created_at FROM exports WHERE agent_id = $1 ORDER BY id DESC LIMIT 1")
            .bind(agent.id.as_str())
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| Error::not_found("export (the agent has not been decommissioned)"))?;
        let hash: String = row.try_get("blob_hash")?;
        let bytes = self
            .db
            .blobs
            .get(&self.db.pool, &hash)
            .await?
            .ok_or_else(|| Error::Internal(format!("export blob {hash} is missing")))?;
        Ok((
            ExportInfo {
                id: row.try_get("id")?,
                agent_id: agent.id.0.clone(),
                sha256: hash,
                size_bytes: row.try_get("size_bytes")?,
                created_at: crate::clock::to_rfc3339(row.try_get("created_at")?),
                download_path: format!("/v1/agents/{}/export", agent.id),
            },
            bytes,
        ))
    }
}
