//! Certificates, keys and tokens for the lab's local control plane and fake kubelets.
//!
//! A real kube-apiserver only serves TLS, authenticates clients by certificate or token, and
//! signs ServiceAccount tokens with a key it is given. The lab has no `kubeadm` and no
//! `openssl` to lean on, so this module mints everything in-process with rcgen: a throw-away
//! certificate authority, serving certificates for loopback addresses, client certificates
//! whose Organization fields become Kubernetes groups (`system:masters`, `system:nodes`), the
//! ServiceAccount signing key and random bearer tokens.
//!
//! Everything here is for a lab on 127.0.0.1 that lives for minutes: keys are ECDSA P-256,
//! certificates never expire in practice and nothing is stored. This module must never be used
//! to mint credentials for a real cluster.

use std::net::IpAddr;

use rand::RngExt;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber};

/// What can go wrong while minting lab credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen refused to generate a key or sign a certificate.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// The key or certificate being generated, e.g. "serving certificate for 127.0.0.1".
        what: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// A DNS name is not valid in a subjectAltName.
    #[error("invalid DNS name {name:?} for a subjectAltName: {source}")]
    InvalidDnsName {
        /// The offending name.
        name: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// rcgen keeps one value per attribute type in a subject, and the lab can express at most
    /// two Organization (= Kubernetes group) values with it.
    #[error("a lab client certificate carries at most {MAX_ORGANIZATIONS} organizations (groups), got {0}")]
    TooManyOrganizations(usize),
}

/// Result of this module's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How many Organization values (Kubernetes groups) [`CertificateAuthority::issue_client`]
/// can put into one subject.
pub const MAX_ORGANIZATIONS: usize = 2;

/// The X.520 Organization attribute (2.5.4.10), spelled as a custom type so that a subject can
/// carry it a second time next to [`DnType::OrganizationName`].
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];

/// A self-signed certificate authority that signs the lab's serving and client certificates.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The signing key stays out of logs.
        f.debug_struct("CertificateAuthority").finish_non_exhaustive()
    }
}

