//! Policies: the limits an agent lives under (send caps, recipients,
//! sizes, retention, storage, confirmation, allow and block lists). An agent
//! uses its own policy, else the organisation's default one, else the
//! built-in defaults below.

use super::mailbox::{
    DEFAULT_INBOX_RETENTION_DAYS, DEFAULT_SPAM_RETENTION_DAYS, DEFAULT_STORAGE_BYTES,
};
use super::{Ctx, Page, Service, clean_text, page_limit, paginate};
use crate::error::{Error, Result, is_unique_violation};
use crate::ids::PolicyId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::{Any, Row};

pub const DEFAULT_SENDS_PER_DAY: i64 = 200;
pub const DEFAULT_RECIPIENTS_PER_MESSAGE: i64 = 50;
pub const DEFAULT_MAX_OUTBOUND_BYTES: i64 = 25 * 1024 * 1024;
pub const DEFAULT_CONFIRMATION_HOURS: i64 = 24;
/// Most entries in an allow or block list.
const MAX_LIST: usize = 1000;

/// When a send needs a human's confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Confirmation {
    Never,
    /// When any recipient is outside the organisation's domains.
    External,
    Always,
}

/// Every setting of a policy, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicySettings {
    /// Sends per UTC day (default 200).
    pub sends_per_day: i64,
    /// Sends per UTC hour; none by default.
    pub sends_per_hour: Option<i64>,
    /// Envelope recipients (to, cc and bcc) per message (default 50).
    pub recipients_per_message: i64,
    /// Largest outgoing message in bytes (default 25 MiB).
    pub max_outbound_bytes: i64,
    /// Days mail stays in the inbox (default 30; 0 keeps it).
    pub inbox_retention_days: i64,
    /// Days mail stays in spam (default 7; 0 keeps it).
    pub spam_retention_days: i64,
    /// Mailbox storage quota in bytes (default 1 GiB).
    pub storage_bytes: i64,
    pub confirmation: Confirmation,
    /// Hours a send waits for confirmation before it is rejected (default 24).
    pub confirmation_expiry_hours: i64,
    /// Domains (`example.com`, `*.example.com` for subdomains) or addresses.
    /// Listed recipients count as inside the organisation for
    /// `confirmation: external`.
    pub allow_recipients: Vec<String>,
    /// Domains or addresses never sent to; wins over the allow list.
    pub block_recipients: Vec<String>,
    /// Refuse a send when any recipient is not on the allow list.
    pub block_if_not_allowed: bool,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            sends_per_day: DEFAULT_SENDS_PER_DAY,
            sends_per_hour: None,
            recipients_per_message: DEFAULT_RECIPIENTS_PER_MESSAGE,
            max_outbound_bytes: DEFAULT_MAX_OUTBOUND_BYTES,
            inbox_retention_days: DEFAULT_INBOX_RETENTION_DAYS,
            spam_retention_days: DEFAULT_SPAM_RETENTION_DAYS,
            storage_bytes: DEFAULT_STORAGE_BYTES,
            confirmation: Confirmation::Never,
            confirmation_expiry_hours: DEFAULT_CONFIRMATION_HOURS,
            allow_recipients: vec![],
            block_recipients: vec![],
            block_if_not_allowed: false,
        }
    }
}

impl PolicySettings {
    /// Settings as stored; unknown or broken keys fall back to defaults, so
    /// a bad row can never loosen a limit to "unlimited".
    pub(crate) fn from_stored(stored: &str) -> Self {
        let v: Value = serde_json::from_str(stored).unwrap_or(Value::Null);
        let mut s = PolicySettings::default();
        if let Value::Object(map) = v {
            // Key by key: one broken value keeps its default, not the rest.
            for (k, v) in map {
                let _ = apply(&mut s, &Map::from_iter([(k, v)]));
            }
        }
        s
    }

