//! The admin API from a test: an `admin:` section with a key whose secret sits in a file,
//! and signed calls to a node's admin listener.

use super::*;

pub const ADMIN_KEY: &str = "ops";

/// An admin key's secret and the directory of its file (and of a state file).
pub struct AdminKey {
    pub secret: String,
    pub dir: tempfile::TempDir,
}

impl AdminKey {
    pub fn new() -> AdminKey {
        let dir = tempfile::tempdir().unwrap();
        let secret = random_secret("kga_");
        std::fs::write(dir.path().join("admin.secret"), &secret).unwrap();
        AdminKey { secret, dir }
    }

    /// `admin:` with this key; changes persist to `state_file` (in this directory).
    pub fn yaml(&self, state_file: &str) -> String {
        let d = self.dir.path().display();
        format!(
            "admin:\n  keys:\n    - {{ id: {ADMIN_KEY}, secret: \"file:{d}/admin.secret\" }}\n  state_file: \"{d}/{state_file}\"\n"
        )
    }

    pub fn state_file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// Signed headers for an admin call to `gw` (with `key_id`/`secret`).
pub fn admin_headers(
    gw: &Gateway,
    key_id: &str,
    secret: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{}{path}", gw.admin_port);
    sign_at(secret, key_id, method, &url, body.as_bytes(), now())
}

/// Send headers (signed or not) to the admin listener.
pub async fn admin_send(
    gw: &Gateway,
    h: &[(String, String)],
    method: &str,
    path: &str,
    body: &str,
) -> Resp {
    let url = format!("http://127.0.0.1:{}{path}", gw.admin_port);
    let body = (!body.is_empty()).then(|| body.as_bytes().to_vec());
    send(&client(), method, &url, h, body).await
}

/// A call signed with the admin key.
pub async fn admin(gw: &Gateway, key: &AdminKey, method: &str, path: &str, body: &str) -> Resp {
    let h = admin_headers(gw, ADMIN_KEY, &key.secret, method, path, body);
    admin_send(gw, &h, method, path, body).await
}

/// Create a site on `gw`; its first key's id and secret.
pub async fn create_site(gw: &Gateway, key: &AdminKey, id: &str, tier: &str) -> (String, String) {
    let r = admin(
        gw,
        key,
        "POST",
        "/admin/v1/sites",
        &format!(r#"{{"id":"{id}","tier":"{tier}"}}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    (
        v["key"]["id"].as_str().unwrap().to_string(),
        v["key"]["secret"].as_str().unwrap().to_string(),
    )
}

/// Add a key of kind `auth` to `site` through `gw`; its id and secret.
pub async fn add_key(gw: &Gateway, key: &AdminKey, site: &str, auth: &str) -> (String, String) {
    let path = format!("/admin/v1/sites/{site}/keys");
    let r = admin(gw, key, "POST", &path, &format!(r#"{{"auth":"{auth}"}}"#)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    (
        v["key"]["id"].as_str().unwrap().to_string(),
        v["key"]["secret"].as_str().unwrap().to_string(),
    )
}

/// Remove key `kid` of `site` through `gw`'s admin API.
pub async fn remove_key(gw: &Gateway, key: &AdminKey, site: &str, kid: &str) -> Resp {
    let path = format!("/admin/v1/sites/{site}/keys/{kid}");
    admin(gw, key, "DELETE", &path, "").await
}

/// A signed GET of the models list on `gw` with any key (`host`: the signed authority,
/// `None` for the node's own address).
pub async fn models_as(gw: &Gateway, key_id: &str, secret: &str, host: Option<&str>) -> Resp {
    let path = "/openai/v1/models";
    let mut h = match host {
        Some(hst) => {
            let mut h = sign_at(
                secret,
                key_id,
                "GET",
                &format!("http://{hst}{path}"),
                b"",
                now(),
            );
            h.push(("host".into(), hst.into()));
            h
        }
        None => gw.sign(key_id, secret, "GET", path, b""),
    };
    h.retain(|(n, _)| !n.is_empty());
    send(&client(), "GET", &gw.url(path), &h, None).await
}

/// A GET of the models list with a bearer key.
pub async fn models_bearer(gw: &Gateway, token: &str) -> Resp {
    let h = vec![("authorization".to_string(), format!("Bearer {token}"))];
    send(&client(), "GET", &gw.url("/openai/v1/models"), &h, None).await
}

/// Poll `probe` every 50 ms until it holds; panics after `within`. The time it took.
pub async fn within<F, Fut>(what: &str, within: Duration, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if probe().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
