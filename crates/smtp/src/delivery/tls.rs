//! TLS client configurations for STARTTLS.
//!
//! Built here rather than with `mail_send::smtp::tls::build_tls_connector`:
//! that one calls `ClientConfig::builder()`, which panics when more than one
//! rustls crypto provider is compiled into the process and none is installed
//! as the default. We name the provider (aws-lc-rs) explicitly.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_platform_verifier::BuilderVerifierExt;
use tokio_rustls::TlsConnector;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A connector that verifies certificates against the system's roots
/// (`verify`), or one that accepts any certificate but still checks the
/// handshake signatures. Built once per process.
pub(crate) fn connector(verify: bool) -> Result<TlsConnector, String> {
    static VERIFYING: OnceLock<Result<TlsConnector, String>> = OnceLock::new();
    static ANY_CERT: OnceLock<Result<TlsConnector, String>> = OnceLock::new();
    let cell = if verify { &VERIFYING } else { &ANY_CERT };
    cell.get_or_init(|| build(verify)).clone()
}

fn build(verify: bool) -> Result<TlsConnector, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?;
    let config = if verify {
        builder
            .with_platform_verifier()
            .map_err(|err| format!("system certificate store: {err}"))?
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
            .with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Accepts whatever certificate the server shows (opportunistic TLS, test
/// relays); the handshake signatures are still verified, so the session is
/// encrypted to whoever holds the shown certificate's key.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
