//! The bridge from the SMTP submission listener to the gate: AUTH is an
//! app-password check, MAIL and RCPT are the gate's sender and recipient
//! checks, and end of DATA is a send through the same caps and
//! confirmation as the API. The gate's errors become SMTP replies with
//! enhanced status codes. No storage logic lives here.

use agentpost_core::{Error, Service, SubmissionIdentity};
use agentpost_smtp::{AuthRefused, SubmissionHandler, SubmitOutcome, SubmitRefusal};
use std::net::IpAddr;
use std::sync::Arc;

pub struct Submission {
    svc: Arc<Service>,
}

impl Submission {
    pub fn new(svc: Arc<Service>) -> Self {
        Submission { svc }
    }
}

/// The gate's refusal as an SMTP reply.
fn refusal(e: Error) -> SubmitRefusal {
    match e {
        Error::RateLimited { message, .. } => SubmitRefusal::over_limit(message),
        Error::Invalid { message, .. } => SubmitRefusal::policy(message),
        Error::Forbidden(message) => SubmitRefusal::content(message),
        Error::Conflict { message, .. } => SubmitRefusal::policy(message),
        Error::NotFound(_) | Error::Unauthenticated(_) => {
            SubmitRefusal::new(421, (4, 7, 0), "the agent is no longer available")
        }
        Error::BadRequest(message) => SubmitRefusal::new(501, (5, 5, 4), message),
        Error::Internal(message) => {
            tracing::error!(error = %message, "submission failed");
            SubmitRefusal::temporary()
        }
    }
}

impl SubmissionHandler for Submission {
    type Identity = SubmissionIdentity;

    async fn authenticate(
        &self,
        username: &str,
        password: &str,
        client_ip: IpAddr,
    ) -> Result<SubmissionIdentity, AuthRefused> {
        match self
            .svc
            .authenticate_app_password(username, password, &client_ip.to_string())
            .await
        {
            Ok(id) => Ok(id),
            Err(Error::Unauthenticated(_)) => Err(AuthRefused::Invalid),
            Err(e) => {
                tracing::warn!(error = %e, "app password check failed");
                Err(AuthRefused::Temporary)
            }
        }
    }

    async fn check_sender(
        &self,
        id: &SubmissionIdentity,
        mail_from: &str,
    ) -> Result<(), SubmitRefusal> {
        if self.svc.submission_sender_ok(id, mail_from) {
            Ok(())
        } else {
            Err(SubmitRefusal::sender_not_owned())
        }
    }

    async fn check_recipient(
        &self,
        id: &SubmissionIdentity,
        rcpt: &str,
        accepted_so_far: usize,
    ) -> Result<(), SubmitRefusal> {
        self.svc
            .check_submission_recipient(id, rcpt, accepted_so_far)
            .await
            .map_err(|e| match e {
                Error::Invalid {
                    ref field,
                    ref message,
                } if field == "rcpt" && message.contains("recipients per message") => {
                    SubmitRefusal::too_many_recipients()
                }
                Error::Invalid { ref message, .. } if message.contains("not an email address") => {
                    SubmitRefusal::bad_address()
                }
                e => refusal(e),
            })
    }

    async fn submit(
        &self,
        id: &SubmissionIdentity,
        _mail_from: &str,
        rcpt_to: &[String],
        message: Vec<u8>,
        _client_ip: IpAddr,
    ) -> SubmitOutcome {
        match self.svc.submit_message(id, rcpt_to, message).await {
            Ok(info) if info.status == "pending_confirmation" => SubmitOutcome::Held {
                send_id: info.send_id,
            },
            Ok(info) => SubmitOutcome::Queued { id: info.send_id },
            Err(Error::Invalid { ref field, .. }) if field == "message" => {
                SubmitOutcome::Refused(SubmitRefusal::too_big())
            }
            Err(e) => SubmitOutcome::Refused(refusal(e)),
        }
    }
}
