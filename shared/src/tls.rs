//! TLS for database connections, with libpq's meanings of `sslmode`: how much of the server's
//! certificate is checked (nothing, the chain, or the chain and the host name) against which roots
//! (a PEM file of CA certificates, or the web roots for `sslrootcert=system`).
//!
//! One rustls `ClientConfig` per distinct setting, built once and shared by every connection that
//! uses it: a collector holds hundreds of connections and sockets, and each TLS session keeps a
//! reference to its configuration rather than a copy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How much of the server's certificate is verified.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Verification {
    /// Encryption only (`prefer`, `allow`, and `require` without a root certificate). The
    /// handshake signature is still checked, so SCRAM channel binding keeps its value.
    None,
    /// The chain up to a root in the file; the host name is not checked (`verify-ca`, and
    /// `require` with a root certificate).
    Chain(PathBuf),
    /// The chain and the host name (`verify-full`).
    Full(PathBuf),
    /// The chain up to the web roots, and the host name (`verify-full` with
    /// `sslrootcert=system`).
    FullSystem,
}

/// The connectors built so far: a handful at most (one per distinct setting in the process).
static BUILT: Mutex<Vec<(Verification, MakeRustlsConnect)>> = Mutex::new(Vec::new());

/// The connector for `verification`, built on first use and shared afterwards. A root
/// certificate file is read when its configuration is first built; the error says why it cannot
/// be used.
pub(crate) fn connector(verification: &Verification) -> Result<MakeRustlsConnect, String> {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, connector)) = built.iter().find(|(v, _)| v == verification) {
        return Ok(connector.clone());
    }
    let connector = MakeRustlsConnect::new(client_config(verification)?);
    built.push((verification.clone(), connector.clone()));
    Ok(connector)
}

fn client_config(verification: &Verification) -> Result<ClientConfig, String> {
    crate::init_tls();
    let provider = CryptoProvider::get_default()
        .expect("init_tls installs a crypto provider")
        .clone();
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::None => Arc::new(NoVerification(provider)),
        Verification::Chain(path) => Arc::new(ChainOnly(webpki_verifier(path, provider)?)),
        Verification::Full(path) => webpki_verifier(path, provider)?,
        // The same roots as the WebSockets' configuration: one copy of them in memory.
        Verification::FullSystem => return Ok((*crate::tls_client_config()).clone()),
    };
    Ok(ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn webpki_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let roots = load_roots(path)?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The CA certificates in a PEM file. At least one must be usable.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown} is not a PEM file of certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{shown} holds no certificate (expected PEM blocks \"BEGIN CERTIFICATE\")"
        ));
    }
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(format!(
            "{shown}: none of its {ignored} certificates can be used as a root"
        ));
    }
    Ok(roots)
}

/// Accepts any certificate, as libpq does without verification, but still checks that the server
/// holds the key of the certificate it presented.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The standard verifier with the host-name check left out (libpq's `verify-ca`). webpki checks
/// the chain before the name, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A short explanation for a certificate the verifier refused, found in a connection error's
/// sources, for the one-line message operators see.
pub(crate) fn certificate_hint(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(c)) = tls {
            return match c {
                CertificateError::UnknownIssuer => {
                    Some("the server's certificate is not signed by a CA in sslrootcert")
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => Some(
                    "connect by a name the certificate holds, or use sslmode=verify-ca to check the CA only",
                ),
                _ => None,
            };
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_files_are_checked_with_a_reason() {
        let dir = std::env::temp_dir().join(format!("kick-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        assert!(load_roots(&missing).unwrap_err().contains("cannot read"));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(load_roots(&empty).unwrap_err().contains("no certificate"));
        let Err(e) = connector(&Verification::Full(empty)) else {
            panic!("a file without certificates must not give a connector");
        };
        assert!(e.contains("no certificate"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn one_configuration_per_setting() {
        connector(&Verification::None).unwrap();
        connector(&Verification::None).unwrap();
        connector(&Verification::FullSystem).unwrap();
        let built = BUILT.lock().unwrap();
        let n_none = built
            .iter()
            .filter(|(v, _)| *v == Verification::None)
            .count();
        assert_eq!(n_none, 1, "built once, then shared");
    }
}
