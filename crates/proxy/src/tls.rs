//! TLS material: the listener's certificate (from config, or a self-signed pair generated on
//! first start and kept beside the store) and the client configuration for upstreams.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use weir_config::{Config, Target, UpstreamTls};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

fn file_err(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Paths of the generated pair, beside the store.
pub fn generated_paths(config: &Config) -> (PathBuf, PathBuf) {
    let dir = config.state_dir();
    (dir.join("weir-tls-cert.pem"), dir.join("weir-tls-key.pem"))
}

/// The listener's TLS configuration.
pub fn server_config(config: &Config) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_path, key_path) = match &config.gateway.tls {
        Some((c, k)) => (c.clone(), k.clone()),
        None => {
            let (c, k) = generated_paths(config);
            if !c.exists() || !k.exists() {
                generate_self_signed(&c, &k, &generated_names(config))?;
            }
            (c, k)
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| file_err(&cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&cert_path, e))?;
    if certs.is_empty() {
        return Err(file_err(&cert_path, "no certificate in file"));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| file_err(&key_path, e))?;
    let cfg = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// The names a generated certificate carries: loopback, the listeners' own addresses when they
/// are specific, and `[gateway] public_host` — every name `weir connect` may verify it by.
fn generated_names(config: &Config) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let listeners = [config.gateway.postgres_listen, config.gateway.mysql_listen];
    let specific = listeners
        .into_iter()
        .flatten()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| ip.to_string());
    for name in specific.chain(config.gateway.public_host.clone()) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn generate_self_signed(cert: &Path, key: &Path, names: &[String]) -> Result<(), TlsError> {
    let pair = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    }
    write_private(key, pair.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert, pair.cert.pem()).map_err(|e| file_err(cert, e))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
    Ok(())
}

/// Writes a secret file readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| file_err(path, e))?;
    f.write_all(data).map_err(|e| file_err(path, e))?;
    f.sync_all().map_err(|e| file_err(path, e))
}

/// Client configuration for one target's upstream, or `None` for plain TCP.
pub fn upstream_config(target: &Target) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    match target.upstream_tls {
        UpstreamTls::Disable => Ok(None),
        UpstreamTls::Require => {
            let provider = rustls::crypto::CryptoProvider::get_default()
                .cloned()
                .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
            let cfg = ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth();
            Ok(Some(Arc::new(cfg)))
        }
        UpstreamTls::VerifyFull => {
            let Some(ca) = &target.upstream_ca else {
                return Err(TlsError::Generate("verify-full needs upstream_ca".into()));
            };
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca, e))? {
                roots
                    .add(cert.map_err(|e| file_err(ca, e))?)
                    .map_err(|e| file_err(ca, e))?;
            }
            let cfg = ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Some(Arc::new(cfg)))
        }
    }
}

/// `upstream_tls = "require"`: encrypt without authenticating the server, like libpq's
/// sslmode=require. Signatures are still checked so the handshake itself is sound.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_names_what_clients_verify_it_by() {
        let config = Config::parse(
            Path::new("/etc/weir/weir.toml"),
            "[gateway]\npostgres_listen = \"10.1.2.3:6432\"\nmysql_listen = \"0.0.0.0:3307\"\npublic_host = \"db-gw.corp.example\"\n",
        )
        .unwrap();
        assert_eq!(
            generated_names(&config),
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "10.1.2.3",
                "db-gw.corp.example"
            ]
        );
    }
}
