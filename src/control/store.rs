//! Where API changes persist: in Redis with a fleet (every node reads them from there), or
//! in `admin.state_file` without one (written atomically: a temporary file, fsync, rename).

use super::changes::Changes;
use crate::fleet::conn::Req;
use crate::fleet::Fleet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest state document read (file or Redis): about 10,000 sites with a few keys each.
pub const MAX_STATE_BYTES: u64 = 16 << 20;

/// Store the document only if the stored version is still the one the change was made
/// on (another node's change in between: retry on the newer one). One slot in a cluster.
const STORE_SCRIPT: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if cur ~= tonumber(ARGV[1]) then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], cur + 1)
return cur + 1
"#;

static SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(STORE_SCRIPT));

/// The place changes persist.
pub enum Store {
    File(PathBuf),
    Redis(Arc<Fleet>),
}

impl Store {
    /// Where the fleet's document and its version live (one hash tag: one slot).
    fn keys(fleet: &Fleet) -> (String, String) {
        let p = &fleet.settings().key_prefix;
        (
            format!("{p}{{admin}}:sites"),
            format!("{p}{{admin}}:version"),
        )
    }

    /// Read the stored changes (none stored yet: empty, version 0).
    pub async fn load(&self) -> Result<Changes, Unread> {
        match self {
            Store::File(path) => load_file(path).map_err(Unread::Unusable),
            Store::Redis(fleet) => {
                let (doc, _) = Store::keys(fleet);
                // At most one byte over the bound is read (GETRANGE's end is inclusive): a
                // larger document, which only a writer other than keygate can store, is
                // refused without being read whole (Redis allows 512 MB).
                let text: Vec<u8> = call(
                    fleet,
                    Req::Cmd(redis::cmd("GETRANGE").arg(&doc).arg(0).arg(MAX_STATE_BYTES)),
                )
                .await
                .map_err(|_| Unread::Unreachable)?;
                if text.len() as u64 > MAX_STATE_BYTES {
                    return Err(Unread::Unusable(format!(
                        "{doc} is over {MAX_STATE_BYTES} bytes"
                    )));
                }
                if text.is_empty() {
                    return Ok(Changes::default());
                }
                serde_json::from_slice(&text)
                    .map_err(|e| Unread::Unusable(format!("{doc} does not parse: {e}")))
            }
        }
    }

    /// The stored version, without reading the document (a fleet node's check for
    /// changes made through other nodes). A state file's is whatever it holds.
    pub async fn version(&self) -> Result<u64, String> {
        match self {
            Store::File(path) => load_file(path).map(|c| c.version),
            Store::Redis(fleet) => {
                let (_, version) = Store::keys(fleet);
                let v: Option<u64> = call(fleet, Req::Cmd(redis::cmd("GET").arg(&version))).await?;
                Ok(v.unwrap_or(0))
            }
        }
    }

    /// Store `next` (its version one more than `expected`) if the stored version is still
    /// `expected` and the document fits in [`MAX_STATE_BYTES`] (a larger one would be
    /// stored but could never be read back: the next start would fail).
    pub async fn store(&self, expected: u64, next: &Changes) -> Result<Stored, String> {
        match self {
            Store::File(path) => store_file(path, next),
            Store::Redis(fleet) => {
                let (doc, version) = Store::keys(fleet);
                let text = serde_json::to_string(next).map_err(|e| e.to_string())?;
                if !fits(&text) {
                    return Ok(Stored::TooLarge);
                }
                let mut inv = SCRIPT.prepare_invoke();
                inv.key(&doc).key(&version).arg(expected).arg(text);
                let stored: i64 = call(fleet, Req::Script(&inv)).await?;
                Ok(if stored >= 0 {
                    Stored::Yes
                } else {
                    Stored::Raced
                })
            }
        }
    }
}

fn fits(text: &str) -> bool {
    text.len() as u64 <= MAX_STATE_BYTES
}

