//! Realtime sessions (SPEC §8.1): which requests open one, a session's limits, and the
//! registry of open sessions that a reload consults to close the ones whose site or key
//! was removed. What keygate reads in the provider's events is [`watch`] (usage from
//! `response.done`; a secret is never passed on), how a route's `max_tokens` holds is
//! [`cap`]. The gateway runs the session (`gateway/realtime.rs`); WebSocket framing is
//! `tungstenite`'s.

pub mod cap;
pub mod watch;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// `routes[].realtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A session is closed this long after it opened.
    pub max_session: Duration,
    /// The largest frame, and the largest message, either side may send.
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_session: Duration::from_secs(1800),
            max_frame_bytes: 1024 * 1024,
        }
    }
}

/// The subprotocol prefix browsers use to send a key (they cannot set headers).
pub const KEY_SUBPROTOCOL: &str = "openai-insecure-api-key.";

/// Is this request a Realtime WebSocket handshake (`GET …/realtime` with
/// `Upgrade: websocket`)?
pub fn is_handshake(req: &http::request::Parts) -> bool {
    let upgrade = req
        .headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    upgrade
        && req.method == http::Method::GET
        && req.uri.path().trim_end_matches('/').ends_with("/realtime")
}

/// The `model` of a handshake's query (`?model=gpt-realtime`), decoded. `Err` when the
/// query names `model` twice: the query goes to the provider as it is, and a provider that
/// reads the last would open a model keygate never admitted.
pub fn model_of_query(query: &str) -> Result<Option<String>, &'static str> {
    let mut models = form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == "model");
    let first = models.next();
    if models.next().is_some() {
        return Err("the query names model more than once");
    }
    Ok(first.map(|(_, v)| v.into_owned()).filter(|m| !m.is_empty()))
}

/// The subprotocols the client offered, in order.
pub fn subprotocols(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The key a browser sent as a subprotocol, if it did.
pub fn key_from_subprotocols(headers: &http::HeaderMap) -> Option<String> {
    subprotocols(headers)
        .into_iter()
        .find_map(|p| p.strip_prefix(KEY_SUBPROTOCOL).map(str::to_string))
        .filter(|k| !k.is_empty())
}

/// The subprotocol form of OpenAI's beta header (`openai-beta.realtime-v1`).
pub const BETA_SUBPROTOCOL: &str = "openai-beta.";

/// The subprotocols to offer the provider, from the client's: `realtime`, and each beta
/// the route allows (`routes[].betas`, as for the `OpenAI-Beta` header). Never the one
/// carrying the client's key, nor `openai-organization.*` or `openai-project.*` (which
/// would bill an organization or project of the client's choosing, as the HTTP path's
/// dropped headers would), nor any other. `Err(beta)`: a beta the route does not allow
/// (refused, as the header is).
pub fn forwarded_subprotocols(
    headers: &http::HeaderMap,
    betas: &[String],
) -> Result<Vec<String>, String> {
    let mut out = vec![];
    for p in subprotocols(headers) {
        if let Some(beta) = p.strip_prefix(BETA_SUBPROTOCOL) {
            if !betas.iter().any(|a| a == beta) {
                return Err(beta.to_string());
            }
            out.push(p);
        } else if p == "realtime" {
            out.push(p);
        }
    }
    Ok(out)
}

/// Sessions open now, each with who opened it and how to close it.
#[derive(Default)]
pub struct Sessions {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
    /// The process is shutting down: every session closes, and one opened now at once.
    shutting_down: std::sync::atomic::AtomicBool,
}

/// Who opened a session and what it is connected through ([`crate::state::binding`]).
pub struct Opened {
    pub site: String,
    pub key_id: String,
    /// The key's [`crate::config::ClientKey::binding`]: a session ends when its key's
    /// secret is replaced.
    pub key_binding: String,
    /// The key's `expires_at` when the session opened (its lifetime ends there).
    pub key_expires_at: Option<i64>,
    /// The upstream's name, the credential's id, and the binding of the two.
    pub upstream: String,
    pub credential: String,
    pub binding: u64,
}

struct Entry {
    who: Opened,
    close: Arc<Notify>,
}

/// An open session's place in the registry; leaves it when dropped.
pub struct Registered<'a> {
    sessions: &'a Sessions,
    id: u64,
    /// Notified when the session must close (its site or key was removed).
    pub close: Arc<Notify>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.sessions.open.lock().remove(&self.id);
    }
}

