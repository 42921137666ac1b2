//! The settings an auditor checks first, reported by `keygate check` (and fatal with
//! `--strict`): what is reachable from the network in clear, and which protections are
//! off. Findings made while validating (an https upstream without pins, plain http
//! allowed to a provider) are in [`Runtime::warnings`] already.

use super::runtime::Runtime;

/// Findings about a valid runtime's exposure, each naming its YAML path.
pub fn posture(rt: &Runtime) -> Vec<String> {
    let mut out = Vec::new();
    for (i, l) in rt.process.listeners.iter().enumerate() {
        if l.tls.is_none() && !l.addr.ip().is_loopback() {
            out.push(format!(
                "server.listen[{i}]: plain HTTP on {}, reachable from the network: client credentials travel in clear (add tls, or keep it behind a TLS-terminating proxy on the same host)",
                l.addr
            ));
        }
    }
    if let Some(a) = rt.process.admin_listen.filter(|a| !a.ip().is_loopback()) {
        let what = match rt.admin.is_some() {
            true => "the admin API (with admin.allow_plaintext: new client secrets in clear), /metrics and the health endpoints are",
            false => "/metrics and the health endpoints are",
        };
        out.push(format!(
            "server.admin_listen: {a} is not loopback: {what} reachable from the network"
        ));
    }
    if rt.server.auth_failure_limit.is_none() {
        out.push(
            "server.auth_failure_limit: off: failing requests from one address are never cooled down"
                .into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, LoadOptions};

    fn rt(listen: &str, admin: &str, extra: &str) -> Runtime {
        let yaml = format!(
            r#"
server:
  listen: [{{ addr: "{listen}" }}]
  admin_listen: "{admin}"
{extra}
upstreams:
  openai:
    kind: openai
    url: "http://127.0.0.1:9999"
    credentials: [{{ id: c1, secret: "sk-literal-for-tests-000000000000" }}]
routes: [{{ prefix: "/openai/", upstream: openai }}]
tiers: {{ free: {{}} }}
sites: []
"#
        );
        load_str(&yaml, LoadOptions { demo: true }).unwrap()
    }

    #[test]
    fn loopback_and_defaults_report_nothing() {
        assert!(posture(&rt("127.0.0.1:8080", "127.0.0.1:9090", "")).is_empty());
    }

    #[test]
    fn exposure_and_protections_off_are_named_by_path() {
        let found = posture(&rt(
            "0.0.0.0:8080",
            "0.0.0.0:9090",
            "  auth_failure_limit: off",
        ));
        let paths: Vec<&str> = found
            .iter()
            .map(|f| f.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(
            paths,
            [
                "server.listen[0]",
                "server.admin_listen",
                "server.auth_failure_limit"
            ],
            "{found:?}"
        );
    }
}
