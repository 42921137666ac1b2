//! Public-key pinning for upstream TLS.
//!
//! A pin is `sha256/<base64 SHA-256 of a certificate's DER SubjectPublicKeyInfo>`. The
//! handshake hook hashes the keys of the leaf and of every certificate in the
//! *verified* chain (never the list the server sent); `connected_to_upstream` then
//! accepts the connection only if one configured pin is among them, before any request
//! byte is written, for new and reused connections alike, and fails closed when the
//! hashes are missing. Pins add to normal chain and host-name verification.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use pingora::protocols::tls::HandshakeCompleteHook;
use pingora::tls::ssl::SslRef;
use pingora::tls::x509::{X509Ref, X509};
use sha2::{Digest, Sha256};
use std::any::Any;
use std::sync::{Arc, LazyLock};

/// A SHA-256 hash of a DER SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpkiPin(pub [u8; 32]);

impl SpkiPin {
    /// Parse `sha256/<base64>`.
    pub fn parse(s: &str) -> Result<SpkiPin, String> {
        let b64 = s.strip_prefix("sha256/").ok_or_else(|| {
            format!("\"{s}\" is not a pin (expected sha256/<base64 of 32 bytes>)")
        })?;
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| format!("\"{s}\": the pin is not valid base64"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("\"{s}\": a sha256 pin is 32 bytes"))?;
        Ok(SpkiPin(arr))
    }

    /// The pin of a certificate's public key.
    pub fn of_cert(cert: &X509Ref) -> Result<SpkiPin, String> {
        let der = cert
            .public_key()
            .and_then(|k| k.public_key_to_der())
            .map_err(|e| format!("cannot read the certificate's public key: {e}"))?;
        Ok(SpkiPin(Sha256::digest(&der).into()))
    }
}

impl std::fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256/{}", STANDARD.encode(self.0))
    }
}

impl std::fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// What a TLS handshake presented: the key hashes (the leaf's first, then the verified
/// chain's) and when the leaf certificate expires (unix seconds).
#[derive(Debug, Clone)]
pub struct PresentedKeys {
    pub keys: Vec<SpkiPin>,
    pub leaf_not_after: Option<i64>,
}

/// A certificate's `notAfter` in unix seconds.
pub fn not_after_unix(cert: &X509Ref) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(cert.not_after()).ok()?;
    Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// Whether a negotiated protocol version (OpenSSL's name for it) is TLS 1.2 or later.
pub fn tls_version_ok(version: &str) -> bool {
    matches!(version, "TLSv1.2" | "TLSv1.3")
}

fn presented(ssl: &SslRef) -> PresentedKeys {
    let mut out = Vec::new();
    let mut leaf_not_after = None;
    if let Some(leaf) = ssl.peer_certificate() {
        if let Ok(p) = SpkiPin::of_cert(&leaf) {
            out.push(p);
        }
        leaf_not_after = not_after_unix(&leaf);
    }
    if let Some(chain) = ssl.verified_chain() {
        for cert in chain {
            if let Ok(p) = SpkiPin::of_cert(cert) {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    PresentedKeys {
        keys: out,
        leaf_not_after,
    }
}

/// The handshake hook: computes [`PresentedKeys`] once per new connection; Pingora
/// keeps it in the connection's `SslDigest`, so reused connections still carry it.
pub static HANDSHAKE_HOOK: LazyLock<HandshakeCompleteHook> = LazyLock::new(|| {
    Arc::new(|ssl: &SslRef| Some(Arc::new(presented(ssl)) as Arc<dyn Any + Send + Sync>))
});

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinError {
    /// The connection carries no key hashes (fail closed).
    Missing,
    /// None of the presented keys is pinned.
    Mismatch(Vec<SpkiPin>),
}

/// Accept when `pins` is empty, or when one pin is among the presented keys.
pub fn check(pins: &[SpkiPin], presented: Option<&PresentedKeys>) -> Result<(), PinError> {
    if pins.is_empty() {
        return Ok(());
    }
    let Some(p) = presented else {
        return Err(PinError::Missing);
    };
    if p.keys.iter().any(|k| pins.contains(k)) {
        Ok(())
    } else {
        Err(PinError::Mismatch(p.keys.clone()))
    }
}

/// Load every certificate of a PEM file.
pub fn load_pem_chain(path: &std::path::Path) -> Result<Vec<X509>, String> {
    let pem = crate::config::files::read_file_bounded(
        path,
        crate::config::files::MAX_REFERENCED_FILE_BYTES,
    )
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("file not found: {}", path.display()),
        k => format!("cannot read {}: {k}", path.display()),
    })?;
    let certs = X509::stack_from_pem(&pem)
        .map_err(|_| format!("{} is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// A readable name for a certificate (its subject CN, else the whole subject).
pub fn subject(cert: &X509Ref) -> String {
    let name = cert.subject_name();
    let parts: Vec<String> = name
        .entries()
        .filter_map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            e.data().to_string().ok().map(|v| format!("{key}={v}"))
        })
        .collect();
    parts.join(", ")
}

/// `keygate pin` output lines for a chain, leaf first.
pub fn describe_chain(certs: &[X509]) -> Vec<String> {
    certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let label = if i == 0 {
                "leaf".to_string()
            } else {
                format!("chain[{i}]")
            };
            match SpkiPin::of_cert(c) {
                Ok(p) => format!("{label}: {p}  ({})", subject(c)),
                Err(e) => format!("{label}: {e}"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_and_print() {
        let p = SpkiPin([7u8; 32]);
        assert_eq!(SpkiPin::parse(&p.to_string()).unwrap(), p);
        assert!(SpkiPin::parse("sha1/AAAA").is_err());
        assert!(SpkiPin::parse("sha256/AAAA").is_err());
        assert!(SpkiPin::parse("sha256/!!!").is_err());
    }

    #[test]
    fn check_fails_closed() {
        let a = SpkiPin([1; 32]);
        let b = SpkiPin([2; 32]);
        assert_eq!(check(&[], None), Ok(()));
        assert_eq!(check(&[a], None), Err(PinError::Missing));
        assert_eq!(
            check(&[a], Some(&keys(vec![b]))),
            Err(PinError::Mismatch(vec![b]))
        );
        assert_eq!(check(&[a, b], Some(&keys(vec![b]))), Ok(()));
    }

    fn keys(keys: Vec<SpkiPin>) -> PresentedKeys {
        PresentedKeys {
            keys,
            leaf_not_after: None,
        }
    }

    #[test]
    fn only_tls_1_2_and_later_are_accepted() {
        for v in ["TLSv1.2", "TLSv1.3"] {
            assert!(tls_version_ok(v));
        }
        for v in ["TLSv1", "TLSv1.1", "SSLv3", ""] {
            assert!(!tls_version_ok(v), "{v}");
        }
    }
}
