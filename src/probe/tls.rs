//! The two TLS client configurations the prober uses, built once at start-up.
//!
//! Kubelet serving certificates are either signed by a CA the operator can hand to pulsecheck
//! (`serverTLSBootstrap`, the `kubernetes.io/kubelet-serving` signer) or self-signed per node
//! (the kubelet's default). The first allows a verified connection that may carry a bearer
//! token; the second only allows a connection that proves nothing about the peer, which may
//! carry a token only when the operator explicitly asked for it (`--kubelet-insecure-tls`).
//! This module never decides *whether* a token is sent; it only builds the configurations, and
//! the crypto provider (ring) is always passed explicitly so that no process-wide default is
//! needed.

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

use super::Error;

/// ALPN for the HTTP/1.1 healthz request (kubelets speak h2 and http/1.1).
const HTTP11: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A configuration that verifies the kubelet's certificate against the CA bundle at `ca`
/// (the value of `--kubelet-certificate-authority`).
pub(super) fn verified(ca: &Path) -> Result<ClientConfig, Error> {
    let pem = std::fs::read(ca).map_err(|source| Error::ReadCertificateAuthority { path: ca.display().to_string(), source })?;
    let mut roots = RootCertStore::empty();
    let mut rejected = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        match cert {
            Ok(cert) => {
                if let Err(e) = roots.add(cert) {
                    rejected.push(e.to_string());
                }
            }
            Err(e) => rejected.push(e.to_string()),
        }
    }
    if roots.is_empty() {
        return Err(Error::NoCertificates { path: ca.display().to_string(), rejected: rejected.join("; ") });
    }
    let mut config = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![HTTP11.to_vec()];
    Ok(config)
}

/// A configuration that accepts any certificate. Handshake signatures are still checked
/// (the peer must hold the key of the certificate it shows), but nothing ties that
/// certificate to the node.
pub(super) fn accept_any(alpn_http11: bool) -> Result<ClientConfig, Error> {
    let provider = provider();
    let verifier = AcceptAnyCertificate { algorithms: provider.signature_verification_algorithms };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    if alpn_http11 {
        config.alpn_protocols = vec![HTTP11.to_vec()];
    }
    Ok(config)
}

/// The verifier behind `--kubelet-insecure-tls` and `--probe=tcp`.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
