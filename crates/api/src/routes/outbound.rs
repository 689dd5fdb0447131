//! Outbound mail: policies (admin), drafts (`mail.draft`), sending,
//! replying and forwarding (`mail.send`), the two-step confirmation of
//! held sends (admins and the agent's sponsor's approver tokens), usage,
//! and app passwords for SMTP submission.

use super::agents::PageParams;
use crate::AppState;
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::problem::{ApiResult, Problem};
use agentpost_core::{
    AppPassword, Compose, Draft, ForwardRequest, IssuedAppPassword, NewAppPassword, Page, Policy,
    PolicyInput, ReplyRequest, SendInfo, SendQuery, Usage,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

/// Sends answer 202: delivery happens after the answer, and a held send
/// waits for a human.
fn accepted(info: SendInfo) -> Response {
    (StatusCode::ACCEPTED, Json(info)).into_response()
}

/// Create a policy. Omitted settings take their defaults.
#[utoipa::path(post, path = "/v1/policies", tag = "policies", request_body = PolicyInput,
    responses((status = 201, body = Policy), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_policy(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(s.svc.create_policy(&ctx, body).await?),
    ))
}

/// List policies.
#[utoipa::path(get, path = "/v1/policies", tag = "policies", params(PageParams), responses((status = 200, body = Page<Policy>), (status = 403, body = Problem)))]
pub async fn list_policies(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Policy>>> {
    Ok(Json(
        s.svc
            .list_policies(&ctx, q.cursor.as_deref(), q.limit)
            .await?,
    ))
}

/// One policy.
#[utoipa::path(get, path = "/v1/policies/{id}", tag = "policies", params(("id" = String, Path)), responses((status = 200, body = Policy), (status = 404, body = Problem)))]
pub async fn get_policy(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Policy>> {
    Ok(Json(s.svc.get_policy(&ctx, &id).await?))
}

/// Change settings; omitted ones keep their value, `sends_per_hour: null` removes the hourly cap.
#[utoipa::path(patch, path = "/v1/policies/{id}", tag = "policies", params(("id" = String, Path)), request_body = PolicyInput,
    responses((status = 200, body = Policy), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update_policy(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<Policy>> {
    Ok(Json(s.svc.update_policy(&ctx, &id, body).await?))
}

/// Delete a policy; `409 policy-in-use` names the agents still using it.
#[utoipa::path(delete, path = "/v1/policies/{id}", tag = "policies", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete_policy(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.svc.delete_policy(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends counted today and this hour against the caps, and storage.
#[utoipa::path(get, path = "/v1/agents/{id}/usage", tag = "mail", params(("id" = String, Path)), responses((status = 200, body = Usage), (status = 404, body = Problem)))]
pub async fn usage(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Usage>> {
    Ok(Json(s.svc.usage(&ctx, &id).await?))
}

/// Send a message from the agent's own address. `202` with status
/// `queued`, or `pending_confirmation` when the policy holds it for a human.
#[utoipa::path(post, path = "/v1/agents/{id}/messages/send", tag = "mail", params(("id" = String, Path)), request_body = Compose,
    responses((status = 202, body = SendInfo), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem, description = "over the send cap; Retry-After says when it resets")))]
pub async fn send_message(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiJson(c): ApiJson<Compose>,
) -> ApiResult<Response> {
    Ok(accepted(s.svc.send_message(&ctx, &id, c).await?))
}

/// Reply (or reply-all) to a message in the agent's mailbox.
#[utoipa::path(post, path = "/v1/agents/{id}/messages/{message_id}/reply", tag = "mail", params(("id" = String, Path), ("message_id" = String, Path)), request_body = ReplyRequest,
    responses((status = 202, body = SendInfo), (status = 404, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
pub async fn reply_message(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, mid)): Path<(String, String)>,
    ApiJson(r): ApiJson<ReplyRequest>,
) -> ApiResult<Response> {
    Ok(accepted(s.svc.reply_to_message(&ctx, &id, &mid, r).await?))
}

/// Forward a message in the agent's mailbox.
#[utoipa::path(post, path = "/v1/agents/{id}/messages/{message_id}/forward", tag = "mail", params(("id" = String, Path), ("message_id" = String, Path)), request_body = ForwardRequest,
    responses((status = 202, body = SendInfo), (status = 404, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
pub async fn forward_message(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, mid)): Path<(String, String)>,
    ApiJson(f): ApiJson<ForwardRequest>,
) -> ApiResult<Response> {
    Ok(accepted(s.svc.forward_message(&ctx, &id, &mid, f).await?))
}

/// Create a draft.
#[utoipa::path(post, path = "/v1/agents/{id}/drafts", tag = "drafts", params(("id" = String, Path)), request_body = Compose,
    responses((status = 201, body = Draft), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn create_draft(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiJson(c): ApiJson<Compose>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(s.svc.create_draft(&ctx, &id, c).await?),
    ))
}

/// List drafts, oldest first.
#[utoipa::path(get, path = "/v1/agents/{id}/drafts", tag = "drafts", params(("id" = String, Path), PageParams), responses((status = 200, body = Page<Draft>), (status = 404, body = Problem)))]
pub async fn list_drafts(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Draft>>> {
    Ok(Json(
        s.svc
            .list_drafts(&ctx, &id, q.cursor.as_deref(), q.limit)
            .await?,
    ))
}

/// One draft.
#[utoipa::path(get, path = "/v1/agents/{id}/drafts/{draft_id}", tag = "drafts", params(("id" = String, Path), ("draft_id" = String, Path)), responses((status = 200, body = Draft), (status = 404, body = Problem)))]
pub async fn get_draft(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, did)): Path<(String, String)>,
) -> ApiResult<Json<Draft>> {
    Ok(Json(s.svc.get_draft(&ctx, &id, &did).await?))
}