impl Sessions {
    /// Register a session.
    pub fn open(&self, who: Opened) -> Registered<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let mut open = self.open.lock();
        if self.is_shutting_down() {
            close.notify_one();
        }
        open.insert(
            id,
            Entry {
                who,
                close: close.clone(),
            },
        );
        drop(open);
        Registered {
            sessions: self,
            id,
            close,
        }
    }

    /// Close every session that `still` no longer allows (its site or key removed, its
    /// upstream's connection or credential changed); how many.
    pub fn close_removed(&self, still: impl Fn(&Opened) -> bool) -> usize {
        let open = self.open.lock();
        let mut n = 0;
        for e in open.values() {
            if !still(&e.who) {
                // A permit is kept if the session is not waiting yet.
                e.close.notify_one();
                n += 1;
            }
        }
        n
    }

    /// The process is shutting down (Pingora's graceful shutdown began: SIGTERM, or an
    /// upgrade's SIGQUIT once the listeners are handed over): close every session now,
    /// with "going away", while the runtime that carries it still runs (it stops after
    /// `grace_period_s`); how many.
    pub fn shut_down(&self) -> usize {
        let open = self.open.lock();
        self.shutting_down.store(true, Ordering::Release);
        for e in open.values() {
            e.close.notify_one();
        }
        open.len()
    }

    /// Whether [`Sessions::shut_down`] was called: a session told to close ends with
    /// "going away", not as revoked.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.open.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, upgrade: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(path);
        if let Some(u) = upgrade {
            b = b.header("upgrade", u).header("connection", "Upgrade");
        }
        b.body(()).unwrap().into_parts().0
    }

    /// A shutdown closes every open session, and one opened afterwards at once.
    #[test]
    fn shut_down_closes_open_sessions_and_later_ones() {
        use futures::FutureExt;
        let sessions = Sessions::default();
        let a = sessions.open(opened("alpha", "alpha.k1"));
        let b = sessions.open(opened("beta", "beta.k1"));
        assert!(a.close.notified().now_or_never().is_none());
        assert!(!sessions.is_shutting_down());
        assert_eq!(sessions.shut_down(), 2);
        assert!(sessions.is_shutting_down());
        assert!(a.close.notified().now_or_never().is_some());
        assert!(b.close.notified().now_or_never().is_some());
        let late = sessions.open(opened("alpha", "alpha.k2"));
        assert!(late.close.notified().now_or_never().is_some());
    }

    #[test]
    fn only_a_websocket_get_on_realtime_is_a_handshake() {
        assert!(is_handshake(&req(
            "GET",
            "/openai/v1/realtime?model=m",
            Some("websocket")
        )));
        assert!(is_handshake(&req(
            "GET",
            "/openai/v1/realtime",
            Some("WebSocket")
        )));
        assert!(!is_handshake(&req("GET", "/openai/v1/realtime", None)));
        assert!(!is_handshake(&req(
            "POST",
            "/openai/v1/realtime",
            Some("websocket")
        )));
        assert!(!is_handshake(&req(
            "GET",
            "/openai/v1/realtime/sessions",
            Some("websocket")
        )));
        assert!(!is_handshake(&req("GET", "/openai/v1/chat", Some("h2c"))));
    }

    #[test]
    fn the_model_comes_from_the_query() {
        assert_eq!(
            model_of_query("model=gpt-realtime").unwrap().as_deref(),
            Some("gpt-realtime")
        );
        assert_eq!(
            model_of_query("a=1&model=gpt%2Drealtime%20x")
                .unwrap()
                .as_deref(),
            Some("gpt-realtime x")
        );
        assert_eq!(model_of_query("models=x"), Ok(None));
        assert_eq!(model_of_query("model="), Ok(None));
        assert!(model_of_query("model=gpt-realtime-mini&model=gpt-realtime").is_err());
    }

    #[test]
    fn a_key_sent_as_a_subprotocol_is_found_and_never_offered_upstream() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "sec-websocket-protocol",
            "realtime, openai-insecure-api-key.kgt_abc, openai-beta.realtime-v1"
                .parse()
                .unwrap(),
        );
        assert_eq!(key_from_subprotocols(&h).as_deref(), Some("kgt_abc"));
        assert_eq!(
            forwarded_subprotocols(&h, &["realtime-v1".into()]).unwrap(),
            vec!["realtime", "openai-beta.realtime-v1"]
        );
        // A beta the route does not list is refused; organization, project and anything
        // else are never offered.
        assert_eq!(forwarded_subprotocols(&h, &[]).unwrap_err(), "realtime-v1");
        h.insert(
            "sec-websocket-protocol",
            "realtime, openai-organization.org_x, openai-project.proj_x, other"
                .parse()
                .unwrap(),
        );
        assert_eq!(forwarded_subprotocols(&h, &[]).unwrap(), vec!["realtime"]);
        h.insert("sec-websocket-protocol", "realtime".parse().unwrap());
        assert_eq!(key_from_subprotocols(&h), None);
    }

    #[test]
    fn a_reload_closes_only_the_sessions_of_removed_sites_and_keys() {
        let s = Sessions::default();
        let a = s.open(opened("alpha", "alpha.k1"));
        let b = s.open(opened("beta", "beta.k1"));
        assert_eq!(s.close_removed(|o| o.site == "alpha"), 1);
        let notified = b.close.notified();
        futures_lite_now(notified);
        drop(a);
        assert_eq!(s.len(), 1);
    }

    fn opened(site: &str, key_id: &str) -> Opened {
        Opened {
            site: site.into(),
            key_id: key_id.into(),
            key_binding: String::new(),
            key_expires_at: None,
            upstream: "openai".into(),
            credential: "prod-1".into(),
            binding: 0,
        }
    }

    /// The notification is already there: the future is ready at once.
    fn futures_lite_now(f: impl std::future::Future<Output = ()>) {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(f.as_mut().poll(&mut cx).is_ready(), "notified");
    }
}
