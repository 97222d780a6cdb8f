//! TLS for the clients (feature `tls`): rustls with the ring provider. The server's
//! certificate is checked against the CA certificates given (a PEM file or bytes); there is
//! no fallback to a system trust store, so a client trusts exactly what it was told to.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::error::ClientError;

/// How long either client lets a TLS handshake take: a server that does not speak TLS would
/// otherwise leave it waiting forever.
pub(crate) const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How a client verifies the server: the CA certificates it trusts and the name the server's
/// certificate must carry.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("ClientTls").field("server_name", &self.server_name).finish()
    }
}

impl ClientTls {
    /// Trusts the CA certificate(s) in the PEM file at `ca_path`; the server's certificate must
    /// be valid for `server_name` (a DNS name or an IP address).
    ///
    /// # Errors
    /// [`ClientError::Tls`] for an unreadable file, no certificate in it, or an invalid name.
    pub fn from_ca_file(ca_path: &Path, server_name: &str) -> Result<ClientTls, ClientError> {
        let certificates = CertificateDer::pem_file_iter(ca_path)
            .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
            .map_err(|error| ClientError::Tls(format!("{}: {error}", ca_path.display())))?;
        ClientTls::from_certificates(certificates, server_name)
    }

    /// Like [`ClientTls::from_ca_file`], from PEM text.
    ///
    /// # Errors
    /// [`ClientError::Tls`] for no certificate in `ca_pem` or an invalid name.
    pub fn from_ca_pem(ca_pem: &[u8], server_name: &str) -> Result<ClientTls, ClientError> {
        let certificates = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| ClientError::Tls(error.to_string()))?;
        ClientTls::from_certificates(certificates, server_name)
    }

    fn from_certificates(
        certificates: Vec<CertificateDer<'static>>,
        server_name: &str,
    ) -> Result<ClientTls, ClientError> {
        if certificates.is_empty() {
            return Err(ClientError::Tls("no CA certificate given".to_owned()));
        }
        let mut roots = rustls::RootCertStore::empty();
        for certificate in certificates {
            roots.add(certificate).map_err(|error| ClientError::Tls(error.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| ClientError::Tls(error.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|error| ClientError::Tls(format!("server name {server_name:?}: {error}")))?;
        Ok(ClientTls { config: Arc::new(config), server_name })
    }

    /// The TLS handshake over `stream` (a tokio TCP connection), verifying the server as this
    /// says; a handshake that takes longer than 10 s fails.
    ///
    /// # Errors
    /// [`ClientError::Tls`] for a failed or timed-out handshake (e.g. an untrusted certificate).
    pub async fn handshake(
        &self,
        stream: tokio::net::TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ClientError> {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        // A server that does not speak TLS would leave the handshake waiting forever.
        let handshake = connector.connect(self.server_name.clone(), stream);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| ClientError::Tls("the TLS handshake timed out".to_owned()))?
            .map_err(|error| ClientError::Tls(error.to_string()))
    }

    pub(crate) fn config(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
    }

    pub(crate) fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }
}
