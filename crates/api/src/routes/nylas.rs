//! The seed's call, Nylas-shaped: `POST /v3/connect/custom` provisions an
//! agent and answers like a Nylas grant. Translation happens only here; in
//! the rest of the code a grant is an agent.

use crate::AppState;
use crate::extract::{ApiJson, Caller};
use crate::middleware::RequestId;
use crate::problem::{ApiResult, Problem};
use agentpost_core::{Agent, AgentStatus, Error, NewAgent, PrincipalKind};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ConnectCustom {
    /// Must be `nylas`.
    pub provider: Option<String>,
    pub settings: Option<ConnectSettings>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ConnectSettings {
    pub email: Option<String>,
    /// agentpost extension: the accountable human. Defaults to the calling admin key.
    pub sponsor: Option<String>,
    pub display_name: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Grant {
    pub id: String,
    pub provider: String,
    /// `valid` for an active agent, otherwise `invalid`.
    pub grant_status: String,
    pub email: String,
    /// Unix seconds.
    pub created_at: i64,
    /// agentpost extension: the agent's first token, shown once (creation only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agentpost_token: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GrantResponse {
    pub request_id: String,
    pub data: Grant,
}

fn grant(agent: &Agent, token: Option<String>) -> Grant {
    Grant {
        id: agent.id.0.clone(),
        provider: "nylas".into(),
        grant_status: if agent.status == AgentStatus::Active {
            "valid"
        } else {
            "invalid"
        }
        .into(),
        email: agent.address.clone(),
        created_at: agent.created_at_micros / 1_000_000,
        agentpost_token: token,
    }
}

/// Nylas-compatible provisioning (`provider: nylas`, `settings.email`).
#[utoipa::path(post, path = "/v3/connect/custom", tag = "nylas compatibility", request_body = ConnectCustom,
    responses((status = 200, body = GrantResponse), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn connect_custom(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Extension(rid): Extension<RequestId>,
    ApiJson(body): ApiJson<ConnectCustom>,
) -> ApiResult<impl IntoResponse> {
    match body.provider.as_deref() {
        Some("nylas") => {}
        Some(other) => {
            return Err(Error::invalid(
                "provider",
                format!("provider '{other}' is not supported; use \"nylas\""),
            )
            .into());
        }
        None => return Err(Error::invalid("provider", "is required (\"nylas\")").into()),
    }
    let settings = body
        .settings
        .ok_or_else(|| Error::invalid("settings", "is required"))?;
    let email = settings
        .email
        .ok_or_else(|| Error::invalid("settings.email", "is required"))?;
    // Without a named sponsor, the human holding the admin key is accountable.
    let sponsor = settings.sponsor.or_else(|| {
        (ctx.principal.kind == PrincipalKind::Admin)
            .then(|| ctx.principal.subject.clone())
            .flatten()
    });
    let new = NewAgent {
        address: Some(email),
        sponsor: Some(sponsor.unwrap_or_else(|| "operator@agentpost.invalid".into())),
        display_name: settings.display_name,
        ..Default::default()
    };
    let (agent, token) = s.svc.create_agent(&ctx, new).await.map_err(|e| match e {
        Error::Invalid { field, message } if field == "address" => Error::Invalid {
            field: "settings.email".into(),
            message,
        },
        Error::Conflict { code, message, .. } => Error::Conflict {
            code,
            message,
            field: Some("settings.email".into()),
        },
        other => other,
    })?;
    Ok((
        StatusCode::OK,
        Json(GrantResponse {
            request_id: rid.0,
            data: grant(&agent, Some(token.secret)),
        }),
    ))
}

/// A grant (agent) in Nylas shape.
#[utoipa::path(get, path = "/v3/grants/{id}", tag = "nylas compatibility", params(("id" = String, Path)), responses((status = 200, body = GrantResponse), (status = 404, body = Problem)))]
pub async fn get_grant(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Extension(rid): Extension<RequestId>,
    Path(id): Path<String>,
) -> ApiResult<Json<GrantResponse>> {
    let agent = s.svc.get_agent(&ctx, &id).await?;
    Ok(Json(GrantResponse {
        request_id: rid.0,
        data: grant(&agent, None),
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeletedGrant {
    pub request_id: String,
}

/// Deleting a grant decommissions the agent (export, purge, tombstone).
#[utoipa::path(delete, path = "/v3/grants/{id}", tag = "nylas compatibility", params(("id" = String, Path)), responses((status = 200, body = DeletedGrant), (status = 404, body = Problem)))]
pub async fn delete_grant(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Extension(rid): Extension<RequestId>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeletedGrant>> {
    s.svc.decommission_agent(&ctx, &id).await?;
    Ok(Json(DeletedGrant { request_id: rid.0 }))
}
