//! STARTTLS certificates: load PEM files, or generate a self-signed one for
//! development, and build the rustls server configuration.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the STARTTLS certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// Do not offer STARTTLS.
    Disabled,
    /// A certificate generated at start-up for the configured host name.
    /// For development only: senders cannot verify it.
    SelfSigned,
    /// A PEM certificate chain and its PEM private key.
    PemFiles { cert: PathBuf, key: PathBuf },
    /// PEM text already in memory (e.g. from a secret store, or a test).
    Pem { cert: String, key: String },
}

/// Why TLS could not be set up. Only at start-up, never per connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate or key {path}: {source}; check the path and permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no PEM certificate found in {0}")]
    NoCertificate(String),
    #[error("invalid PEM in {what}: {detail}")]
    Pem { what: String, detail: String },
    #[error("TLS certificate and key do not work together: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A freshly generated self-signed certificate for `hostname`, as
/// `(certificate PEM, private key PEM)`.
pub fn generate_self_signed(hostname: &str) -> Result<(String, String), TlsError> {
    let certified = rcgen::generate_simple_self_signed(vec![hostname.to_string()])?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

/// The rustls configuration for `source`, or `None` when TLS is disabled.
pub fn server_config(
    source: &TlsSource,
    hostname: &str,
) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (cert_pem, key_pem, origin) = match source {
        TlsSource::Disabled => return Ok(None),
        TlsSource::SelfSigned => {
            let (cert, key) = generate_self_signed(hostname)?;
            (cert, key, "generated certificate".to_string())
        }
        TlsSource::Pem { cert, key } => (cert.clone(), key.clone(), "configured PEM".to_string()),
        TlsSource::PemFiles { cert, key } => {
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path).map_err(|source| TlsError::Read {
                    path: path.clone(),
                    source,
                })
            };
            (read(cert)?, read(key)?, cert.display().to_string())
        }
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem {
            what: origin.clone(),
            detail: err.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(origin));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|err| TlsError::Pem {
        what: format!("private key for {origin}"),
        detail: err.to_string(),
    })?;
    // An explicit provider: `ServerConfig::builder()` panics when the process
    // has more than one rustls provider compiled in and none installed.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Some(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_builds() {
        let config = server_config(&TlsSource::SelfSigned, "mx.test").expect("config");
        assert!(config.is_some());
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        let source = TlsSource::Pem {
            cert: "nope".into(),
            key: "nope".into(),
        };
        assert!(server_config(&source, "mx.test").is_err());
    }
}