/// Change a draft (fields present replace theirs). Voids a send of it that waits for confirmation.
#[utoipa::path(patch, path = "/v1/agents/{id}/drafts/{draft_id}", tag = "drafts", params(("id" = String, Path), ("draft_id" = String, Path)), request_body = Compose,
    responses((status = 200, body = Draft), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update_draft(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, did)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<Draft>> {
    Ok(Json(s.svc.update_draft(&ctx, &id, &did, body).await?))
}

/// Delete a draft (voids a send of it that waits for confirmation).
#[utoipa::path(delete, path = "/v1/agents/{id}/drafts/{draft_id}", tag = "drafts", params(("id" = String, Path), ("draft_id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_draft(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, did)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.svc.delete_draft(&ctx, &id, &did).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a draft; once queued the draft is gone (the message is in `sent`).
#[utoipa::path(post, path = "/v1/agents/{id}/drafts/{draft_id}/send", tag = "drafts", params(("id" = String, Path), ("draft_id" = String, Path)),
    responses((status = 202, body = SendInfo), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
pub async fn send_draft(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, did)): Path<(String, String)>,
) -> ApiResult<Response> {
    Ok(accepted(s.svc.send_draft(&ctx, &id, &did).await?))
}

/// Sends the caller can see: `?status=pending` lists what waits for
/// confirmation (an approver sees its sponsored agents' sends).
#[utoipa::path(get, path = "/v1/sends", tag = "sends", params(SendQuery), responses((status = 200, body = Page<SendInfo>), (status = 422, body = Problem)))]
pub async fn list_sends(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(q): ApiQuery<SendQuery>,
) -> ApiResult<Json<Page<SendInfo>>> {
    Ok(Json(s.svc.list_sends(&ctx, q).await?))
}

/// One send with per-recipient delivery status.
#[utoipa::path(get, path = "/v1/sends/{id}", tag = "sends", params(("id" = String, Path)), responses((status = 200, body = SendInfo), (status = 404, body = Problem)))]
pub async fn get_send(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SendInfo>> {
    Ok(Json(s.svc.get_send(&ctx, &id).await?))
}

/// The exact bytes of a send (whose SHA-256 the send carries): what a confirmation approves.
#[utoipa::path(get, path = "/v1/sends/{id}/raw", tag = "sends", params(("id" = String, Path)),
    responses((status = 200, content_type = "message/rfc822", description = "the message as it will be sent"), (status = 404, body = Problem)))]
pub async fn get_send_raw(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let bytes = s.svc.get_send_raw(&ctx, &id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "message/rfc822".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"send-{id}.eml\""),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    /// The SHA-256 the approver reviewed; refused if the bytes differ.
    pub sha256: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    pub reason: Option<String>,
}

/// Confirm a held send (an admin key, or an approver token of the agent's sponsor; never the agent).
#[utoipa::path(post, path = "/v1/sends/{id}/confirm", tag = "sends", params(("id" = String, Path)), request_body = ConfirmBody,
    responses((status = 200, body = SendInfo), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem, description = "not pending: already decided, expired or voided"), (status = 422, body = Problem)))]
pub async fn confirm_send(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ConfirmBody>,
) -> ApiResult<Json<SendInfo>> {
    Ok(Json(
        s.svc.confirm_send(&ctx, &id, b.sha256.as_deref()).await?,
    ))
}

/// Reject a held send, with a reason.
#[utoipa::path(post, path = "/v1/sends/{id}/reject", tag = "sends", params(("id" = String, Path)), request_body = RejectBody,
    responses((status = 200, body = SendInfo), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn reject_send(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<RejectBody>,
) -> ApiResult<Json<SendInfo>> {
    Ok(Json(s.svc.reject_send(&ctx, &id, b.reason).await?))
}

/// Create an app password for SMTP submission (shown once; the user name is the agent's address).
#[utoipa::path(post, path = "/v1/agents/{id}/app-passwords", tag = "mail", params(("id" = String, Path)), request_body = NewAppPassword,
    responses((status = 201, body = IssuedAppPassword), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn create_app_password(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<NewAppPassword>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(s.svc.create_app_password(&ctx, &id, b).await?),
    ))
}

/// List app passwords (never the passwords).
#[utoipa::path(get, path = "/v1/agents/{id}/app-passwords", tag = "mail", params(("id" = String, Path), PageParams), responses((status = 200, body = Page<AppPassword>)))]
pub async fn list_app_passwords(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<AppPassword>>> {
    Ok(Json(
        s.svc
            .list_app_passwords(&ctx, &id, q.cursor.as_deref(), q.limit)
            .await?,
    ))
}

/// Revoke an app password.
#[utoipa::path(delete, path = "/v1/agents/{id}/app-passwords/{password_id}", tag = "mail", params(("id" = String, Path), ("password_id" = String, Path)),
    responses((status = 200, body = AppPassword), (status = 404, body = Problem)))]
pub async fn revoke_app_password(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, pid)): Path<(String, String)>,
) -> ApiResult<Json<AppPassword>> {
    Ok(Json(s.svc.revoke_app_password(&ctx, &id, &pid).await?))
}