/// Write `next` to the state file (without a fleet, this process is its only writer), if
/// it fits in [`MAX_STATE_BYTES`].
pub fn store_file(path: &Path, next: &Changes) -> Result<Stored, String> {
    let text = serde_yaml::to_string(next).map_err(|e| e.to_string())?;
    if !fits(&text) {
        return Ok(Stored::TooLarge);
    }
    write_atomically(path, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(Stored::Yes)
}

/// Why [`Store::load`] has no changes to give.
#[derive(Debug)]
pub enum Unread {
    /// Redis did not answer (in time): try again later.
    Unreachable,
    /// The stored document cannot be used (too large, or does not parse): reading the
    /// same version again will not change that.
    Unusable(String),
}

impl std::fmt::Display for Unread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unread::Unreachable => f.write_str("Redis is unreachable"),
            Unread::Unusable(e) => f.write_str(e),
        }
    }
}

/// What [`Store::store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Yes,
    /// Not stored: another node stored a change meanwhile (retry on the newer one).
    Raced,
    /// Not stored: the document would be over [`MAX_STATE_BYTES`].
    TooLarge,
}

/// One admin-store call to Redis (timed and bounded under `admin`).
async fn call<T: redis::FromRedisValue>(fleet: &Fleet, req: Req<'_>) -> Result<T, String> {
    fleet
        .redis
        .call("admin", req)
        .await
        .map_err(|_| "Redis is unreachable".to_string())
}

pub fn load_file(path: &Path) -> Result<Changes, String> {
    match crate::config::read_file_bounded(path, MAX_STATE_BYTES) {
        Ok(bytes) => serde_yaml::from_slice(&bytes)
            .map_err(|e| format!("{} does not parse: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Changes::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The state file's identity, size and time: replaced (by this process or another) when
/// it differs from the last one read.
pub type FileSig = (u64, u64, u64, i64, i64);

pub fn file_signature(path: &Path) -> Option<FileSig> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// An exclusive advisory lock (`flock`) on the state file's directory, held while a
/// change is read, made and written: the file itself is replaced by each write, so it
/// cannot carry the lock. Released when the returned handle is dropped.
pub fn lock_dir(path: &Path) -> Result<std::fs::File, String> {
    let dir = parent(path);
    let locked = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::File::open(dir))
        .and_then(|f| f.lock().map(|()| f));
    locked.map_err(|e| format!("cannot lock {}: {e}", dir.display()))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Write `bytes` to `path` so that a reader (or a crash) sees the old file or the new
/// one, never a part: a temporary file beside it, fsync, rename, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = parent(path);
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map_or("state".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_state_file_is_replaced_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/sites.yaml");
        let store = Store::File(path.clone());
        assert_eq!(store.load().await.unwrap(), Changes::default());
        let mut c = Changes {
            version: 1,
            ..Changes::default()
        };
        c.site_mut("a").disabled = Some(true);
        assert_eq!(store.store(0, &c).await.unwrap(), Stored::Yes);
        assert_eq!(store.load().await.unwrap(), c);
        assert_eq!(store.version().await.unwrap(), 1);
        // No temporary file left beside it.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        std::fs::write(&path, "sites: [").unwrap();
        assert!(store
            .load()
            .await
            .unwrap_err()
            .to_string()
            .contains("does not parse"));
    }

    #[tokio::test]
    async fn a_document_too_large_to_read_back_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sites.yaml");
        let store = Store::File(path.clone());
        let mut small = Changes {
            version: 1,
            ..Changes::default()
        };
        small.site_mut("a").disabled = Some(true);
        assert_eq!(store.store(0, &small).await.unwrap(), Stored::Yes);
        // One site whose routes make the document just over the bound.
        let mut big = small.clone();
        big.version = 2;
        let route = format!("/{}", "r".repeat(1023));
        big.site_mut("b").routes = Some(vec![route; (MAX_STATE_BYTES as usize >> 10) + 1]);
        assert_eq!(store.store(1, &big).await.unwrap(), Stored::TooLarge);
        // The file still holds the last change that fits, and reads back.
        assert_eq!(store.load().await.unwrap(), small);
    }
}
