//! keygate's logger: `env_logger` (`RUST_LOG`, default `info`) behind two guards.
//!
//! - **Only keygate's own modules log below `info`.** Libraries print what they carry at
//!   `debug` and `trace`: Pingora request and response headers, tungstenite its handshake
//!   request (the provider credential) and every close frame's reason, ureq the OTLP
//!   exporter's headers. An allow-list, so that a library added later is covered too.
//! - **No line carries a configured secret.** Each line that passes is checked against the
//!   running config's secrets (provider credentials, HMAC secrets, SMTP and Redis
//!   passwords) and each one found is written as `[REDACTED]`. Pingora's error lines hold
//!   the bytes of a response header or body it could not parse, which a provider can fill
//!   with anything.

use crate::config::Runtime;
use arc_swap::ArcSwapOption;
use log::{Level, Log, Metadata, Record};
use std::sync::Arc;

/// The config whose secrets are looked for (set at start and on each reload).
static RUNTIME: ArcSwapOption<Runtime> = ArcSwapOption::const_empty();

/// Look for `rt`'s secrets in every log line from now on.
pub fn watch(rt: Arc<Runtime>) {
    RUNTIME.store(Some(rt));
}

/// Install the logger (once, first thing in `main`).
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Guard { inner })).is_ok() {
        log::set_max_level(max);
    }
}

/// Is `target` one of keygate's own modules?
fn ours(target: &str) -> bool {
    target == "keygate" || target.starts_with("keygate::")
}

struct Guard<L> {
    inner: L,
}

impl<L: Log> Log for Guard<L> {
    fn enabled(&self, m: &Metadata) -> bool {
        (m.level() <= Level::Info || ours(m.target())) && self.inner.enabled(m)
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let rt = RUNTIME.load();
        let Some(scanner) = rt.as_ref().map(|rt| &rt.scanner) else {
            return self.inner.log(r);
        };
        let text = r.args().to_string();
        match scanner.redact(&text) {
            None => self.inner.log(r),
            Some(clean) => self.inner.log(
                &Record::builder()
                    .args(format_args!("{clean}"))
                    .metadata(r.metadata().clone())
                    .module_path(r.module_path())
                    .file(r.file())
                    .line(r.line())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// A logger that keeps what it is given.
    #[derive(Default)]
    struct Keep(Mutex<Vec<String>>);

    impl Log for Keep {
        fn enabled(&self, _: &Metadata) -> bool {
            true
        }
        fn log(&self, r: &Record) {
            self.0.lock().push(format!("{} {}", r.target(), r.args()));
        }
        fn flush(&self) {}
    }

    fn log(g: &Guard<Keep>, level: Level, target: &str, text: &str) {
        g.log(
            &Record::builder()
                .args(format_args!("{text}"))
                .level(level)
                .target(target)
                .build(),
        );
    }

    #[test]
    fn libraries_log_at_info_at_most_and_secrets_are_redacted() {
        let g = Guard {
            inner: Keep::default(),
        };
        log(
            &g,
            Level::Debug,
            "tungstenite::protocol",
            "close frame: the reason",
        );
        log(&g, Level::Trace, "ureq::unit", "writing prelude");
        log(&g, Level::Debug, "keygate::gateway", "ours");
        log(&g, Level::Warn, "pingora_proxy", "Fail to proxy");
        assert_eq!(
            *g.inner.0.lock(),
            vec!["keygate::gateway ours", "pingora_proxy Fail to proxy"]
        );
        let yaml = r#"
server:
  listen: [{ addr: "127.0.0.1:8080" }]
upstreams:
  up:
    kind: openai
    url: "http://127.0.0.1:9"
    credentials: [{ id: c, secret: "sk-logged-0123456789" }]
routes: [{ prefix: "/p/", upstream: up }]
"#;
        let demo = crate::config::LoadOptions { demo: true };
        let rt = crate::config::load_str(yaml, demo).expect("config");
        watch(Arc::new(rt));
        log(
            &g,
            Level::Error,
            "pingora_proxy",
            "buf: x-echo: Bearer sk-logged-0123456789\\r\\n",
        );
        let kept = g.inner.0.lock().last().cloned().unwrap();
        assert_eq!(kept, "pingora_proxy buf: x-echo: Bearer [REDACTED]\\r\\n");
        RUNTIME.store(None);
    }
}
