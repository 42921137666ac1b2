//! Secret values in the config: `enc:v1:…` (AES-256-GCM under a master key),
//! `env:NAME`, `file:/path`, or a plain literal (only in `--demo`).
//!
//! Errors name what is wrong but never include secret material.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use std::collections::HashMap;
use zeroize::Zeroizing;

/// A 32-byte AES-256-GCM master key. `Debug` never shows the bytes.
pub struct MasterKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

impl Clone for MasterKey {
    fn clone(&self) -> Self {
        MasterKey(SecretBox::new(Box::new(*self.0.expose_secret())))
    }
}

impl MasterKey {
    /// Decode a base64 (standard alphabet) master key of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| "master key is not valid base64".to_string())?,
        );
        if bytes.len() != 32 {
            return Err(format!(
                "master key must be 32 bytes, got {} bytes",
                bytes.len()
            ));
        }
        let mut key = Box::new([0u8; 32]);
        key.copy_from_slice(&bytes);
        Ok(MasterKey(SecretBox::new(key)))
    }

    /// A fresh random key, base64-encoded (for `keygate secret keygen`).
    pub fn generate_base64() -> Zeroizing<String> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        Zeroizing::new(STANDARD.encode(key.as_ref()))
    }

    /// The key bytes (for deriving sub-keys such as the browser-token key).
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.0.expose_secret().into())
    }
}

/// A new random client credential: `prefix` (`kgs_` for an hmac secret, `kgk_` for a
/// bearer key) and 24 random bytes in base64url.
pub fn new_client_secret(prefix: &str) -> Zeroizing<String> {
    let mut raw = Zeroizing::new([0u8; 24]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut());
    Zeroizing::new(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw.as_ref())))
}

/// The associated data binding a ciphertext to its master key id and its place in the config.
fn aad(key_id: &str, name: &str) -> String {
    format!("keygate:v1:{key_id}:{name}")
}

/// Encrypt `plaintext` for the place `name` (e.g. `sites/demo/keys/demo.k1`).
pub fn encrypt(key_id: &str, key: &MasterKey, name: &str, plaintext: &[u8]) -> String {
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let aad = aad(key_id, name);
    // AES-GCM encryption only fails for inputs of more than 64 GiB.
    let ct = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: aad.as_bytes(),
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(12 + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    format!("enc:v1:{key_id}:{}", URL_SAFE_NO_PAD.encode(out))
}

/// Decrypt an `enc:v1:<key id>:<data>` value for the place `name`.
pub fn decrypt(
    value: &str,
    name: &str,
    master_keys: &HashMap<String, MasterKey>,
) -> Result<SecretString, String> {
    let rest = value
        .strip_prefix("enc:v1:")
        .ok_or_else(|| "not an enc:v1 value".to_string())?;
    let (key_id, data) = rest
        .split_once(':')
        .ok_or_else(|| "enc:v1 value has no master key id".to_string())?;
    let key = master_keys
        .get(key_id)
        .ok_or_else(|| format!("unknown master key \"{key_id}\""))?;
    let raw = URL_SAFE_NO_PAD
        .decode(data)
        .map_err(|_| "enc:v1 data is not base64url without padding".to_string())?;
    if raw.len() < 12 + 16 {
        return Err("enc:v1 data is too short".into());
    }
    let (nonce, ct) = raw.split_at(12);
    let aad = aad(key_id, name);
    let pt = Zeroizing::new(
        key.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                format!(
                    "cannot decrypt with master key \"{key_id}\" (wrong key, tampered value, or a value encrypted for another place than {name})"
                )
            })?,
    );
    let text = std::str::from_utf8(&pt).map_err(|_| "decrypted secret is not UTF-8".to_string())?;
    Ok(SecretString::from(text.to_string()))
}

