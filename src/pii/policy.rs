//! A validated `pii:` setting.

use super::detect;

/// What a route or site does with personal data (`off` is no policy at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiiMode {
    /// Replace values by placeholders upstream, restore them in the answer.
    Pseudonymize,
    /// Refuse the request (422 `pii_detected`).
    Block,
}

/// A validated `pii:` setting: the mode and the detector compiled at load.
#[derive(Debug)]
pub struct PiiPolicy {
    pub mode: PiiMode,
    pub detector: detect::Detector,
}
