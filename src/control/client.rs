//! `keygate admin …`: sign and send admin API calls, print the answer (JSON), so that
//! operators never build a signature by hand.

use crate::auth::signature::{self, SignRequest};
use clap::{Args, Subcommand};

/// Where the admin API is and the key that signs.
#[derive(Args)]
pub struct Conn {
    /// The admin listener (`server.admin_listen`).
    #[arg(
        long,
        env = "KEYGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:9100"
    )]
    pub url: String,
    /// An `admin.keys` id.
    #[arg(long = "key-id", env = "KEYGATE_ADMIN_KEY_ID")]
    pub key_id: String,
    /// Its secret (better from the environment than on the command line).
    #[arg(long, env = "KEYGATE_ADMIN_SECRET", hide_env_values = true)]
    pub secret: String,
}

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Every site (settings and key ids, never secrets).
    List,
    /// One site, with its usage now.
    Show {
        site: String,
    },
    /// Create a site; prints its first key's secret (shown once).
    Create {
        site: String,
        #[arg(long)]
        tier: String,
        /// Route prefixes it may call (repeat; default all).
        #[arg(long = "route")]
        routes: Vec<String>,
        /// Browser origins (repeat).
        #[arg(long = "cors-origin")]
        cors_origins: Vec<String>,
    },
    /// Refuse every key of a site (answers like unknown keys) until enabled.
    Disable {
        site: String,
    },
    Enable {
        site: String,
    },
    /// Add a key; prints its secret (shown once).
    AddKey {
        site: String,
        /// hmac or bearer.
        #[arg(long, default_value = "hmac")]
        auth: String,
        /// RFC 3339 time after which the key is refused.
        #[arg(long = "expires-at")]
        expires_at: Option<String>,
    },
    /// Remove a key: refused on every node within 2 s.
    RemoveKey {
        site: String,
        key_id: String,
    },
}

/// Run one admin command; exit code 0 on a 2xx answer, 1 otherwise.
pub fn run(conn: Conn, cmd: AdminCmd) -> Result<i32, String> {
    use serde_json::json;
    let (method, path, body) = match cmd {
        AdminCmd::List => ("GET", "sites".to_string(), None),
        AdminCmd::Show { site } => ("GET", format!("sites/{site}"), None),
        AdminCmd::Create {
            site,
            tier,
            routes,
            cors_origins,
        } => {
            let mut b = json!({ "id": site, "tier": tier });
            if !routes.is_empty() {
                b["routes"] = json!(routes);
            }
            if !cors_origins.is_empty() {
                b["cors_origins"] = json!(cors_origins);
            }
            ("POST", "sites".to_string(), Some(b))
        }
        AdminCmd::Disable { site } => ("POST", format!("sites/{site}/disable"), None),
        AdminCmd::Enable { site } => ("POST", format!("sites/{site}/enable"), None),
        AdminCmd::AddKey {
            site,
            auth,
            expires_at,
        } => {
            let mut b = json!({ "auth": auth });
            if let Some(t) = expires_at {
                b["expires_at"] = json!(t);
            }
            ("POST", format!("sites/{site}/keys"), Some(b))
        }
        AdminCmd::RemoveKey { site, key_id } => {
            ("DELETE", format!("sites/{site}/keys/{key_id}"), None)
        }
    };
    let url = format!("{}/admin/v1/{path}", conn.url.trim_end_matches('/'));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, text) = call(&conn, method, &url, body.as_bytes())?;
    println!("{text}");
    Ok(if (200..300).contains(&status) { 0 } else { 1 })
}

/// Send one signed call; its status and body.
pub fn call(conn: &Conn, method: &str, url: &str, body: &[u8]) -> Result<(u16, String), String> {
    let nonce = signature::random_nonce();
    let headers = signature::sign(
        conn.secret.as_bytes(),
        &SignRequest {
            method,
            url,
            body,
            key_id: &conn.key_id,
            created: crate::clock::now_s(),
            nonce: &nonce,
        },
    )?;
    let mut req = ureq::request(method, url).timeout(std::time::Duration::from_secs(15));
    for (name, value) in headers.pairs() {
        req = req.set(name, value);
    }
    if !body.is_empty() {
        req = req.set("content-type", "application/json");
    }
    let resp = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(format!("{url}: {e}")),
    };
    let status = resp.status();
    let text = resp
        .into_string()
        .map_err(|e| format!("{url}: cannot read the answer: {e}"))?;
    Ok((status, text))
}
