//! `sites_dir`: sites in files of their own, for site lists that outgrow one file (the
//! config file is capped at [`MAX_CONFIG_BYTES`], about 100,000 sites) or that are written
//! by another system. Each `*.yaml` / `*.yml` file in the directory (or a symlink to one;
//! not its subdirectories; names starting with `.` are skipped) is a YAML list of sites in
//! the form of `sites:` entries; a `*.json` file is the same list in JSON (100,000 sites
//! start in about half the time of the same sites in YAML files: the form for a generated
//! list). Their sites follow `sites:`, file by file in name order, and are validated with
//! them; a mistake names the file and the path inside it (`sites_dir/b.yaml[3].tier`).
//! Files are parsed in parallel, one thread per CPU.

use super::error::{ConfigError, ConfigErrors};
use super::files::{read_text_bounded, MAX_CONFIG_BYTES};
use super::raw::{RawConfig, RawSite};
use std::path::{Path, PathBuf};

/// Most site files read from one directory.
pub const MAX_SITE_FILES: usize = 10_000;

/// Append the sites of every file in `raw.sites_dir` to `raw.sites` and record where
/// each file's sites are ([`RawConfig::site_path`]). Every file's mistakes are reported.
pub fn expand(raw: &mut RawConfig) -> Result<(), ConfigErrors> {
    read(raw)?.append(raw)
}

/// The files of a `sites_dir` as read at one load: their names and texts. Builds until
/// the next load parse these, not the directory again, so a file written meanwhile (an
/// unreviewed edit, one half written) waits for a SIGHUP as the YAML does.
#[derive(Debug, Clone, Default)]
pub struct SiteTexts(Vec<(String, String)>);

/// Read the site files of `raw.sites_dir` (none without one).
pub fn read(raw: &RawConfig) -> Result<SiteTexts, ConfigErrors> {
    let Some(dir) = raw.sites_dir.clone() else {
        return Ok(SiteTexts::default());
    };
    let one = |message: String| {
        ConfigErrors(vec![ConfigError {
            path: "sites_dir".into(),
            message,
        }])
    };
    let files = list(Path::new(&dir)).map_err(|e| one(format!("cannot read {dir}: {e}")))?;
    if files.len() > MAX_SITE_FILES {
        return Err(one(format!(
            "{dir} has {} site files, more than {MAX_SITE_FILES}",
            files.len()
        )));
    }
    let read = super::split::parallel_map(&files, |(name, path)| {
        read_text_bounded(path, MAX_CONFIG_BYTES)
            .map(|text| (name.clone(), text))
            .map_err(|e| ConfigError {
                path: format!("sites_dir/{name}"),
                message: format!("cannot read {}: {e}", path.display()),
            })
    });
    let (texts, errs): (Vec<_>, Vec<_>) = read.into_iter().partition(Result::is_ok);
    if !errs.is_empty() {
        return Err(ConfigErrors(
            errs.into_iter().filter_map(Result::err).collect(),
        ));
    }
    Ok(SiteTexts(
        texts.into_iter().filter_map(Result::ok).collect(),
    ))
}

impl SiteTexts {
    /// Parse every file (in parallel) and append its sites to `raw.sites`, recording where
    /// each file's sites are. Every file's mistakes are reported.
    pub fn append(&self, raw: &mut RawConfig) -> Result<(), ConfigErrors> {
        let parsed = super::split::parallel_map(&self.0, |(name, text)| parse_file(name, text));
        let mut errs = Vec::new();
        for ((name, _), parsed) in self.0.iter().zip(parsed) {
            match parsed {
                Ok(sites) => {
                    let label = format!("sites_dir/{name}");
                    raw.site_files.push((label, raw.sites.len(), sites.len()));
                    raw.sites.extend(sites);
                }
                Err(e) => errs.push(e),
            }
        }
        match errs.is_empty() {
            true => Ok(()),
            false => Err(ConfigErrors(errs)),
        }
    }
}