/// A certificate signed by a [`CertificateAuthority`] and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl CertificateAuthority {
    /// Creates a new CA with a fresh key and a self-signed certificate named `common_name`.
    pub fn new(common_name: &str) -> Result<Self> {
        let what = || format!("certificate authority {common_name:?}");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = generate_key(&what)?;
        let cert = params.self_signed(&key).map_err(|source| Error::Generate { what: what(), source })?;
        Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA's certificate, PEM: what clients trust and what servers check client
    /// certificates against.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// Issues a TLS serving certificate for `common_name`, valid for every address in `ip_sans`
    /// and every name in `dns_sans` (e.g. `[127.0.0.1]` and `["localhost"]`).
    pub fn issue_server(&self, common_name: &str, ip_sans: &[IpAddr], dns_sans: &[&str]) -> Result<IssuedCert> {
        let mut params = self.leaf_params(common_name);
        params.subject_alt_names = ip_sans.iter().copied().map(SanType::IpAddress).collect();
        for name in dns_sans {
            let dns = (*name).to_owned().try_into().map_err(|source| Error::InvalidDnsName { name: (*name).to_owned(), source })?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, &|| format!("serving certificate for {common_name:?}"))
    }

    /// Issues a TLS client certificate. Kubernetes reads the subject's CommonName as the user
    /// name and each Organization as a group, so `issue_client("admin", &["system:masters"])`
    /// is a cluster administrator. At most [`MAX_ORGANIZATIONS`] organizations.
    pub fn issue_client(&self, common_name: &str, organizations: &[&str]) -> Result<IssuedCert> {
        if organizations.len() > MAX_ORGANIZATIONS {
            return Err(Error::TooManyOrganizations(organizations.len()));
        }
        let mut params = self.leaf_params(common_name);
        let org_types = [DnType::OrganizationName, DnType::CustomDnType(ORGANIZATION_OID.to_vec())];
        for (ty, org) in org_types.into_iter().zip(organizations) {
            params.distinguished_name.push(ty, *org);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, &|| format!("client certificate for {common_name:?}"))
    }

    fn leaf_params(&self, common_name: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params
    }

    fn sign(&self, params: CertificateParams, what: &dyn Fn() -> String) -> Result<IssuedCert> {
        let key = generate_key(what)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(|source| Error::Generate { what: what(), source })?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A fresh ECDSA P-256 key as one PEM file that kube-apiserver accepts for both
/// `--service-account-signing-key-file` and `--service-account-key-file`: a PKCS#8
/// `PRIVATE KEY` block (it signs tokens with it) followed by its `PUBLIC KEY` block.
///
/// The public block is needed because kube-apiserver reads `--service-account-key-file` with
/// `keyutil.ParsePublicKeysPEM`, which derives a public key from an RSA private key or a SEC1
/// `EC PRIVATE KEY`, but not from a PKCS#8 EC key (the only form rcgen writes); it skips the
/// blocks it does not understand, and the signing-key reader takes the first private key.
pub fn service_account_key_pem() -> Result<String> {
    let key = generate_key(&|| "service-account signing key".to_owned())?;
    Ok(format!("{}{}", key.serialize_pem(), key.public_key_pem()))
}

/// A TLS client configuration that trusts only the certificates in `ca_pem` (for reading a
/// kubelet's endpoints as a verifying caller would).
pub fn client_config_trusting(ca_pem: &str) -> std::result::Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A random bearer token: 43 URL-safe characters (about 256 bits of entropy).
pub fn random_token() -> String {
    rand::rng().sample_iter(rand::distr::Alphanumeric).take(43).map(char::from).collect()
}

fn generate_key(what: &dyn Fn() -> String) -> Result<KeyPair> {
    KeyPair::generate().map_err(|source| Error::Generate { what: format!("key for {}", what()), source })
}

/// A positive 128-bit serial number: unique enough that no two lab certificates share one.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[0] &= 0x7f; // DER INTEGER: keep it positive.
    bytes[0] |= 0x01; // and free of a leading zero byte.
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        sync::Arc,
    };

    use rustls::{
        ClientConfig, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
        server::WebPkiClientVerifier,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap()
    }

    fn key(pem: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn roots(ca: &CertificateAuthority) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for cert in certs(&ca.cert_pem()) {
            roots.add(cert).unwrap();
        }
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Runs one TLS handshake over an in-memory pipe and exchanges a byte: the certificates
    /// are only right if a real TLS stack accepts them.
    async fn handshake(server: ServerConfig, client: ClientConfig, server_name: ServerName<'static>) -> std::result::Result<(), String> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let connector = TlsConnector::from(Arc::new(client));
        let server_side = async move {
            let mut tls = acceptor.accept(server_io).await.map_err(|e| format!("server: {e}"))?;
            let mut buf = [0u8; 1];
            tls.read_exact(&mut buf).await.map_err(|e| format!("server read: {e}"))?;
            tls.write_all(&buf).await.map_err(|e| format!("server write: {e}"))?;
            tls.flush().await.map_err(|e| format!("server flush: {e}"))?;
            Ok::<_, String>(())
        };
        let client_side = async move {
            let mut tls = connector.connect(server_name, client_io).await.map_err(|e| format!("client: {e}"))?;
            tls.write_all(b"x").await.map_err(|e| format!("client write: {e}"))?;
            tls.flush().await.map_err(|e| format!("client flush: {e}"))?;
            let mut buf = [0u8; 1];
            tls.read_exact(&mut buf).await.map_err(|e| format!("client read: {e}"))?;
            Ok::<_, String>(())
        };
        let (server_result, client_result) = tokio::join!(server_side, client_side);
        client_result.and(server_result)
    }

    fn server_config(cert: &IssuedCert, client_roots: Option<Arc<RootCertStore>>) -> ServerConfig {
        let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
        let builder = match client_roots {
            Some(roots) => builder.with_client_cert_verifier(WebPkiClientVerifier::builder_with_provider(roots, provider()).build().unwrap()),
            None => builder.with_no_client_auth(),
        };
        builder.with_single_cert(certs(&cert.cert_pem), key(&cert.key_pem)).unwrap()
    }

    fn client_builder(roots: Arc<RootCertStore>) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots)
    }

    #[tokio::test]
    async fn serving_cert_is_trusted_for_its_ip_and_dns_names() {
        let ca = CertificateAuthority::new("lab-ca").unwrap();
        let serving = ca.issue_server("kube-apiserver", &[LOOPBACK], &["localhost"]).unwrap();
        for name in [ServerName::IpAddress(LOOPBACK.into()), ServerName::try_from("localhost").unwrap()] {
            let client = client_builder(roots(&ca)).with_no_client_auth();
            handshake(server_config(&serving, None), client, name.clone()).await.unwrap_or_else(|e| panic!("handshake as {name:?} failed: {e}"));
        }
    }

    #[tokio::test]
    async fn serving_cert_is_rejected_for_a_name_it_does_not_carry() {
        let ca = CertificateAuthority::new("lab-ca").unwrap();
        let serving = ca.issue_server("kube-apiserver", &[LOOPBACK], &["localhost"]).unwrap();
        let client = client_builder(roots(&ca)).with_no_client_auth();
        let other = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)).into());
        assert!(handshake(server_config(&serving, None), client, other).await.is_err());
    }

    #[tokio::test]
    async fn serving_cert_of_another_ca_is_rejected() {
        let ca = CertificateAuthority::new("lab-ca").unwrap();
        let stranger = CertificateAuthority::new("other-ca").unwrap();
        let serving = stranger.issue_server("kube-apiserver", &[LOOPBACK], &[]).unwrap();
        let client = client_builder(roots(&ca)).with_no_client_auth();
        let name = ServerName::IpAddress(LOOPBACK.into());
        assert!(handshake(server_config(&serving, None), client, name).await.is_err());
    }

    #[tokio::test]
    async fn client_cert_is_accepted_by_a_server_that_trusts_the_ca() {
        let ca = CertificateAuthority::new("lab-ca").unwrap();
        let serving = ca.issue_server("kube-apiserver", &[LOOPBACK], &[]).unwrap();
        let admin = ca.issue_client("admin", &["system:masters"]).unwrap();
        let client = client_builder(roots(&ca)).with_client_auth_cert(certs(&admin.cert_pem), key(&admin.key_pem)).unwrap();
        let name = ServerName::IpAddress(LOOPBACK.into());
        handshake(server_config(&serving, Some(roots(&ca))), client, name).await.unwrap();
    }

    #[tokio::test]
    async fn client_cert_of_another_ca_is_rejected() {
        let ca = CertificateAuthority::new("lab-ca").unwrap();
        let stranger = CertificateAuthority::new("other-ca").unwrap();
        let serving = ca.issue_server("kube-apiserver", &[LOOPBACK], &[]).unwrap();
        let intruder = stranger.issue_client("admin", &["system:masters"]).unwrap();
        let client = client_builder(roots(&ca)).with_client_auth_cert(certs(&intruder.cert_pem), key(&intruder.key_pem)).unwrap();
        let name = ServerName::IpAddress(LOOPBACK.into());
        assert!(handshake(server_config(&serving, Some(roots(&ca))), client, name).await.is_err());
    }

    #[test]
    fn client_cert_subject_carries_user_and_groups() {
        let ca = CertificateAuthority::new("lab-ca").unwrap();
        let node = ca.issue_client("system:node:sim-0", &["system:nodes", "team-a"]).unwrap();
        let der = certs(&node.cert_pem).remove(0);
        let contains = |needle: &str| der.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(contains("system:node:sim-0"));
        assert!(contains("system:nodes"));
        assert!(contains("team-a"));
    }

    #[test]
    fn too_many_organizations_are_refused_not_dropped() {
        let ca = CertificateAuthority::new("lab-ca").unwrap();
        let err = ca.issue_client("u", &["a", "b", "c"]).unwrap_err();
        assert!(matches!(err, Error::TooManyOrganizations(3)), "{err}");
    }

    #[test]
    fn invalid_dns_san_is_named_in_the_error() {
        let ca = CertificateAuthority::new("lab-ca").unwrap();
        let err = ca.issue_server("s", &[], &["bäd-name.example"]).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("bäd-name.example"), "{err}");
    }

    #[test]
    fn service_account_key_holds_the_private_key_then_its_public_key() {
        let pem = service_account_key_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        assert!(matches!(key(&pem), PrivateKeyDer::Pkcs8(_)));
        let private = KeyPair::from_pem(&pem).unwrap();
        let public_block = pem.find("-----BEGIN PUBLIC KEY-----").expect("a PUBLIC KEY block");
        assert_eq!(&pem[public_block..], private.public_key_pem());
        assert_ne!(pem, service_account_key_pem().unwrap());
    }

    #[test]
    fn tokens_are_long_url_safe_and_distinct() {
        let a = random_token();
        let b = random_token();
        assert!(a.len() >= 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(a, b);
    }

    #[test]
    fn debug_output_never_shows_a_private_key() {
        let ca = CertificateAuthority::new("lab-ca").unwrap();
        let issued = ca.issue_client("u", &[]).unwrap();
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
