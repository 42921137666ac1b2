//! `sites_dir`: sites in files of their own, for site lists that outgrow one file (the
//! config file is capped at [`MAX_CONFIG_BYTES`], about 100,000 sites) or that are written
//! by another system. Each `*.yaml` / `*.yml` file in the directory (or a symlink to one;
//! not its subdirectories; names starting with `.` are skipped) is a YAML list of sites in the form
//! of `sites:` entries. Their sites follow `sites:`, file by file in name order, and are
//! validated with them; a mistake names the file and the YAML path inside it
//! (`sites_dir/b.yaml[3].tier`). Files are parsed in parallel, one thread per CPU.

use super::error::{ConfigError, ConfigErrors};
use super::files::{read_text_bounded, MAX_CONFIG_BYTES};
use super::raw::{RawConfig, RawSite};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most site files read from one directory.
pub const MAX_SITE_FILES: usize = 10_000;

/// Append the sites of every file in `raw.sites_dir` to `raw.sites` and record where
/// each file's sites are ([`RawConfig::site_path`]). Every file's mistakes are reported.
pub fn expand(raw: &mut RawConfig) -> Result<(), ConfigErrors> {
    let Some(dir) = raw.sites_dir.clone() else {
        return Ok(());
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
    let mut errs = Vec::new();
    for ((name, _), parsed) in files.iter().zip(parse_all(&files)) {
        match parsed {
            Ok(sites) => {
                let label = format!("sites_dir/{name}");
                raw.site_files.push((label, raw.sites.len(), sites.len()));
                raw.sites.extend(sites);
            }
            Err(e) => errs.push(e),
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errs))
    }
}

/// The site files of `dir`, by name: (file name, path).
fn list(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        // `metadata` follows a symlink (a `sites-enabled` style link to a file counts).
        if yaml && !name.starts_with('.') && std::fs::metadata(entry.path())?.is_file() {
            files.push((name, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// Parse every file, on up to one thread per CPU; results in the files' order.
fn parse_all(files: &[(String, PathBuf)]) -> Vec<Result<Vec<RawSite>, ConfigError>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len());
    if threads <= 1 {
        return files.iter().map(|(n, p)| parse_file(n, p)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<Result<Vec<RawSite>, ConfigError>>> =
        files.iter().map(|_| None).collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((name, path)) = files.get(i) else {
                            return done;
                        };
                        done.push((i, parse_file(name, path)));
                    }
                })
            })
            .collect();
        for w in workers {
            let done = w.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            for (i, r) in done {
                out[i] = Some(r);
            }
        }
    });
    out.into_iter().flatten().collect()
}

/// One site file: a YAML list of sites (an empty file holds none).
fn parse_file(name: &str, path: &Path) -> Result<Vec<RawSite>, ConfigError> {
    let label = format!("sites_dir/{name}");
    let text = read_text_bounded(path, MAX_CONFIG_BYTES).map_err(|e| ConfigError {
        path: label.clone(),
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    let de = serde_yaml::Deserializer::from_str(&text);
    let sites: Option<Vec<RawSite>> = serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde_yaml starts a nested error with its own path from the file's root
        // (".[1]: unknown field"): name the file there too, as `sites[1]: ` does.
        let message = match message.strip_prefix('.') {
            Some(rest) if rest.starts_with('[') => format!("{label}{rest}"),
            _ => message,
        };
        let path = match inner.as_str() {
            "." => label.clone(),
            p if p.starts_with('[') => format!("{label}{p}"),
            p => format!("{label}.{p}"),
        };
        ConfigError { path, message }
    })?;
    Ok(sites.unwrap_or_default())
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
        // A site appended later (the admin API's) is not in any file.
        assert_eq!(raw.site_path(4), "sites_dir/c.yaml[0]");
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