/// The site files of `dir`, by name: (file name, path).
fn list(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e));
        // `metadata` follows a symlink (a `sites-enabled` style link to a file counts).
        if ours && !name.starts_with('.') && std::fs::metadata(entry.path())?.is_file() {
            files.push((name, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// One site file: a YAML (or, named `*.json`, JSON) list of sites (an empty file holds none).
fn parse_file(name: &str, text: &str) -> Result<Vec<RawSite>, ConfigError> {
    let label = format!("sites_dir/{name}");
    let sites: Option<Vec<RawSite>> = if text.trim().is_empty() {
        None
    } else if name.ends_with(".json") {
        let mut de = serde_json::Deserializer::from_str(text);
        let sites = serde_path_to_error::deserialize(&mut de).map_err(|e| located(&label, e))?;
        // Nothing may follow the list (serde_json's own `from_str` checks this too).
        de.end().map_err(|e| ConfigError {
            path: label.clone(),
            message: e.to_string(),
        })?;
        sites
    } else {
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| located(&label, e))?
    };
    Ok(sites.unwrap_or_default())
}

/// A parse error of the file `label` at its path inside the file.
fn located<E: std::fmt::Display>(label: &str, e: serde_path_to_error::Error<E>) -> ConfigError {
    let inner = e.path().to_string();
    let message = super::error::without_values(&e.into_inner().to_string());
    // serde_yaml starts a nested error with its own path from the file's root
    // (".[1]: unknown field"): name the file there too, as `sites[1]: ` does.
    let message = match message.strip_prefix('.') {
        Some(rest) if rest.starts_with('[') => format!("{label}{rest}"),
        _ => message,
    };
    let path = match inner.as_str() {
        "." => label.to_string(),
        p if p.starts_with('[') => format!("{label}{p}"),
        p => format!("{label}.{p}"),
    };
    ConfigError { path, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn raw_with(dir: &Path) -> RawConfig {
        let yaml = format!(
            "server: {{ listen: [{{ addr: \"127.0.0.1:0\" }}] }}\nsites:\n  - {{ id: main, tier: free }}\nsites_dir: \"{}\"\n",
            dir.display()
        );
        super::super::parse(&yaml).unwrap()
    }

    #[test]
    fn files_are_read_in_name_order_after_sites() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "b.yml",
            "- { id: b1, tier: free }\n- { id: b2, tier: free }\n",
        );
        write(dir.path(), "a.yaml", "- { id: a1, tier: free }\n");
        write(dir.path(), "empty.yaml", "# none yet\n");
        write(dir.path(), ".hidden.yaml", "- { id: hidden, tier: free }\n");
        write(dir.path(), "notes.txt", "not YAML [");
        std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        write(dir.path(), "c.data", "- { id: c1, tier: free }\n");
        std::os::unix::fs::symlink(dir.path().join("c.data"), dir.path().join("c.yaml")).unwrap();
        let mut raw = raw_with(dir.path());
        expand(&mut raw).unwrap();
        let ids: Vec<_> = raw.sites.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["main", "a1", "b1", "b2", "c1"]);
        assert_eq!(raw.site_path(0), "sites[0]");
        assert_eq!(raw.site_path(1), "sites_dir/a.yaml[0]");
        assert_eq!(raw.site_path(3), "sites_dir/b.yml[1]");
        assert_eq!(raw.site_path(4), "sites_dir/c.yaml[0]");
        // A site appended later (the admin API's) is not in any file.
        assert_eq!(raw.site_path(5), "sites[5]");
    }

    #[test]
    fn every_broken_file_is_named_with_its_yaml_path() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.yaml",
            "- { id: a1, tier: free }\n- { id: a2, colour: red }\n",
        );
        write(dir.path(), "b.yaml", "sites: [");
        write(dir.path(), "c.yaml", "{ id: c1 }\n");
        let mut raw = raw_with(dir.path());
        let errs = expand(&mut raw).unwrap_err().to_string();
        assert!(
            errs.contains("sites_dir/a.yaml[1].colour: sites_dir/a.yaml[1]: unknown field"),
            "{errs}"
        );
        assert!(errs.contains("sites_dir/b.yaml: "), "{errs}");
        assert!(
            errs.contains("sites_dir/c.yaml: invalid type: map"),
            "{errs}"
        );
        let mut raw = raw_with(&dir.path().join("missing"));
        let errs = expand(&mut raw).unwrap_err().to_string();
        assert!(errs.starts_with("sites_dir: cannot read "), "{errs}");
    }

    #[test]
    fn json_files_are_site_lists_too_with_their_paths_named() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.json",
            r#"[{"id": "j1", "tier": "free"}, {"id": "j2", "tier": "free"}]"#,
        );
        write(dir.path(), "b.yaml", "- { id: y1, tier: free }\n");
        write(dir.path(), "c.json", " \n");
        let mut raw = raw_with(dir.path());
        expand(&mut raw).unwrap();
        let ids: Vec<_> = raw.sites.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["main", "j1", "j2", "y1"]);
        assert_eq!(raw.site_path(2), "sites_dir/a.json[1]");

        write(
            dir.path(),
            "a.json",
            r#"[{"id": "j1", "tier": "free"}, {"id": "j2", "colour": "red"}]"#,
        );
        write(dir.path(), "c.json", r#"[{"id": "c1", "tier": "free"}] ["#);
        write(dir.path(), "d.json", r#"{"id": "d1"}"#);
        let mut raw = raw_with(dir.path());
        let errs = expand(&mut raw).unwrap_err().to_string();
        assert!(
            errs.contains("sites_dir/a.json[1].colour: unknown field `colour`"),
            "{errs}"
        );
        assert!(
            errs.contains("sites_dir/c.json: trailing characters"),
            "{errs}"
        );
        assert!(
            errs.contains("sites_dir/d.json: invalid type: map"),
            "{errs}"
        );
    }

    #[test]
    fn many_files_parse_in_parallel_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for f in 0..40 {
            let sites: String = (0..50)
                .map(|i| format!("- {{ id: s{f}-{i}, tier: free }}\n"))
                .collect();
            write(dir.path(), &format!("{f:03}.yaml"), &sites);
        }
        let mut raw = raw_with(dir.path());
        expand(&mut raw).unwrap();
        assert_eq!(raw.sites.len(), 1 + 40 * 50);
        assert_eq!(raw.sites[1 + 7 * 50 + 3].id, "s7-3");
        assert_eq!(raw.site_path(1 + 7 * 50 + 3), "sites_dir/007.yaml[3]");
    }
}