    /// Is `recipient` (lowercase address) matched by one of `list`?
    pub(crate) fn listed(list: &[String], recipient: &str) -> bool {
        let domain = recipient.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        list.iter().any(|e| {
            if e.contains('@') {
                e == recipient
            } else if let Some(parent) = e.strip_prefix("*.") {
                domain.len() > parent.len() + 1
                    && domain.ends_with(parent)
                    && domain.as_bytes()[domain.len() - parent.len() - 1] == b'.'
            } else {
                e == domain
            }
        })
    }
}

fn int(field: &str, v: &Value, min: i64, max: i64) -> Result<i64> {
    v.as_i64()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| Error::invalid(field, format!("must be a whole number from {min} to {max}")))
}

fn list(field: &str, v: &Value) -> Result<Vec<String>> {
    let items = v
        .as_array()
        .ok_or_else(|| Error::invalid(field, "must be a list of domains or addresses"))?;
    if items.len() > MAX_LIST {
        return Err(Error::invalid(field, format!("at most {MAX_LIST} entries")));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let s = item
            .as_str()
            .map(|s| s.trim().to_ascii_lowercase())
            .ok_or_else(|| Error::invalid(&f, "must be a string"))?;
        let (local, domain) = match s.rsplit_once('@') {
            Some((l, d)) => (Some(l), d),
            None => (None, s.strip_prefix("*.").unwrap_or(&s)),
        };
        let domain_ok = !domain.is_empty()
            && domain.len() <= 253
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        let local_ok = local.is_none_or(|l| {
            !l.is_empty()
                && l.len() <= 64
                && !l.bytes().any(|b| b <= b' ' || b"<>@\",;".contains(&b))
        });
        if !domain_ok || !local_ok {
            return Err(Error::invalid(
                &f,
                "must be a domain (example.com), a subdomain pattern (*.example.com) or an address",
            ));
        }
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

/// Applies the keys of `map` to `s`, validating each; errors name the field.
fn apply(s: &mut PolicySettings, map: &Map<String, Value>) -> Result<()> {
    const BIG: i64 = 1 << 50;
    for (k, v) in map {
        match k.as_str() {
            "sends_per_day" => s.sends_per_day = int(k, v, 0, 10_000_000)?,
            "sends_per_hour" => {
                s.sends_per_hour = if v.is_null() {
                    None
                } else {
                    Some(int(k, v, 0, 10_000_000)?)
                }
            }
            "recipients_per_message" => s.recipients_per_message = int(k, v, 1, 1000)?,
            "max_outbound_bytes" => s.max_outbound_bytes = int(k, v, 1024, 100 * 1024 * 1024)?,
            "inbox_retention_days" => s.inbox_retention_days = int(k, v, 0, 36_500)?,
            "spam_retention_days" => s.spam_retention_days = int(k, v, 0, 36_500)?,
            "storage_bytes" => s.storage_bytes = int(k, v, 0, BIG)?,
            "confirmation" => {
                s.confirmation = serde_json::from_value(v.clone())
                    .map_err(|_| Error::invalid(k, "must be never, external or always"))?
            }
            "confirmation_expiry_hours" => s.confirmation_expiry_hours = int(k, v, 1, 24 * 30)?,
            "allow_recipients" => s.allow_recipients = list(k, v)?,
            "block_recipients" => s.block_recipients = list(k, v)?,
            "block_if_not_allowed" => {
                s.block_if_not_allowed = v
                    .as_bool()
                    .ok_or_else(|| Error::invalid(k, "must be true or false"))?
            }
            _ => return Err(Error::invalid(k, "is not a policy setting")),
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Policy {
    pub id: String,
    pub name: String,
    /// The organisation's default: agents without their own policy use it.
    pub is_default: bool,
    #[serde(flatten)]
    pub settings: PolicySettings,
    pub created_at: String,
    pub updated_at: String,
}

/// The body of `POST /v1/policies` and `PATCH /v1/policies/{id}`: a name,
/// `is_default`, and any settings (omitted settings keep their value, or
/// the default on create; `sends_per_hour: null` removes the hourly cap).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct PolicyInput {
    pub name: Option<String>,
    pub is_default: Option<bool>,
    pub sends_per_day: Option<i64>,
    pub sends_per_hour: Option<i64>,
    pub recipients_per_message: Option<i64>,
    pub max_outbound_bytes: Option<i64>,
    pub inbox_retention_days: Option<i64>,
    pub spam_retention_days: Option<i64>,
    pub storage_bytes: Option<i64>,
    pub confirmation: Option<Confirmation>,
    pub confirmation_expiry_hours: Option<i64>,
    pub allow_recipients: Option<Vec<String>>,
    pub block_recipients: Option<Vec<String>>,
    pub block_if_not_allowed: Option<bool>,
}

fn policy_from_row(r: &sqlx::any::AnyRow) -> Result<Policy> {
    let settings: String = r.try_get("settings")?;
    Ok(Policy {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        is_default: r.try_get::<i64, _>("is_default")? != 0,
        settings: PolicySettings::from_stored(&settings),
        created_at: crate::clock::to_rfc3339(r.try_get("created_at")?),
        updated_at: crate::clock::to_rfc3339(r.try_get("updated_at")?),
    })
}

/// The settings that apply to an agent with `policy_id`.
/// The settings an agent's policy resolves to, as a scalar subquery over
/// the agent row `a` (its policy, else the default; NULL if neither), so a
/// lookup of the agent reads its policy in the same statement.
pub(crate) const AGENT_POLICY_SETTINGS: &str = "(SELECT p.settings FROM policies p WHERE p.id = a.policy_id \
     OR (p.is_default = 1 AND NOT EXISTS (SELECT 1 FROM policies q WHERE q.id = a.policy_id)) \
     ORDER BY p.is_default LIMIT 1)";

pub(crate) async fn effective_policy<'e, E>(
    exec: E,
    policy_id: Option<&str>,
) -> Result<PolicySettings>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT settings FROM policies WHERE id = $1 OR (is_default = 1 AND NOT EXISTS (SELECT 1 FROM policies WHERE id = $1)) \
         ORDER BY is_default LIMIT 1",
    )
    .bind(policy_id.unwrap_or(""))
    .fetch_optional(exec)
    .await?;
    Ok(PolicySettings::resolved(row.map(|(s,)| s)))
}

impl PolicySettings {
    /// The settings a policy lookup found, or the defaults if none.
    pub(crate) fn resolved(stored: Option<String>) -> Self {
        stored.map(|s| Self::from_stored(&s)).unwrap_or_default()
    }
}

/// Splits a request body into name, is_default and the settings keys.
/// Name, is_default, and the settings keys of a request body.
type PolicyParts = (Option<String>, Option<bool>, Map<String, Value>);

fn split_input(body: Value) -> Result<PolicyParts> {
    let Value::Object(mut map) = body else {
        return Err(Error::BadRequest("the body must be a JSON object".into()));
    };
    let name = match map.remove("name") {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(Error::invalid("name", "must be a string")),
    };
    let is_default = match map.remove("is_default") {
        None => None,
        Some(Value::Bool(b)) => Some(b),
        Some(_) => return Err(Error::invalid("is_default", "must be true or false")),
    };
    Ok((name, is_default, map))
}

fn clean_name(name: Option<String>) -> Result<Option<String>> {
    clean_text("name", name, 100)
}

impl Service {
    pub async fn create_policy(&self, ctx: &Ctx, body: Value) -> Result<Policy> {
        self.require_admin(ctx, "policy.create", None).await?;
        let (name, is_default, map) = split_input(body)?;
        let name = clean_name(name)?.ok_or_else(|| Error::invalid("name", "is required"))?;
        let mut settings = PolicySettings::default();
        apply(&mut settings, &map)?;
        let id = PolicyId::new();
        let now = self.now();
        let mut tx = self.db.begin_write().await?;
        let org = self.org_id(&mut tx).await?;
        if is_default == Some(true) {
            sqlx::query("UPDATE policies SET is_default = 0 WHERE is_default = 1")
                .execute(&mut *tx)
                .await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO policies (id, org_id, name, settings, is_default, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$6)",
        )
        .bind(id.as_str())
        .bind(&org)
        .bind(&name)
        .bind(json!(settings).to_string())
        .bind(is_default.unwrap_or(false) as i64)
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            return Err(if is_unique_violation(&e) {
                Error::conflict_on(
                    "policy-exists",
                    "name",
                    format!("a policy named '{name}' exists"),
                )
            } else {
                e.into()
            });
        }
        let entry = self.entry(
            ctx,
            "policy.create",
            Some("policy"),
            Some(id.0.clone()),
            None,
            "success",
            json!({ "name": name, "is_default": is_default.unwrap_or(false), "settings": settings }),
        );
        self.record(
            &mut tx,
            &entry,
            Some(("policy.created", json!({ "policy_id": id.0, "name": name }))),
        )
        .await?;
        tx.commit().await?;
        self.load_policy(id.as_str()).await
    }

    async fn load_policy(&self, id: &str) -> Result<Policy> {
        let row = sqlx::query(
            "SELECT id, name, settings, is_default, created_at, updated_at FROM policies WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or_else(|| Error::not_found("policy"))?;
        policy_from_row(&row)
    }

    /// Admins see every policy; an agent token sees only the one it lives under.
    pub async fn get_policy(&self, ctx: &Ctx, id: &str) -> Result<Policy> {
        if !ctx.principal.is_admin() {
            return Err(Error::not_found("policy"));
        }
        self.load_policy(id).await
    }

    pub async fn list_policies(
        &self,
        ctx: &Ctx,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Policy>> {
        self.require_admin(ctx, "policy.list", None).await?;
        let limit = page_limit(limit)?;
        let rows = sqlx::query(
            "SELECT id, name, settings, is_default, created_at, updated_at FROM policies WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(cursor.unwrap_or(""))
        .bind(limit + 1)
        .fetch_all(&self.db.pool)
        .await?;
        let items = rows
            .iter()
            .map(policy_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(items, limit, |p| p.id.clone()))
    }

    pub async fn update_policy(&self, ctx: &Ctx, id: &str, body: Value) -> Result<Policy> {
        self.require_admin(ctx, "policy.update", Some(id)).await?;
        let current = self.load_policy(id).await?;
        let (name, is_default, map) = split_input(body)?;
        let name = match name {
            Some(n) => {
                clean_name(Some(n))?.ok_or_else(|| Error::invalid("name", "may not be empty"))?
            }
            None => current.name.clone(),
        };
        let mut settings = current.settings.clone();
        apply(&mut settings, &map)?;
        let is_default = is_default.unwrap_or(current.is_default);
        let mut tx = self.db.begin_write().await?;
        if is_default && !current.is_default {
            sqlx::query("UPDATE policies SET is_default = 0 WHERE is_default = 1")
                .execute(&mut *tx)
                .await?;
        }
        let updated = sqlx::query(
            "UPDATE policies SET name = $1, settings = $2, is_default = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(&name)
        .bind(json!(settings).to_string())
        .bind(is_default as i64)
        .bind(self.now())
        .bind(id)
        .execute(&mut *tx)
        .await;
        if let Err(e) = updated {
            return Err(if is_unique_violation(&e) {
                Error::conflict_on(
                    "policy-exists",
                    "name",
                    format!("a policy named '{name}' exists"),
                )
            } else {
                e.into()
            });
        }
        let entry = self.entry(
            ctx,
            "policy.update",
            Some("policy"),
            Some(id.to_string()),
            None,
            "success",
            json!({ "before": current.settings, "after": settings, "name": name, "is_default": is_default }),
        );
        self.record(
            &mut tx,
            &entry,
            Some(("policy.updated", json!({ "policy_id": id, "name": name }))),
        )
        .await?;
        tx.commit().await?;
        self.accepted_rcpts.clear();
        self.load_policy(id).await
    }

    /// Refused with `409 policy-in-use`, naming the agents, while any
    /// agent (not yet decommissioned) uses it.
    pub async fn delete_policy(&self, ctx: &Ctx, id: &str) -> Result<()> {
        self.require_admin(ctx, "policy.delete", Some(id)).await?;
        let current = self.load_policy(id).await?;
        let mut tx = self.db.begin_write().await?;
        // Decommissioned agents keep their row (tombstone, export) but no
        // longer live under any policy.
        sqlx::query(
            "UPDATE agents SET policy_id = NULL WHERE policy_id = $1 AND status = 'decommissioned'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let users: Vec<(String,)> = sqlx::query_as(
            "SELECT address FROM agents WHERE policy_id = $1 ORDER BY address LIMIT 51",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            let names: Vec<&str> = users.iter().take(50).map(|(a,)| a.as_str()).collect();
            let more = if users.len() > 50 { " and more" } else { "" };
            return Err(Error::conflict(
                "policy-in-use",
                format!(
                    "agents still use this policy: {}{more}; move them to another policy first",
                    names.join(", ")
                ),
            ));
        }
        sqlx::query("DELETE FROM policies WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let entry = self.entry(
            ctx,
            "policy.delete",
            Some("policy"),
            Some(id.to_string()),
            None,
            "success",
            json!({ "name": current.name, "settings": current.settings }),
        );
        self.record(
            &mut tx,
            &entry,
            Some((
                "policy.deleted",
                json!({ "policy_id": id, "name": current.name }),
            )),
        )
        .await?;
        tx.commit().await?;
        self.accepted_rcpts.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_match_addresses_domains_and_subdomains() {
        let l = vec!["a@x.com".to_string(), "y.org".into(), "*.z.net".into()];
        assert!(PolicySettings::listed(&l, "a@x.com"));
        assert!(!PolicySettings::listed(&l, "b@x.com"));
        assert!(PolicySettings::listed(&l, "b@y.org"));
        assert!(!PolicySettings::listed(&l, "b@sub.y.org"));
        assert!(PolicySettings::listed(&l, "b@sub.z.net"));
        assert!(!PolicySettings::listed(&l, "b@z.net"));
        assert!(!PolicySettings::listed(&l, "b@evilz.net"));
    }

    #[test]
    fn settings_validate_with_field_names() {
        let mut s = PolicySettings::default();
        let bad = json!({ "sends_per_day": -1 });
        let e = apply(&mut s, bad.as_object().unwrap()).unwrap_err();
        assert!(matches!(e, Error::Invalid { ref field, .. } if field == "sends_per_day"));
        let bad = json!({ "block_recipients": ["ok.com", "not a domain"] });
        let e = apply(&mut s, bad.as_object().unwrap()).unwrap_err();
        assert!(matches!(e, Error::Invalid { ref field, .. } if field == "block_recipients[1]"));
        let bad = json!({ "bogus": 1 });
        assert!(apply(&mut s, bad.as_object().unwrap()).is_err());
        let good = json!({ "sends_per_hour": 5, "confirmation": "external", "allow_recipients": ["Partner.COM"] });
        apply(&mut s, good.as_object().unwrap()).unwrap();
        assert_eq!(s.sends_per_hour, Some(5));
        assert_eq!(s.confirmation, Confirmation::External);
        assert_eq!(s.allow_recipients, vec!["partner.com".to_string()]);
        let round = PolicySettings::from_stored(&json!(s).to_string());
        assert_eq!(round, s);
    }
}
