//! `pii:` (on a route, or a site's replacement) → a [`PiiPolicy`].

use super::shared::Errors;
use crate::config::raw::RawPii;
use crate::pii::detect;
use crate::pii::policy::{PiiMode, PiiPolicy};
use std::sync::Arc;

/// `pii: { mode, kinds, patterns }` at YAML path `p`; `None` for `off` or on error.
pub(super) fn validate(raw: &RawPii, p: &str, errs: &mut Errors) -> Option<Arc<PiiPolicy>> {
    let before = errs.len();
    let mode = match raw.mode.as_str() {
        "off" => None,
        "pseudonymize" => Some(PiiMode::Pseudonymize),
        "block" => Some(PiiMode::Block),
        other => {
            errs.push(
                format!("{p}.mode"),
                format!("unknown mode \"{other}\" (expected off, pseudonymize or block)"),
            );
            None
        }
    };
    let mut patterns = Vec::new();
    for (i, pat) in raw.patterns.iter().enumerate() {
        let pp = format!("{p}.patterns[{i}]");
        let name_ok = pat.name.starts_with(|c: char| c.is_ascii_lowercase())
            && pat.name.len() <= 32
            && pat
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            errs.push(
                format!("{pp}.name"),
                format!(
                    "\"{}\" is not a valid name (a-z, 0-9, _; starting with a letter)",
                    pat.name
                ),
            );
        } else if detect::BUILTIN_KINDS.contains(&pat.name.as_str())
            || raw.patterns[..i].iter().any(|q| q.name == pat.name)
        {
            errs.push(
                format!("{pp}.name"),
                format!("duplicate kind \"{}\"", pat.name),
            );
        }
        match regex::Regex::new(&pat.regex) {
            Err(e) => errs.push(format!("{pp}.regex"), format!("not a regex: {e}")),
            Ok(re) if re.is_match("") => {
                errs.push(format!("{pp}.regex"), "matches the empty string")
            }
            Ok(_) => {}
        }
        patterns.push(detect::CustomPattern {
            name: pat.name.clone(),
            regex: pat.regex.clone(),
        });
    }
    let mut builtin: Vec<&str> = Vec::new();
    for (i, k) in raw.kinds.iter().enumerate() {
        if detect::BUILTIN_KINDS.contains(&k.as_str()) {
            builtin.push(k);
        } else if !raw.patterns.iter().any(|q| &q.name == k) {
            errs.push(
                format!("{p}.kinds[{i}]"),
                format!(
                    "unknown kind \"{k}\" (expected {} or a pattern name)",
                    detect::BUILTIN_KINDS.join(", ")
                ),
            );
        }
    }
    if raw.kinds.is_empty() {
        builtin = detect::BUILTIN_KINDS.to_vec();
    } else {
        patterns.retain(|q| raw.kinds.contains(&q.name));
    }
    if errs.len() != before {
        return None;
    }
    let mode = mode?;
    match detect::Detector::new(&builtin, &patterns) {
        Ok(detector) => Some(Arc::new(PiiPolicy { mode, detector })),
        Err(e) => {
            errs.push(p, format!("cannot build the detector: {e}"));
            None
        }
    }
}
