//! Client-facing TLS: the certificate is chosen at each handshake from the current
//! config, so a reload with a renewed certificate applies without a restart.

use crate::state::State;
use async_trait::async_trait;
use pingora::listeners::{TlsAccept, TlsAcceptCallbacks};
use pingora::tls::ext;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::SslRef;
use pingora::tls::x509::X509;
use std::net::SocketAddr;
use std::sync::Arc;

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
            crate::config::read_file_bounded(key, crate::config::MAX_REFERENCED_FILE_BYTES)
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

/// Serves the certificate configured for one listener address.
pub struct ReloadableCert {
    pub addr: SocketAddr,
    pub state: Arc<State>,
}

#[async_trait]
impl TlsAccept for ReloadableCert {
    async fn certificate_callback(&self, ssl: &mut SslRef) {
        let rt = self.state.runtime.load();
        let Some(ck) = rt
            .process
            .listeners
            .iter()
            .find(|l| l.addr == self.addr)
            .and_then(|l| l.tls.as_ref())
        else {
            log::error!(
                "listener {}: no certificate in the running config",
                self.addr
            );
            return;
        };
        let ok = ext::ssl_use_certificate(ssl, &ck.chain[0]).is_ok()
            && ext::ssl_use_private_key(ssl, &ck.key).is_ok()
            && ck.chain[1..]
                .iter()
                .all(|c| ext::ssl_add_chain_cert(ssl, c).is_ok());
        if !ok {
            log::error!("listener {}: cannot install the certificate", self.addr);
        }
    }
}

impl ReloadableCert {
    pub fn callbacks(addr: SocketAddr, state: Arc<State>) -> TlsAcceptCallbacks {
        Box::new(ReloadableCert { addr, state })
    }
}