/// Read `env:NAME` or `file:/path` sources (master keys and secrets alike).
/// Returns `Ok(None)` when `value` is neither form.
pub fn read_source(value: &str) -> Result<Option<Zeroizing<String>>, String> {
    if let Some(name) = value.strip_prefix("env:") {
        return match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(Some(Zeroizing::new(v))),
            Ok(_) => Err(format!("environment variable {name} is empty")),
            Err(_) => Err(format!("environment variable {name} is not set")),
        };
    }
    if let Some(path) = value.strip_prefix("file:") {
        let bytes = Zeroizing::new(
            super::files::read_file_bounded(path.as_ref(), super::files::MAX_REFERENCED_FILE_BYTES)
                .map_err(|e| format!("cannot read {path}: {}", e.kind()))?,
        );
        let text = Zeroizing::new(
            std::str::from_utf8(&bytes)
                .map_err(|_| format!("{path} is not UTF-8 text"))?
                .to_string(),
        );
        let trimmed = text.trim_end_matches(['\n', '\r']);
        if trimmed.is_empty() {
            return Err(format!("{path} is empty"));
        }
        return Ok(Some(Zeroizing::new(trimmed.to_string())));
    }
    Ok(None)
}

/// Resolve a secret value of the config.
pub fn resolve(
    value: &str,
    name: &str,
    master_keys: &HashMap<String, MasterKey>,
    allow_literal: bool,
) -> Result<SecretString, String> {
    if value.starts_with("enc:") {
        if !value.starts_with("enc:v1:") {
            return Err("unsupported encrypted value version (expected enc:v1:)".into());
        }
        return decrypt(value, name, master_keys);
    }
    if let Some(v) = read_source(value)? {
        return Ok(SecretString::from(v.to_string()));
    }
    if allow_literal {
        return Ok(SecretString::from(value.to_string()));
    }
    Err(
        "plain-text secrets are refused outside --demo; use enc:v1:…, env:NAME or file:/path"
            .into(),
    )
}

/// A URL with the password of its userinfo (`scheme://user:PASSWORD@host`) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[unparsable URL]".into();
    };
    // The last `@` anywhere, not the first before a `/`: a password typed without
    // percent-encoding may hold `/`, `?` or `#` (base64 does), and would otherwise be
    // taken for the path and shown. A URL whose path holds an `@` loses its host too.
    match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            // Without a colon the lone userinfo may be a password too: hide it all.
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
                None => format!("{scheme}://***{}", &rest[at..]),
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> HashMap<String, MasterKey> {
        let mut m = HashMap::new();
        m.insert(
            "k1".to_string(),
            MasterKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap(),
        );
        m.insert(
            "k2".to_string(),
            MasterKey::from_base64(&STANDARD.encode([9u8; 32])).unwrap(),
        );
        m
    }

    #[test]
    fn round_trip() {
        let k = keys();
        let v = encrypt("k1", &k["k1"], "sites/a/keys/a.k1", b"kgs_secret_value");
        let s = decrypt(&v, "sites/a/keys/a.k1", &k).unwrap();
        assert_eq!(s.expose_secret(), "kgs_secret_value");
    }

    #[test]
    fn moved_ciphertext_fails_and_names_place() {
        let k = keys();
        let v = encrypt("k1", &k["k1"], "sites/a/keys/a.k1", b"kgs_secret_value");
        let err = decrypt(&v, "sites/b/keys/b.k1", &k).unwrap_err();
        assert!(err.contains("sites/b/keys/b.k1"), "{err}");
        assert!(!err.contains("kgs_secret_value"));
        // Same data relabelled with another key id fails too.
        let relabelled = v.replace("enc:v1:k1:", "enc:v1:k2:");
        assert!(decrypt(&relabelled, "sites/a/keys/a.k1", &k).is_err());
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let k = keys();
        let v = encrypt("k1", &k["k1"], "n", b"secret");
        let mut bytes = v.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert!(decrypt(std::str::from_utf8(&bytes).unwrap(), "n", &k).is_err());
    }

    #[test]
    fn unknown_master_key_is_named() {
        let err = decrypt("enc:v1:k2025:AAAA", "n", &keys()).unwrap_err();
        assert_eq!(err, "unknown master key \"k2025\"");
    }

    #[test]
    fn literal_only_in_demo() {
        assert!(resolve("kgs_x", "n", &keys(), false).is_err());
        assert!(resolve("kgs_x", "n", &keys(), true).is_ok());
    }

    #[test]
    fn master_key_length_checked() {
        assert!(MasterKey::from_base64(&STANDARD.encode([1u8; 16])).is_err());
        assert!(format!("{:?}", keys()["k1"]).contains("REDACTED"));
    }
}

