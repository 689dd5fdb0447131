//! DKIM keys for a domain: one Ed25519 (RFC 8463) and one RSA-2048 selector,
//! so receivers that do not know Ed25519 still verify. Private keys are
//! stored PKCS#8 PEM; the public halves become the DNS records to publish.

use crate::error::{Error, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

pub(crate) struct GeneratedKey {
    pub selector: String,
    pub algorithm: &'static str,
    pub private_key_pem: String,
    pub public_key_b64: String,
}

pub(crate) fn generate(selector_stem: &str) -> Result<Vec<GeneratedKey>> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    let mut rng = rand_core06::OsRng;
    let ed = ed25519_dalek::SigningKey::generate(&mut rng);
    let ed_pem = ed
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| Error::Internal(format!("ed25519 key encoding: {e}")))?;
    let ed_public = B64.encode(ed.verifying_key().as_bytes());

    let rsa_key = rsa::RsaPrivateKey::new(&mut rng, 2048)
        .map_err(|e| Error::Internal(format!("rsa key generation: {e}")))?;
    let rsa_pem = rsa_key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| Error::Internal(format!("rsa key encoding: {e}")))?;
    let rsa_public = rsa_key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| Error::Internal(format!("rsa public key encoding: {e}")))?;

    Ok(vec![
        GeneratedKey {
            selector: format!("{selector_stem}e"),
            algorithm: "ed25519",
            private_key_pem: ed_pem.to_string(),
            public_key_b64: ed_public,
        },
        GeneratedKey {
            selector: format!("{selector_stem}r"),
            algorithm: "rsa",
            private_key_pem: rsa_pem.to_string(),
            public_key_b64: B64.encode(rsa_public.as_bytes()),
        },
    ])
}

/// The TXT value for a selector.
pub fn dkim_txt(algorithm: &str, public_key_b64: &str) -> String {
    let k = if algorithm == "ed25519" {
        "ed25519"
    } else {
        "rsa"
    };
    format!("v=DKIM1; k={k}; p={public_key_b64}")
}
