//! What keygate reads in a Realtime session's provider messages ([`ProviderWatch`]): a
//! secret is never passed on (each text field joined across messages, as a client joins
//! it), and the responses begun and finished are accounted (usage from `response.done`,
//! estimates for the ones a session ends in the middle of).

use crate::response::egress::{self, Rules};
use crate::response::usage::{self, Usage};
use crate::response::validate::{Rejection, Tail};

/// Responses tracked at once in a session (the provider begins one per `response.create`
/// the client sends, out-of-band ones beside the conversation's); beyond it, responses
/// are counted ([`ProviderWatch::untracked`]) and their output text counts with the last
/// one tracked.
const MAX_IN_FLIGHT: usize = 16;

/// A response the provider began and has not finished.
struct Response {
    /// Its id, when it named one of at most 128 bytes.
    id: Option<String>,
    /// Bytes of its output text (not audio), for a `response.done` without usage.
    output_text: usize,
}

/// What a session's provider has sent so far, as a client reads it: the text of each
/// field joined across messages (a client appends `response.output_text.delta` after
/// `response.output_text.delta`), and the tail of its binary messages. A secret cut over
/// two messages is found in the one that completes it, which is not passed on.
#[derive(Default)]
pub struct ProviderWatch {
    text: egress::stream_text::StreamText,
    binary: Tail,
    /// The responses begun and not finished: a session that ends then has them
    /// cancelled and their reports read, or is charged an estimate.
    in_flight: Vec<Response>,
    /// Responses begun past [`MAX_IN_FLIGHT`] and not finished.
    untracked: usize,
    /// What the reports of refused messages said (they reached no client; the provider
    /// produced the response all the same).
    refused_usage: Option<Usage>,
}

impl ProviderWatch {
    /// One text message: refused unless it is strict JSON (a lenient client parser could
    /// read a secret from one keygate cannot parse, `"\ud800…"`), and when it carries a
    /// secret or a blocked pattern, alone or joined with the messages before; its usage
    /// when it is a `response.done` (a refused one's is kept for
    /// [`ProviderWatch::take_refused_usage`]).
    pub fn text(&mut self, text: &str, rules: &Rules) -> Result<Option<Usage>, Rejection> {
        let v =
            serde_json::from_str::<serde_json::Value>(text).map_err(|_| Rejection::InvalidJson)?;
        let reported = self.account(&v);
        if let Err(r) = self
            .text
            .check(rules, text.as_bytes(), Some((text.as_bytes(), &v)))
        {
            if let Some(u) = reported {
                self.refused_usage.get_or_insert_with(Usage::default).add(u);
            }
            return Err(r);
        }
        Ok(reported)
    }

    /// A message read after the session ended (nothing of it reaches the client, so it is
    /// not scanned): its usage when it is a `response.done`.
    pub fn after_end(&mut self, text: &str) -> Option<Usage> {
        let v = serde_json::from_str::<serde_json::Value>(text).ok()?;
        self.account(&v)
    }

    /// The responses begun and finished, and their output text; the usage of a
    /// `response.done` (its report, else an estimate from its output text: its audio and
    /// its input are not known here).
    fn account(&mut self, v: &serde_json::Value) -> Option<Usage> {
        let kind = v.get("type").and_then(|t| t.as_str());
        let id = v
            .pointer("/response/id")
            .and_then(|i| i.as_str())
            .filter(|i| i.len() <= 128);
        if !kind.is_some_and(|t| t.ends_with("audio.delta")) {
            let bytes: usize = ["delta", "transcript", "text", "arguments"]
                .iter()
                .filter_map(|k| v.get(*k).and_then(|s| s.as_str()))
                .map(str::len)
                .sum();
            let of = v.get("response_id").and_then(|i| i.as_str());
            let at = of.and_then(|of| self.position(Some(of)));
            if let Some(r) = at.or(self.in_flight.len().checked_sub(1)) {
                self.in_flight[r].output_text += bytes;
            }
        }
        match kind {
            Some("response.created") if self.in_flight.len() < MAX_IN_FLIGHT => {
                self.in_flight.push(Response {
                    id: id.map(str::to_string),
                    output_text: 0,
                });
                None
            }
            Some("response.created") => {
                self.untracked += 1;
                None
            }
            Some("response.done") => {
                let output = match self.position(id) {
                    Some(r) => self.in_flight.remove(r).output_text,
                    None => {
                        self.untracked = self.untracked.saturating_sub(1);
                        0
                    }
                };
                Some(usage::find(v).unwrap_or_else(|| Usage::estimate(0, output)))
            }
            _ => None,
        }
    }

