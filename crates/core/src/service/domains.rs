//! Mail domains and the DNS records an operator publishes for them.

use super::{Ctx, Service};
use crate::address::normalise_domain;
use crate::error::{Error, Result, is_unique_violation};
use crate::ids::DomainId;
use serde::Serialize;
use serde_json::json;
use sqlx::Row;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DnsRecord {
    /// `MX` or `TXT`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub value: String,
    pub purpose: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Domain {
    pub id: String,
    pub name: String,
    pub is_default: bool,
    pub created_at: String,
    pub dkim_selectors: Vec<String>,
    pub dns_records: Vec<DnsRecord>,
}

impl Service {
    /// Creates the domain and its DKIM keys inside `tx` (used by bootstrap too).
    pub(crate) async fn insert_domain(
        &self,
        tx: &mut crate::store::Tx,
        org: &str,
        name: &str,
        is_default: bool,
    ) -> Result<String> {
        let id = DomainId::new();
        let now = self.now();
        let inserted = sqlx::query("INSERT INTO domains (id, org_id, name, is_default, created_at) VALUES ($1,$2,$3,$4,$5)")
            .bind(id.as_str())
            .bind(org)
            .bind(name)
            .bind(is_default as i64)
            .bind(now)
            .execute(&mut **tx)
            .await;
        if let Err(e) = inserted {
            return Err(if is_unique_violation(&e) {
                Error::conflict_on(
                    "domain-exists",
                    "name",
                    format!("domain '{name}' already exists"),
                )
            } else {
                e.into()
            });
        }
        let stem = format!("ap{}", crate::clock::to_datetime(now).format("%Y%m"));
        // Key generation is CPU work (RSA-2048): keep it off the async threads.
        let keys = tokio::task::spawn_blocking(move || crate::dkim::generate(&stem))
            .await
            .map_err(|e| Error::Internal(format!("key generation: {e}")))??;
        for k in keys {
            sqlx::query(
                "INSERT INTO dkim_keys (id, domain_id, selector, algorithm, private_key_pem, public_key_b64, created_at) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7)",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(id.as_str())
            .bind(&k.selector)
            .bind(k.algorithm)
            .bind(&k.private_key_pem)
            .bind(&k.public_key_b64)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        Ok(id.0)
    }

    pub async fn add_domain(&self, ctx: &Ctx, name: Option<String>) -> Result<Domain> {
        self.require_admin(ctx, "domain.create", None).await?;
        let name =
            name.ok_or_else(|| Error::invalid("name", "is required, e.g. agents.example.com"))?;
        let name = normalise_domain(&name).map_err(|m| Error::invalid("name", m))?;
        let mut tx = self.db.begin_write().await?;
        let org = self.org_id(&mut tx).await?;
        let id = self.insert_domain(&mut tx, &org, &name, false).await?;
        let entry = self.entry(
            ctx,
            "domain.create",
            Some("domain"),
            Some(id),
            None,
            "success",
            json!({ "name": name }),
        );
        self.record(
            &mut tx,
            &entry,
            Some(("domain.created", json!({ "name": name }))),
        )
        .await?;
        tx.commit().await?;
        self.load_domain(&name)
            .await?
            .ok_or_else(|| Error::not_found("domain"))
    }

    pub async fn list_domains(&self, ctx: &Ctx) -> Result<Vec<Domain>> {
        self.require_admin(ctx, "domain.list", None).await?;
        let names: Vec<(String,)> = sqlx::query_as("SELECT name FROM domains ORDER BY name")
            .fetch_all(&self.db.pool)
            .await?;
        let mut out = vec![];
        for (n,) in names {
            if let Some(d) = self.load_domain(&n).await? {
                out.push(d);
            }
        }
        Ok(out)
    }

    pub async fn domain_dns(&self, ctx: &Ctx, name: &str) -> Result<Domain> {
        self.require_admin(ctx, "domain.dns", None).await?;
        let name = normalise_domain(name).map_err(|_| Error::not_found("domain"))?;
        self.load_domain(&name)
            .await?
            .ok_or_else(|| Error::not_found("domain"))
    }

    async fn load_domain(&self, name: &str) -> Result<Option<Domain>> {
        let Some(row) =
            sqlx::query("SELECT id, name, is_default, created_at FROM domains WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.db.pool)
                .await?
        else {
            return Ok(None);
        };
        let id: String = row.try_get("id")?;
        let keys: Vec<(String, String, String)> =
            sqlx::query_as("SELECT selector, algorithm, public_key_b64 FROM dkim_keys WHERE domain_id = $1 ORDER BY selector")
                .bind(&id)
                .fetch_all(&self.db.pool)
                .await?;
        let host = &self.cfg.hostname;
        let mut records = vec![
            DnsRecord {
                kind: "MX".into(),
                name: format!("{name}."),
                value: format!("10 {host}."),
                purpose: "route mail for the domain to this server".into(),
            },
            DnsRecord {
                kind: "TXT".into(),
                name: format!("{name}."),
                value: "v=spf1 mx -all".into(),
                purpose: "SPF: only the domain's MX hosts send its mail".into(),
            },
        ];
        for (selector, alg, public) in &keys {
            records.push(DnsRecord {
                kind: "TXT".into(),
                name: format!("{selector}._domainkey.{name}."),
                value: crate::dkim::dkim_txt(alg, public),
                purpose: format!("DKIM public key ({alg})"),
            });
        }
        records.push(DnsRecord {
            kind: "TXT".into(),
            name: format!("_dmarc.{name}."),
            value: format!("v=DMARC1; p=quarantine; adkim=s; aspf=s; rua=mailto:postmaster@{name}"),
            purpose: "DMARC: receivers quarantine mail that fails SPF and DKIM alignment".into(),
        });
        Ok(Some(Domain {
            id,
            name: row.try_get("name")?,
            is_default: row.try_get::<i64, _>("is_default")? != 0,
            created_at: crate::clock::to_rfc3339(row.try_get("created_at")?),
            dkim_selectors: keys.into_iter().map(|k| k.0).collect(),
            dns_records: records,
        }))
    }
}
