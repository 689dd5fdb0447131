//! The HTTP API: axum handlers over the gate, an OpenAPI document generated
//! from them, RFC 9457 problem documents for every error.

pub mod extract;
pub mod middleware;
pub mod problem;
pub mod routes;

use agentpost_core::Service;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use metrics_exporter_prometheus::PrometheusHandle;
use routes::{admin, agents, events, messages, nylas, outbound, system, webhooks};
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Clone)]
pub struct AppState {
    pub svc: Arc<Service>,
    pub metrics: Option<PrometheusHandle>,
    openapi_json: Arc<String>,
    docs_html: Arc<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "agentpost", description = "A mail and identity server for AI agents: each agent gets its own address, scoped credentials, limits and a tamper-evident audit trail."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(problem::Problem))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An admin key (ap_adm_…), agent token (ap_agt_…) or approver token (ap_apr_…)"))
                    .build(),
            ),
        );
    }
}

/// Every authenticated route, with its OpenAPI description.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(admin::me))
        .routes(routes!(agents::create_agent, agents::list_agents))
        .routes(routes!(agents::get_agent, agents::update_agent))
        .routes(routes!(agents::suspend_agent))
        .routes(routes!(agents::resume_agent))
        .routes(routes!(agents::decommission_agent))
        .routes(routes!(agents::download_export))
        .routes(routes!(agents::create_token, agents::list_tokens))
        .routes(routes!(agents::revoke_token))
        .routes(routes!(agents::rotate_token))
        .routes(routes!(agents::agent_audit))
        .routes(routes!(messages::list_messages))
        .routes(routes!(
            messages::get_message,
            messages::update_message,
            messages::delete_message
        ))
        .routes(routes!(messages::download_attachment))
        .routes(routes!(messages::list_threads))
        .routes(routes!(messages::get_thread))
        .routes(routes!(messages::folders))
        .routes(routes!(admin::create_admin_key, admin::list_admin_keys))
        .routes(routes!(admin::revoke_admin_key))
        .routes(routes!(admin::rotate_admin_key))
        .routes(routes!(admin::create_approver, admin::list_approvers))
        .routes(routes!(admin::revoke_approver))
        .routes(routes!(admin::add_domain, admin::list_domains))
        .routes(routes!(admin::domain_dns))
        .routes(routes!(admin::list_audit))
        .routes(routes!(admin::verify_audit))
        .routes(routes!(webhooks::create_webhook, webhooks::list_webhooks))
        .routes(routes!(
            webhooks::get_webhook,
            webhooks::update_webhook,
            webhooks::delete_webhook
        ))
        .routes(routes!(webhooks::rotate_webhook_secret))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(webhooks::test_webhook))
        .routes(routes!(webhooks::replay_webhook))
        .routes(routes!(events::list_events))
        .routes(routes!(outbound::create_policy, outbound::list_policies))
        .routes(routes!(
            outbound::get_policy,
            outbound::update_policy,
            outbound::delete_policy
        ))
        .routes(routes!(outbound::usage))
        .routes(routes!(outbound::list_drafts))
        .routes(routes!(outbound::get_draft, outbound::delete_draft))
        .routes(routes!(outbound::list_sends))
        .routes(routes!(outbound::get_send))
        .routes(routes!(outbound::get_send_raw))
        .routes(routes!(outbound::confirm_send))
        .routes(routes!(outbound::reject_send))
        .routes(routes!(
            outbound::create_app_password,
            outbound::list_app_passwords
        ))
        .routes(routes!(outbound::revoke_app_password))
        .merge(large_body_routes())
        .routes(routes!(nylas::connect_custom))
        .routes(routes!(nylas::get_grant, nylas::delete_grant))
}

/// Routes that carry whole messages with attachments: a policy allows up
/// to 100 MiB outgoing, which is about 135 MiB as base64 in JSON.
fn large_body_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(outbound::send_message))
        .routes(routes!(outbound::reply_message))
        .routes(routes!(outbound::forward_message))
        .routes(routes!(outbound::create_draft))
        .routes(routes!(outbound::update_draft))
        .routes(routes!(outbound::send_draft))
        .layer(DefaultBodyLimit::max(middleware::LARGE_BODY_LIMIT))
}

/// Operational routes: no credential.
fn system_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi_json))
        .routes(routes!(system::docs))
}

/// The OpenAPI document alone (for `agentpost openapi` and tests).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_routes().split_for_parts().1;
    doc.merge(system_routes().split_for_parts().1);
    doc
}

pub fn router(svc: Arc<Service>, metrics: Option<PrometheusHandle>) -> Router {
    let (api, mut doc) = api_routes().split_for_parts();
    let (system, system_doc) = system_routes().split_for_parts();
    doc.merge(system_doc);
    let state = AppState {
        svc,
        metrics,
        openapi_json: Arc::new(doc.to_pretty_json().unwrap_or_default()),
        docs_html: Arc::new(system::render_docs(&doc)),
    };
    // Layers run outside-in: request id, then auth, then idempotency.
    let api = api
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::idempotency,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::authenticate,
        ));
    Router::new()
        .merge(system)
        .merge(api)
        .fallback(|| async {
            problem::problem_response(
                404,
                "not-found",
                "no such route; see /docs".into(),
                None,
                None,
            )
        })
        .method_not_allowed_fallback(|| async {
            problem::problem_response(
                405,
                "method-not-allowed",
                "this route does not take that method; see /docs".into(),
                None,
                None,
            )
        })
        .route_layer(axum::middleware::from_fn(middleware::metrics))
        .layer(DefaultBodyLimit::max(middleware::BODY_LIMIT))
        .layer(axum::middleware::from_fn(middleware::request_id))
        .with_state(state)
}
