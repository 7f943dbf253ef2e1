//! TLS for `wss://` dispatchers: rustls (ring) with the public roots
//! (Mozilla's, from `webpki-roots`) plus, optionally, the certificates of a
//! private PEM file, as the SDK does for phones.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::Error;

/// The client configuration: public roots, and those in `extra_pem` when given.
pub fn client_config(extra_pem: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_pem {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| Error::Usage(format!("tls_ca_file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(Error::Usage(format!("tls_ca_file {}: no certificate in it", path.display())));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| Error::Usage(format!("tls_ca_file {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_pem_is_a_clear_error() {
        assert!(client_config(None).is_ok());
        let dir = std::env::temp_dir().join(format!("tolk-node-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").ok();
        let err = client_config(Some(&empty)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("no certificate"), "{err}");
        let err = client_config(Some(&dir.join("missing.pem"))).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
