//! The certificate is chosen at each handshake from the current config, so a reload
//! with a renewed certificate applies without a restart.

use crate::state::State;
use async_trait::async_trait;
use pingora::listeners::{TlsAccept, TlsAcceptCallbacks};
use pingora::tls::ext;
use pingora::tls::ssl::SslRef;
use std::net::SocketAddr;
use std::sync::Arc;

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