/// Values that appear in docs, tests and tutorials (matched case-insensitively, as substrings).
const KNOWN_WEAK: &[&str] = &[
    "changeme",
    "change-me",
    "change_me",
    "password",
    "passw0rd",
    "sk-test",
    "test_key",
    "testkey",
    "kgs_test_",
    "example",
    "placeholder",
    "dummy",
    "secret123",
    "letmein",
    "xxxxxxxx",
    "12345678",
    "abcdefgh",
    "qwerty",
];

/// Why a secret is too weak to use outside `--demo`, if it is. Never echoes the value.
pub fn weakness(secret: &str) -> Option<String> {
    let len = secret.chars().count();
    if len < 16 {
        return Some(format!("too short ({len} characters; at least 16)"));
    }
    let lower = secret.to_ascii_lowercase();
    if let Some(w) = KNOWN_WEAK.iter().find(|w| lower.contains(*w)) {
        return Some(format!("contains the well-known test value \"{w}\""));
    }
    let mut counts = std::collections::HashMap::new();
    for c in secret.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    if counts.len() <= 3 {
        return Some("repeated characters".into());
    }
    // Shannon entropy of the character distribution, times the length.
    let bits: f64 = counts
        .values()
        .map(|&n| {
            let p = n as f64 / len as f64;
            -p * p.log2()
        })
        .sum::<f64>()
        * len as f64;
    if bits < 64.0 {
        return Some(format!("low entropy (about {bits:.0} bits; at least 64)"));
    }
    None
}

#[cfg(test)]
mod weak_tests {
    use super::{redact_url, weakness};

    #[test]
    fn weak_secrets_are_named() {
        assert!(weakness("short").unwrap().contains("too short"));
        assert!(weakness("changeme-changeme-2026")
            .unwrap()
            .contains("changeme"));
        assert!(weakness("sk-test-1234567890abcdefgh").is_some());
        assert!(weakness("aaaaaaaaaaaaaaaaaaaaaaaa")
            .unwrap()
            .contains("repeated"));
        assert!(weakness("abababababababababab").is_some());
        assert!(
            weakness("kgs_test_7d1f4c2a9b8e6d5c4b3a29181706f5e4").is_some(),
            "the SPEC vector secret"
        );
        assert_eq!(weakness("kgs_8Vq2mZ0xL3pN7tR1yW5cH9dF"), None);
        assert_eq!(weakness("sk-proj-Qw3rT9uYi0oPaS2dFgH4jKl6"), None);
        let msg = weakness("password-password-1").unwrap();
        assert!(!msg.contains("password-password-1"));
    }

    #[test]
    fn url_passwords_are_hidden_whatever_they_hold() {
        for (url, shown) in [
            ("redis://:pw@10.0.0.5:6379", "redis://:***@10.0.0.5:6379"),
            ("rediss://kg:pw@h:6380/0", "rediss://kg:***@h:6380/0"),
            // Base64 passwords, typed without percent-encoding.
            (
                "redis://:Zx3/kq+A==@10.0.0.5:6379",
                "redis://:***@10.0.0.5:6379",
            ),
            ("redis://kg:a?b#c/d@h:6379", "redis://kg:***@h:6379"),
            ("redis://onlypassword@h", "redis://***@h"),
            ("redis://h:6379/0", "redis://h:6379/0"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