    /// Which response in flight `id` names: the one with that id, else the first without
    /// one (a provider that names none), else, for no id, the first.
    fn position(&self, id: Option<&str>) -> Option<usize> {
        let exact = id.and_then(|id| {
            self.in_flight
                .iter()
                .position(|r| r.id.as_deref() == Some(id))
        });
        exact
            .or_else(|| self.in_flight.iter().position(|r| r.id.is_none()))
            .or_else(|| (id.is_none() && !self.in_flight.is_empty()).then_some(0))
    }

    /// The output text (not audio) of the responses the provider began and has not
    /// finished (the session ended in the middle of them), in bytes, if there are any:
    /// what their output is estimated from, as for a `response.done` without usage.
    pub fn in_flight(&self) -> Option<usize> {
        (!self.in_flight.is_empty() || self.untracked > 0)
            .then(|| self.in_flight.iter().map(|r| r.output_text).sum())
    }

    /// The ids of the responses in flight (`None` for one that named none, and once for
    /// those past [`MAX_IN_FLIGHT`]).
    pub fn in_flight_ids(&self) -> Vec<Option<String>> {
        let mut ids: Vec<_> = self.in_flight.iter().map(|r| r.id.clone()).collect();
        if self.untracked > 0 {
            ids.push(None);
        }
        ids
    }

    /// The usage the reports of refused messages carried, once.
    pub fn take_refused_usage(&mut self) -> Option<Usage> {
        self.refused_usage.take()
    }

    /// One binary message: its bytes, and the end of the ones before, hold no secret.
    pub fn binary(&mut self, bytes: &[u8], rules: &Rules) -> Result<(), Rejection> {
        let mut hit = None;
        self.binary.scan(bytes, rules.keep(), |b| {
            hit = rules.hit(b);
            hit.is_some()
        });
        hit.map_or(Ok(()), Err)
    }

    /// The reason of the provider's close frame, which would reach the client as it is.
    pub fn close_reason(&self, reason: &str, rules: &Rules) -> Result<(), Rejection> {
        rules.text(reason).map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::validate::SecretScanner;

    /// Rules that look for one secret, `sk-secret-0123456789`.
    fn rules() -> Rules<'static> {
        static SCANNER: std::sync::LazyLock<SecretScanner> =
            std::sync::LazyLock::new(|| SecretScanner::new(&["sk-secret-0123456789".to_string()]));
        Rules {
            secrets: &SCANNER,
            patterns: None,
        }
    }

