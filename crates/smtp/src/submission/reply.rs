//! Replies specific to submission (AUTH, RFC 4954, and the gate's outcomes);
//! the ones shared with the inbound side live in `crate::reply`.

use std::borrow::Cow;

use super::handler::{SubmitOutcome, SubmitRefusal};
use crate::reply::Reply;

const fn r(code: u16, a: u8, b: u8, c: u8, text: &'static str) -> Reply {
    Reply {
        code,
        status: Some((a, b, c)),
        text: Cow::Borrowed(text),
    }
}

pub const AUTH_OK: Reply = r(235, 2, 7, 0, "Authentication successful");
pub const AUTH_REQUIRED: Reply = r(530, 5, 7, 0, "Authentication required");
pub const ENCRYPTION_REQUIRED: Reply = r(
    538,
    5,
    7,
    11,
    "Encryption required for requested authentication mechanism",
);
pub const AUTH_INVALID: Reply = r(535, 5, 7, 8, "Authentication credentials invalid");
pub const AUTH_TEMPORARY: Reply = r(454, 4, 7, 0, "Temporary authentication failure");
pub const AUTH_CANCELLED: Reply = r(501, 5, 0, 0, "Authentication cancelled");
pub const AUTH_BAD_ENCODING: Reply = r(501, 5, 5, 2, "Invalid base64 or SASL response");
pub const AUTH_UNKNOWN_MECHANISM: Reply = r(504, 5, 5, 4, "Unrecognized authentication type");
pub const ALREADY_AUTHENTICATED: Reply = r(503, 5, 5, 1, "Already authenticated");
pub const TOO_MANY_AUTH_FAILURES: Reply = r(
    421,
    4,
    7,
    0,
    "Too many authentication failures, closing connection",
);
pub const NO_VALID_RCPT: Reply = r(554, 5, 5, 1, "No valid recipients");

/// `334` with a base64 challenge (no enhanced code: RFC 4954 4).
pub fn challenge(base64: &'static str) -> Reply {
    Reply {
        code: 334,
        status: None,
        text: Cow::Borrowed(base64),
    }
}

/// The reply for a handler's refusal, kept well-formed whatever it says.
pub fn refusal(refusal: &SubmitRefusal) -> Reply {
    let code = refusal.code;
    if !(400..=599).contains(&code) {
        tracing::warn!(code, "submission handler refused with a non-error code");
        return r(451, 4, 3, 0, "Temporary failure, try again later");
    }
    // RFC 3463 2: the class must agree with the first digit of the code.
    let class = (code / 100) as u8;
    let (_, subject, detail) = refusal.enhanced;
    let status = match (u8::try_from(subject), u8::try_from(detail)) {
        (Ok(subject), Ok(detail)) => (class, subject, detail),
        _ => (class, 0, 0),
    };
    Reply::dynamic(code, status, refusal.text.clone())
}

/// The reply at the end of DATA.
pub fn outcome(outcome: &SubmitOutcome) -> Reply {
    match outcome {
        SubmitOutcome::Queued { id } => {
            Reply::dynamic(250, (2, 0, 0), format!("Ok: queued as {id}"))
        }
        SubmitOutcome::Held { send_id } => Reply::dynamic(
            250,
            (2, 0, 0),
            format!("Held for confirmation: send {send_id} waits for a human approver"),
        ),
        SubmitOutcome::Refused(refused) => refusal(refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_stay_well_formed() {
        let weird = SubmitRefusal::new(250, (2, 0, 0), "fine?");
        assert_eq!(
            refusal(&weird).to_line(),
            "451 4.3.0 Temporary failure, try again later\r\n"
        );
        let mismatched = SubmitRefusal::new(452, (5, 5, 3), "Too many\r\n250 ok");
        assert_eq!(
            refusal(&mismatched).to_line(),
            "452 4.5.3 Too many  250 ok\r\n"
        );
        let huge = SubmitRefusal::new(550, (5, 700, 1), "x");
        assert_eq!(refusal(&huge).to_line(), "550 5.0.0 x\r\n");
        assert_eq!(
            refusal(&SubmitRefusal::sender_not_owned()).to_line(),
            "553 5.7.1 Sender address rejected: not owned by the authenticated user\r\n"
        );
    }

    #[test]
    fn outcomes() {
        let held = outcome(&SubmitOutcome::Held {
            send_id: "snd_1".into(),
        });
        assert_eq!(
            held.to_line(),
            "250 2.0.0 Held for confirmation: send snd_1 waits for a human approver\r\n"
        );
        let queued = outcome(&SubmitOutcome::Queued { id: "q1".into() });
        assert_eq!(queued.to_line(), "250 2.0.0 Ok: queued as q1\r\n");
    }
}
