//! Sans-IO SASL for `AUTH PLAIN` (RFC 4616) and `AUTH LOGIN`: decodes the
//! client's base64 responses into a username and a password, and says which
//! challenge to send next. Knows nothing of sockets or of the gate.
//!
//! The password only ever lives in [`Credentials`], whose `Debug` output
//! hides it, so it cannot reach a log line by accident.

use std::fmt;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Accepts padded and unpadded base64 (some clients drop the padding).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The `AUTH LOGIN` prompts, `Username:` and `Password:` in base64.
pub(crate) const USERNAME_PROMPT: &str = "VXNlcm5hbWU6";
pub(crate) const PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

/// The mechanisms we offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mechanism {
    Plain,
    Login,
}

/// What the client authenticates with.
pub(crate) struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why an exchange ended without credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SaslError {
    /// The client answered `*` (RFC 4954 4): `501 5.0.0`.
    Cancelled,
    /// Not base64, not UTF-8, or not a PLAIN message: `501 5.5.2`.
    BadEncoding,
    /// PLAIN with an authorization identity other than the authentication
    /// identity: we do not let one user act as another. `535 5.7.8`,
    /// counted as a failed attempt.
    ForeignAuthzid,
}

/// The next step of an exchange.
#[derive(Debug)]
pub(crate) enum Step {
    /// Send `334 <challenge>` and feed the client's next line to
    /// [`Exchange::respond`].
    Challenge(&'static str),
    Done(Credentials),
    Failed(SaslError),
}

/// One AUTH exchange in progress.
#[derive(Debug)]
pub(crate) enum Exchange {
    Plain,
    LoginUsername,
    LoginPassword { username: String },
}

impl Exchange {
    /// Starts an exchange. `initial_response` is the AUTH command's optional
    /// argument as sent (`None` when absent; `=` is the empty response).
    pub(crate) fn start(mechanism: Mechanism, initial_response: Option<&str>) -> (Self, Step) {
        let (exchange, challenge) = match mechanism {
            Mechanism::Plain => (Exchange::Plain, ""),
            Mechanism::Login => (Exchange::LoginUsername, USERNAME_PROMPT),
        };
        match initial_response {
            Some(initial) => exchange.respond(initial.as_bytes()),
            None => (exchange, Step::Challenge(challenge)),
        }
    }

    /// Feeds one response line from the client (CRLF optional).
    pub(crate) fn respond(self, line: &[u8]) -> (Self, Step) {
        let decoded = match decode(line) {
            Ok(decoded) => decoded,
            Err(err) => return (self, Step::Failed(err)),
        };
        match self {
            Exchange::Plain => {
                let step = match plain(&decoded) {
                    Ok(credentials) => Step::Done(credentials),
                    Err(err) => Step::Failed(err),
                };
                (Exchange::Plain, step)
            }
            Exchange::LoginUsername => match utf8(decoded) {
                Ok(username) => (
                    Exchange::LoginPassword { username },
                    Step::Challenge(PASSWORD_PROMPT),
                ),
                Err(err) => (Exchange::LoginUsername, Step::Failed(err)),
            },
            Exchange::LoginPassword { username } => match utf8(decoded) {
                Ok(password) => (
                    Exchange::Plain,
                    Step::Done(Credentials { username, password }),
                ),
                Err(err) => (Exchange::Plain, Step::Failed(err)),
            },
        }
    }
}

/// One base64 response line; `*` cancels, `=` is the empty response.
fn decode(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_ascii();
    match line {
        b"*" => Err(SaslError::Cancelled),
        b"=" => Ok(Vec::new()),
        _ => BASE64.decode(line).map_err(|_| SaslError::BadEncoding),
    }
}

fn utf8(bytes: Vec<u8>) -> Result<String, SaslError> {
    String::from_utf8(bytes).map_err(|_| SaslError::BadEncoding)
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`.
fn plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::BadEncoding);
    };
    let username = utf8(authcid.to_vec())?;
    let password = utf8(password.to_vec())?;
    if username.is_empty() {
        return Err(SaslError::BadEncoding);
    }
    if !authzid.is_empty() && authzid != username.as_bytes() {
        return Err(SaslError::ForeignAuthzid);
    }
    Ok(Credentials { username, password })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn done(step: Step) -> Credentials {
        match step {
            Step::Done(c) => c,
            other => panic!("expected credentials, got {other:?}"),
        }
    }

    #[test]
    fn plain_with_and_without_initial_response() {
        let token = b64(b"\0agent@a.test\0s3cret");
        let (_, step) = Exchange::start(Mechanism::Plain, Some(&token));
        let c = done(step);
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("agent@a.test", "s3cret")
        );

        let (ex, step) = Exchange::start(Mechanism::Plain, None);
        assert!(matches!(step, Step::Challenge("")));
        let (_, step) = ex.respond(format!("{token}\r\n").as_bytes());
        assert_eq!(done(step).password, "s3cret");
    }

    #[test]
    fn plain_authzid_rules() {
        let same = b64(b"agent@a.test\0agent@a.test\0pw");
        assert_eq!(
            done(Exchange::start(Mechanism::Plain, Some(&same)).1).username,
            "agent@a.test"
        );
        let other = b64(b"boss@a.test\0agent@a.test\0pw");
        let (_, step) = Exchange::start(Mechanism::Plain, Some(&other));
        assert!(matches!(step, Step::Failed(SaslError::ForeignAuthzid)));
    }

    #[test]
    fn login_flow_with_and_without_initial_response() {
        let (ex, step) = Exchange::start(Mechanism::Login, None);
        assert!(matches!(step, Step::Challenge(USERNAME_PROMPT)));
        let (ex, step) = ex.respond(b64(b"agent@a.test").as_bytes());
        assert!(matches!(step, Step::Challenge(PASSWORD_PROMPT)));
        let (_, step) = ex.respond(b64(b"pw").as_bytes());
        assert_eq!(done(step).username, "agent@a.test");

        let user = b64(b"agent@a.test");
        let (ex, step) = Exchange::start(Mechanism::Login, Some(&user));
        assert!(matches!(step, Step::Challenge(PASSWORD_PROMPT)));
        let (_, step) = ex.respond(b64(b"pw").as_bytes());
        assert_eq!(done(step).password, "pw");
    }

    #[test]
    fn cancel_and_garbage() {
        let (ex, _) = Exchange::start(Mechanism::Login, None);
        assert!(matches!(
            ex.respond(b"*\r\n").1,
            Step::Failed(SaslError::Cancelled)
        ));
        let (ex, _) = Exchange::start(Mechanism::Plain, None);
        assert!(matches!(
            ex.respond(b"!!notbase64\r\n").1,
            Step::Failed(SaslError::BadEncoding)
        ));
        for bad in [
            &b"no-nuls"[..],
            b"\0only-one",
            b"a\0b\0c\0d",
            b"\0\0pw",
            b"\0\xff\0pw",
        ] {
            let (_, step) = Exchange::start(Mechanism::Plain, Some(&b64(bad)));
            assert!(
                matches!(step, Step::Failed(SaslError::BadEncoding)),
                "{bad:?}"
            );
        }
        let (_, step) = Exchange::start(Mechanism::Plain, Some("="));
        assert!(matches!(step, Step::Failed(SaslError::BadEncoding)));
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let token = b64(b"\0u@a.test\0pw");
        let (_, step) = Exchange::start(Mechanism::Plain, Some(token.trim_end_matches('=')));
        assert_eq!(done(step).password, "pw");
    }

    #[test]
    fn debug_hides_the_password() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
