//! TLS for the server (`--tls-cert`, `--tls-key`): rustls with the ring provider, TLS 1.2 and
//! 1.3, no client certificates. The configuration is built once and shared by every executor.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::EngineError;

/// Reads a PEM certificate chain and private key into a server configuration.
///
/// # Errors
/// [`EngineError::Config`] naming the file that cannot be read or does not match.
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<rustls::ServerConfig>, EngineError> {
    let fail = |path: &Path, reason: String| EngineError::Config(format!("{}: {reason}", path.display()));
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| fail(cert_path, error.to_string()))?;
    if chain.is_empty() {
        return Err(fail(cert_path, "no certificate in the file".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|error| fail(key_path, error.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| EngineError::Config(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| fail(key_path, format!("does not match the certificate: {error}")))?;
    Ok(Arc::new(config))
}
