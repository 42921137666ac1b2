//! Client-facing TLS: a listener's certificate and key ([`CertKey`]), and the
//! handshake callback that picks it from the current config ([`reload`]).

pub mod reload;

use pingora::tls::pkey::{PKey, Private};
use pingora::tls::x509::X509;

/// A loaded certificate chain and its key. `Debug` never shows the key.
pub struct CertKey {
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CertKey({} certificates, key [REDACTED])",
            self.chain.len()
        )
    }
}

impl CertKey {
    /// Load and check a PEM chain and key (they must match).
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<CertKey, (bool, String)> {
        let chain = crate::upstream::pinning::load_pem_chain(cert).map_err(|e| (true, e))?;
        let pem = zeroize::Zeroizing::new(
            crate::config::files::read_file_bounded(
                key,
                crate::config::files::MAX_REFERENCED_FILE_BYTES,
            )
            .map_err(|e| {
                (
                    false,
                    format!("cannot read {}: {}", key.display(), e.kind()),
                )
            })?,
        );
        let key_parsed = PKey::private_key_from_pem(&pem)
            .map_err(|_| (false, format!("{} is not a PEM private key", key.display())))?;
        let matches = chain[0]
            .public_key()
            .map(|p| p.public_eq(&key_parsed))
            .unwrap_or(false);
        if !matches {
            return Err((
                false,
                format!("{} does not match the certificate", key.display()),
            ));
        }
        Ok(CertKey {
            chain,
            key: key_parsed,
        })
    }
}