    #[test]
    fn provider_events_give_usage_and_never_a_secret() {
        let rules = rules();
        let text = |t: &str| ProviderWatch::default().text(t, &rules);
        let done = r#"{"type":"response.done","response":{"usage":{"total_tokens":30,"input_tokens":10,"output_tokens":20}}}"#;
        let u = text(done).unwrap().unwrap();
        assert_eq!((u.input, u.output, u.estimated), (10, 20, false));
        assert_eq!(text(r#"{"type":"session.created"}"#).unwrap(), None);
        let leak = r#"{"type":"response.output_text.delta","delta":"sk-secret-\u0030123456789"}"#;
        assert_eq!(text(leak), Err(Rejection::SecretEgress));
        assert!(text("not json sk-secret-0123456789").is_err());
        // Not strict JSON (a lone surrogate): a lenient parser would still read the key.
        let lone =
            r#"{"type":"response.output_text.delta","delta":"\ud800 sk-secret-\u0030123456789"}"#;
        assert_eq!(text(lone), Err(Rejection::InvalidJson));
        // An earlier duplicate member, escaped: a parser that keeps the first reads it.
        let dup = r#"{"type":"response.output_text.delta","delta":"sk-secret-\u0030123456789","delta":"x"}"#;
        assert_eq!(text(dup), Err(Rejection::SecretEgress));
    }

    #[test]
    fn a_secret_cut_over_messages_is_found_in_the_one_that_completes_it() {
        let rules = rules();
        let delta = |d: &str| {
            format!(
                r#"{{"type":"response.output_text.delta","output_index":0,"content_index":0,"delta":"{d}"}}"#
            )
        };
        let mut w = ProviderWatch::default();
        assert_eq!(w.text(&delta("here: sk-secret-01"), &rules), Ok(None));
        assert_eq!(
            w.text(&delta("23456789 done"), &rules),
            Err(Rejection::SecretEgress)
        );
        // Function call arguments, one character escaped in the second half.
        let args = |d: &str| {
            format!(
                r#"{{"type":"response.function_call_arguments.delta","output_index":1,"delta":"{d}"}}"#
            )
        };
        let mut w = ProviderWatch::default();
        assert_eq!(w.text(&args(r#"{\"k\":\"sk-secret-"#), &rules), Ok(None));
        assert_eq!(
            w.text(&args(r#"\\u0030123456789\"}"#), &rules),
            Err(Rejection::SecretEgress)
        );
        // Binary messages.
        let mut w = ProviderWatch::default();
        assert_eq!(w.binary(b"\x00\x01sk-secret-012", &rules), Ok(()));
        assert_eq!(
            w.binary(b"3456789\x02", &rules),
            Err(Rejection::SecretEgress)
        );
        // The close frame's reason, escaped or not.
        assert_eq!(
            w.close_reason("bye sk-secret-0123456789", &rules),
            Err(Rejection::SecretEgress)
        );
        assert_eq!(w.close_reason("normal closure", &rules), Ok(()));
    }

    /// Overlapping responses are each tracked to their own end (an out-of-band response
    /// finished first leaves the other in flight, with its own output text), and the
    /// report of a message keygate refused is kept, not lost.
    #[test]
    fn overlapping_responses_and_refused_reports_are_accounted() {
        let rules = rules();
        let mut w = ProviderWatch::default();
        let created =
            |id: &str| format!(r#"{{"type":"response.created","response":{{"id":"{id}"}}}}"#);
        let delta = |id: &str, n: usize| {
            format!(
                r#"{{"type":"response.output_text.delta","response_id":"{id}","delta":"{}"}}"#,
                "w".repeat(n)
            )
        };
        let done = |id: &str, extra: &str| {
            format!(
                r#"{{"type":"response.done","response":{{"id":"{id}","usage":{{"input_tokens":10,"output_tokens":2000}}{extra}}}}}"#
            )
        };
        for m in [
            created("big"),
            delta("big", 400),
            created("small"),
            delta("small", 40),
        ] {
            assert_eq!(w.text(&m, &rules), Ok(None));
        }
        assert!(w.text(&done("small", ""), &rules).unwrap().is_some());
        assert_eq!(
            w.in_flight(),
            Some(400),
            "the big one is still in flight, with its text"
        );
        assert_eq!(w.in_flight_ids(), vec![Some("big".to_string())]);
        // Its report, refused for what it carries: the usage is kept.
        let leaked = done("big", r#","note":"sk-secret-0123456789""#);
        assert_eq!(w.text(&leaked, &rules), Err(Rejection::SecretEgress));
        assert_eq!(w.in_flight(), None);
        let kept = w.take_refused_usage().expect("kept");
        assert_eq!((kept.input, kept.output), (10, 2000));
        assert_eq!(w.take_refused_usage(), None);
        // Past the responses tracked, one more is still in flight until its end.
        for i in 0..=MAX_IN_FLIGHT {
            assert_eq!(w.text(&created(&format!("r{i}")), &rules), Ok(None));
        }
        for i in 0..MAX_IN_FLIGHT {
            assert!(w
                .text(&done(&format!("r{i}"), ""), &rules)
                .unwrap()
                .is_some());
        }
        assert!(w.in_flight().is_some(), "the untracked one");
        assert_eq!(w.in_flight_ids(), vec![None]);
        assert!(w.text(&done("r16", ""), &rules).unwrap().is_some());
        assert_eq!(w.in_flight(), None);
    }

    /// A `response.done` without usage charged nothing, and a second `response.created`
    /// before the first's end dropped the first's bytes.
    #[test]
    fn a_response_without_usage_is_estimated_from_its_bytes() {
        let rules = rules();
        let mut w = ProviderWatch::default();
        let created = r#"{"type":"response.created"}"#;
        let delta = format!(
            r#"{{"type":"response.output_text.delta","delta":"{}"}}"#,
            "word ".repeat(200)
        );
        // Audio is not text: base64 PCM counted as text was hundreds of times its cost.
        let audio = format!(
            r#"{{"type":"response.output_audio.delta","delta":"{}"}}"#,
            "QUFB".repeat(5000)
        );
        assert_eq!(w.text(created, &rules), Ok(None));
        assert_eq!(w.text(&delta, &rules), Ok(None));
        assert_eq!(w.text(&audio, &rules), Ok(None));
        assert_eq!(w.text(created, &rules), Ok(None));
        let done = w
            .text(
                r#"{"type":"response.done","response":{"usage":null}}"#,
                &rules,
            )
            .unwrap()
            .expect("charged");
        // The text's 1,000 bytes, not the messages' framing or the audio.
        assert!(done.estimated && done.output == 250, "{done:?}");
        // A reported usage is taken as it is.
        let reported = w
            .text(
                r#"{"type":"response.done","response":{"usage":{"input_tokens":5,"output_tokens":7}}}"#,
                &rules,
            )
            .unwrap()
            .expect("reported");
        assert_eq!(
            (reported.input, reported.output, reported.estimated),
            (5, 7, false)
        );
    }
}
