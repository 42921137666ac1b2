//! A signed request written out as a curl command (`keygate sign`, the demo banner).

use super::{random_nonce, sign, SignRequest};

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A complete curl command for one freshly signed request.
pub fn curl_command(
    secret: &[u8],
    key_id: &str,
    method: &str,
    url: &str,
    body: &[u8],
    created: i64,
) -> Result<String, String> {
    let nonce = random_nonce();
    let h = sign(
        secret,
        &SignRequest {
            method,
            url,
            body,
            key_id,
            created,
            nonce: &nonce,
        },
    )?;
    let mut cmd = format!("curl -sS -X {method} {}", shell_quote(url));
    if !body.is_empty() {
        cmd.push_str(" -H 'Content-Type: application/json'");
    }
    for (n, v) in h.pairs() {
        cmd.push_str(&format!(" -H {}", shell_quote(&format!("{n}: {v}"))));
    }
    if !body.is_empty() {
        cmd.push_str(&format!(
            " --data-binary {}",
            shell_quote(&String::from_utf8_lossy(body))
        ));
    }
    Ok(cmd)
}
