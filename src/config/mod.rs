//! Configuration: YAML ([`raw`]) → validated, typed [`Runtime`], once, in one place.
//!
//! Every mistake is reported with the YAML path that holds it
//! (`routes[0].upstream: unknown upstream "missing"`), all mistakes at once,
//! and nothing is half-applied: a `Runtime` exists only when the whole file is valid.
//!
//! [`raw`] mirrors the YAML; [`validate`] checks it, one file per section;
//! [`runtime`] is the plain data a request runs on; [`files`] reads what the config
//! names, bounded; [`secret`] resolves secret sources; [`inventory`] lists where the
//! secrets are; [`site_files`] reads the sites of `sites_dir`; [`split`] parses a large file on every
//! core.

pub mod error;
pub mod files;
pub mod inventory;
pub mod posture;
pub mod raw;
pub mod runtime;
pub mod secret;
pub mod site_files;
pub mod split;
pub mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use files::{
    read_file_bounded, read_text_bounded, MAX_CONFIG_BYTES, MAX_REFERENCED_FILE_BYTES,
};
pub use inventory::{all_secret_strings, encrypted_values, sensitive_files};
pub use runtime::*;
pub use validate::{validate, LoadOptions};

use raw::RawConfig;
use std::path::Path;

/// Load and validate a config file.
pub fn load_file(path: &Path, opts: LoadOptions) -> Result<Runtime, ConfigErrors> {
    load_str(&read_config(path)?, opts)
}

/// What `keygate check` loads: the config and, from the same parse, the files it names
/// that hold secret material (with their YAML paths).
pub fn check_file(
    path: &Path,
    opts: LoadOptions,
) -> Result<(Runtime, Vec<(String, std::path::PathBuf)>), ConfigErrors> {
    let raw = parse_with_site_files(&read_config(path)?)?;
    let files = sensitive_files(&raw);
    Ok((validate(raw, opts)?, files))
}

/// The config file's text (bounded, UTF-8).
fn read_config(path: &Path) -> Result<String, ConfigErrors> {
    read_text_bounded(path, MAX_CONFIG_BYTES).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })
}

/// Parse and validate config text.
pub fn load_str(text: &str, opts: LoadOptions) -> Result<Runtime, ConfigErrors> {
    validate(parse_with_site_files(text)?, opts)
}

/// [`parse`], then the sites of `sites_dir` appended ([`site_files`]): what a load
/// validates.
pub fn parse_with_site_files(text: &str) -> Result<RawConfig, ConfigErrors> {
    let mut raw = parse(text).map_err(|e| ConfigErrors(vec![e]))?;
    site_files::expand(&mut raw)?;
    Ok(raw)
}

/// Parse YAML into the raw structs; type errors and unknown keys name their path. A
/// large file's sites are parsed on every core ([`split`]).
pub fn parse(text: &str) -> Result<RawConfig, ConfigError> {
    if text.len() >= split::PARALLEL_MIN_BYTES {
        let runs = std::thread::available_parallelism().map_or(1, |n| n.get()) * 2;
        if let Some(raw) = split::parse_in_parts(text, runs, |t| parse_whole(t).ok()) {
            return Ok(raw);
        }
    }
    parse_whole(text)
}

/// [`parse`] in one piece.
pub fn parse_whole(text: &str) -> Result<RawConfig, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = error::without_values(&e.into_inner().to_string());
        // serde_yaml appends " at line L column C"; keep it, it helps.
        ConfigError {
            path: if path == "." { String::new() } else { path },
            message: inner,
        }
    })
}

#[cfg(test)]
mod tests;
