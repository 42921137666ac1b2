//! Runtime control (SPEC §8.4): changes to sites and keys made through the admin API, kept
//! apart from the YAML and applied on top of it ([`changes`]), persisted in Redis with a
//! fleet or in `admin.state_file` without one ([`store`]), and served by [`api`].
//!
//! Every config the process runs is built here: the YAML text last loaded, with the
//! changes in force applied, validated as one file would be. A SIGHUP re-reads the YAML
//! and keeps the changes; a change keeps the YAML; a change another node stored reaches
//! this one within a second ([`Control::catch_up`]).

pub mod api;
pub mod changes;
pub mod client;
pub mod store;

use crate::config::{self, ConfigErrors, LoadOptions, Runtime};
use crate::error::{ErrorCode, GatewayError};
use crate::state::State;
use changes::Changes;
use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use store::{Store, Stored, Unread, MAX_STATE_BYTES};

/// How often a fleet node checks Redis for changes made through other nodes.
pub const CATCH_UP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// How soon stored changes that did not apply here are tried again.
const CATCH_UP_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// The YAML in force and the API's changes to it.
pub struct Control {
    pub state: Arc<State>,
    opts: LoadOptions,
    /// The YAML last loaded with its site files (the base the changes apply to), and a
    /// count of loads.
    base: Mutex<(Arc<Base>, u64)>,
    /// The changes in force (their version is the one stored).
    changes: Mutex<Changes>,
    /// Where changes persist; `None`: the API is off (no `admin:` and no fleet at start).
    store: Option<Store>,
    /// One change at a time from this node.
    writing: tokio::sync::Mutex<()>,
    /// Builds and installs happen one at a time (a SIGHUP against a change).
    installing: Mutex<()>,
    /// The stored changes were read at least once (a fleet node is not ready before).
    loaded: AtomicBool,
    /// Last version seen in the store (for the catch-up check).
    seen: AtomicU64,
    /// The state file as last read (identity, size, time), to read it only when replaced.
    file_sig: Mutex<Option<store::FileSig>>,
    /// A version that did not apply here, and when to try it again.
    retry: Mutex<Option<(u64, std::time::Instant)>>,
    /// A stored version whose document cannot be used (too large, unparsable): not read
    /// again. `u64::MAX`: none.
    unusable: AtomicU64,
}

/// The YAML text last loaded and its `sites_dir` files as read then. Every build until
/// the next load (a SIGHUP) starts from these: an admin change, a registration or a
/// fleet catch-up puts no site file written meanwhile in force (an unreviewed edit, one
/// half written), and a file broken meanwhile does not make them fail.
#[derive(Debug, Clone)]
pub struct Base {
    text: String,
    files: config::site_files::SiteTexts,
}

impl Base {
    /// Read the site files `text` names; with the config parsed (their sites appended),
    /// for the first build.
    pub fn load(text: String) -> Result<(Base, config::raw::RawConfig), ConfigErrors> {
        let mut raw = config::parse(&text).map_err(|e| ConfigErrors(vec![e]))?;
        let files = config::site_files::read(&raw)?;
        files.append(&mut raw)?;
        Ok((Base { text, files }, raw))
    }
}

/// The config for `base` with `changes` applied, validated as one file.
pub fn build(base: &Base, changes: &Changes, opts: LoadOptions) -> Result<Runtime, ConfigErrors> {
    let mut raw = config::parse(&base.text).map_err(|e| ConfigErrors(vec![e]))?;
    base.files.append(&mut raw)?;
    build_raw(raw, changes, opts)
}

fn build_raw(
    mut raw: config::raw::RawConfig,
    changes: &Changes,
    opts: LoadOptions,
) -> Result<Runtime, ConfigErrors> {
    let dormant = changes.apply(&mut raw);
    let mut rt = config::validate(raw, opts)?;
    for id in dormant {
        rt.warnings.push(format!(
            "admin: changes to site \"{id}\" apply to no site (it is no longer in the YAML)"
        ));
    }
    Ok(rt)
}

/// Read a YAML file as text (bounded).
pub fn read_yaml(path: &Path) -> Result<String, String> {
    config::read_text_bounded(path, config::MAX_CONFIG_BYTES)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The config to start with: the YAML, and without a fleet the state file's changes
/// (read now: a site disabled through the API must not serve for a moment at start).
/// With a fleet the changes come from Redis once it answers; the node is not ready before.
pub fn load_at_start(
    text: String,
    opts: LoadOptions,
) -> Result<(Runtime, Changes, Arc<Base>), String> {
    let (base, raw) = Base::load(text).map_err(|e| e.to_string())?;
    let base = Arc::new(base);
    let yaml_only = build_raw(raw, &Changes::default(), opts).map_err(|e| e.to_string())?;
    let Some(file) = state_file(&yaml_only) else {
        return Ok((yaml_only, Changes::default(), base));
    };
    let changes = store::load_file(&file)?;
    if changes.sites.is_empty() {
        return Ok((yaml_only, changes, base));
    }
    let rt = build(&base, &changes, opts)
        .map_err(|e| format!("the config with the changes in {}:\n{e}", file.display()))?;
    Ok((rt, changes, base))
}

/// Where changes persist without a fleet: `admin.state_file`, or its default when only
/// `registration:` makes sites. `None` with a fleet (Redis holds them) or with neither.
fn state_file(rt: &Runtime) -> Option<std::path::PathBuf> {
    if rt.fleet.is_some() {
        return None;
    }
    match (&rt.admin, &rt.registration) {
        (Some(a), _) => Some(a.state_file.clone()),
        (None, Some(_)) => Some(config::validate::admin::DEFAULT_STATE_FILE.into()),
        (None, None) => None,
    }
}

impl Control {
    pub fn new(state: Arc<State>, base: Arc<Base>, changes: Changes, opts: LoadOptions) -> Control {
        let rt = state.runtime.load();
        let store = match &state.fleet {
            Some(f) => Some(Store::Redis(f.clone())),
            None => state_file(&rt).map(Store::File),
        };
        let file = matches!(store, Some(Store::File(_)) | None);
        Control {
            seen: AtomicU64::new(changes.version),
            state: state.clone(),
            opts,
            base: Mutex::new((base, 0)),
            changes: Mutex::new(changes),
            store,
            writing: tokio::sync::Mutex::new(()),
            installing: Mutex::new(()),
            loaded: AtomicBool::new(file),
            file_sig: Mutex::new(None),
            retry: Mutex::new(None),
            unusable: AtomicU64::new(u64::MAX),
        }
    }

    /// Whether the changes stored in Redis have been read (always, without a fleet).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Ready for traffic as far as site changes go: read, or Redis tried and found down
    /// (the node then serves its YAML's sites until Redis answers, and says so).
    pub fn is_ready(&self) -> bool {
        self.is_loaded()
            || self
                .state
                .fleet
                .as_ref()
                .is_some_and(|f| f.redis.has_tried() && !f.is_up())
    }

    /// The changes in force.
    pub fn changes(&self) -> Changes {
        self.changes.lock().clone()
    }

    /// SIGHUP: the YAML re-read, the changes kept. A bad file changes nothing.
    pub fn reload(&self, path: &Path) -> Result<(), String> {
        let text = read_yaml(path)?;
        let _one = self.installing.lock();
        let changes = self.changes.lock().clone();
        // The site files are read again here, and only here (and at start).
        let (loaded, raw) = Base::load(text).map_err(|e| e.to_string())?;
        let rt = build_raw(raw, &changes, self.opts).map_err(|e| e.to_string())?;
        let mut base = self.base.lock();
        *base = (Arc::new(loaded), base.1 + 1);
        drop(base);
        self.state.install(rt);
        // A fleet version that did not apply to the old YAML may apply to this one: the
        // next catch-up reads the store again instead of taking it for seen.
        self.seen.store(changes.version, Ordering::Release);
        Ok(())
    }

    /// Install `rt`, built from `changes` on the base of load `base_load`: rebuilt first
    /// if a SIGHUP loaded another base meanwhile (its YAML must not be undone).
    fn install(&self, rt: Runtime, changes: Changes, base_load: u64) -> Result<(), String> {
        let _one = self.installing.lock();
        let base = self.base.lock().clone();
        let rt = if base.1 == base_load {
            rt
        } else {
            build(&base.0, &changes, self.opts).map_err(|e| e.to_string())?
        };
        self.commit(rt, changes);
        Ok(())
    }

    /// Put `rt` and its `changes` in force (the caller holds `installing`).
    fn commit(&self, rt: Runtime, changes: Changes) {
        // The version in force, even a lower one (a Redis that lost its data): compared for
        // equality by `catch_up`, so a lower stored version is applied once, not every poll.
        self.seen.store(changes.version, Ordering::Release);
        *self.changes.lock() = changes;
        self.state.install(rt);
    }

    /// Make one change: `f` edits a copy of the stored changes (read again from Redis in
    /// a fleet), the result is validated with the YAML as one config (an invalid change
    /// is 400 and nothing is stored), stored if nobody stored another version meanwhile
    /// (else done again on that one), and installed.
    pub async fn change<T>(
        &self,
        f: impl Fn(&mut Changes, &Runtime) -> Result<T, GatewayError>,
    ) -> Result<T, GatewayError> {
        let Some(store) = &self.store else {
            return Err(GatewayError::new(
                ErrorCode::Unauthenticated,
                "The admin API is off.",
            ));
        };
        let unavailable = |e: String| {
            GatewayError::new(
                ErrorCode::UpstreamUnavailable,
                "The site store is unavailable.",
            )
            .detail(e)
        };
        let full = || {
            GatewayError::new(
                ErrorCode::Conflict,
                format!(
                    "The site store is full (its document would be over {} MiB): remove sites or keys first.",
                    MAX_STATE_BYTES >> 20
                ),
            )
        };
        let invalid = |e: crate::config::ConfigErrors| {
            GatewayError::bad_request(format!("The change does not validate: {e}"))
        };
        let _w = self.writing.lock().await;
        for _ in 0..5 {
            // The state file may have another writer: the old process during `serve -u`,
            // which takes admin changes until it exits. Read, changed and written under a
            // lock both take, so neither change is lost.
            let _file = match store {
                // `flock` blocks until the other process is done: off the worker thread.
                Store::File(path) => {
                    let path = path.clone();
                    let locked = tokio::task::spawn_blocking(move || store::lock_dir(&path))
                        .await
                        .map_err(|e| unavailable(e.to_string()))?;
                    Some(locked.map_err(unavailable)?)
                }
                Store::Redis(_) => None,
            };
            let current = store.load().await.map_err(|e| unavailable(e.to_string()))?;
            let rt = self.state.runtime.load_full();
            let mut next = current.clone();
            let out = f(&mut next, &rt)?;
            next.version = current.version + 1;
            if let Store::File(path) = store {
                // The build, the write and the install under the install lock, so a SIGHUP
                // cannot land between them
                // (the file would hold a change that memory, on the new YAML, does not).
                let _one = self.installing.lock();
                let built = build(&self.base.lock().0, &next, self.opts).map_err(invalid)?;
                if store::store_file(path, &next).map_err(unavailable)? == Stored::TooLarge {
                    return Err(full());
                }
                self.commit(built, next);
                return Ok(out);
            }
            let base = self.base.lock().clone();
            let built = match build(&base.0, &next, self.opts) {
                Ok(rt) => Some(rt),
                // This node is behind the fleet (the stored changes need what its YAML
                // lacks: a tier another node has) and the change only takes away (a key
                // removed, a site disabled): an emergency revocation must not fail on
                // another site's record. Stored, and its revocations applied here.
                Err(_)
                    if current.revocations(&next).sites == next.sites
                        && build(&base.0, &current, self.opts).is_err() =>
                {
                    None
                }
                Err(e) => return Err(invalid(e)),
            };
            match store
                .store(current.version, &next)
                .await
                .map_err(unavailable)?
            {
                Stored::Yes => {}
                Stored::Raced => continue,
                Stored::TooLarge => return Err(full()),
            }
            let installed = match built {
                Some(built) => self.install(built, next, base.1),
                None => self.revoke_only(&base, &next),
            };
            installed.map_err(|e| {
                GatewayError::new(
                    ErrorCode::Internal,
                    "The change was stored but does not apply here.",
                )
                .detail(e)
            })?;
            return Ok(out);
        }
        Err(GatewayError::new(
            ErrorCode::Conflict,
            "Other changes kept landing first; try again.",
        ))
    }

    /// Read the stored version, and when another node (a fleet's) or another process (the
    /// old one during `serve -u`, which takes admin changes until it exits) stored a newer
    /// one, its changes, and apply them. Called every [`CATCH_UP_INTERVAL`].
    pub async fn catch_up(&self) {
        let Some(store) = &self.store else {
            return;
        };
        let version = match store {
            Store::Redis(fleet) => {
                if !fleet.is_up() {
                    return;
                }
                let Ok(version) = store.version().await else {
                    return;
                };
                if (self.is_loaded() && version == self.seen.load(Ordering::Acquire))
                    || self.waiting(version)
                    || version == self.unusable.load(Ordering::Acquire)
                {
                    return;
                }
                Some(version)
            }
            Store::File(path) => {
                // Read only when the file was replaced (this process's own writes too).
                let sig = store::file_signature(path);
                let mut last = self.file_sig.lock();
                if *last == sig {
                    return;
                }
                *last = sig;
                None
            }
        };
        let _w = self.writing.lock().await;
        let next = match store.load().await {
            Ok(c) => c,
            Err(e @ Unread::Unusable(_)) => {
                // Not read again (up to 16 MiB every half second, loaded or not) nor
                // logged again: the next version stored is. In file mode the file's
                // signature does the same.
                if let Some(v) = version {
                    self.unusable.store(v, Ordering::Release);
                }
                log::error!("admin: cannot use the stored site changes: {e}");
                return;
            }
            Err(e) => {
                log::warn!("admin: cannot read the stored site changes: {e}");
                return;
            }
        };
        if (self.is_loaded() && next.version == self.seen.load(Ordering::Acquire))
            || self.waiting(next.version)
        {
            return;
        }
        let v = next.version;
        let base = self.base.lock().clone();
        let failed = match build(&base.0, &next, self.opts) {
            Ok(rt) => match self.install(rt, next, base.1) {
                Ok(()) => {
                    log::info!("admin: site changes version {v} applied");
                    None
                }
                Err(e) => Some(format!(
                    "admin: the site changes (version {v}) do not apply here:\n{e}"
                )),
            },
            Err(e) => {
                let message = format!(
                    "admin: the site changes (version {v}) do not apply to this node's YAML, keeping the config in force with only their revocations:\n{e}"
                );
                match self.revoke_only(&base, &next) {
                    // Seen, not applied: polled again only after a SIGHUP (`reload` sets
                    // the version in force, which is older), which may take it whole.
                    Ok(()) => {
                        if self.retry.lock().take().is_none_or(|(rv, _)| rv != v) {
                            log::error!("{message}");
                        }
                        self.seen.store(v, Ordering::Release);
                        None
                    }
                    Err(e) => Some(format!(
                        "{message}\nand the revocations do not apply either:\n{e}"
                    )),
                }
            }
        };
        if let Some(message) = failed {
            // Tried again in a while: what failed may be a file the build reads (a
            // `sites_dir` file being rewritten, a `file:` secret), and a revocation must
            // not wait for a SIGHUP. Logged once a version.
            let retry_at = std::time::Instant::now() + CATCH_UP_RETRY;
            if self
                .retry
                .lock()
                .replace((v, retry_at))
                .is_none_or(|(rv, _)| rv != v)
            {
                log::error!("{message}");
            }
            *self.file_sig.lock() = None;
            return;
        }
        *self.retry.lock() = None;
        self.loaded.store(true, Ordering::Release);
    }

    /// A version whose changes did not apply here, not yet due to be tried again.
    fn waiting(&self, version: u64) -> bool {
        matches!(*self.retry.lock(), Some((v, at)) if v == version && std::time::Instant::now() < at)
    }
}

impl Control {
    /// `next` does not build here: apply at least what it takes away (disabled sites,
    /// removed keys) on top of the changes in force.
    fn revoke_only(&self, base: &(Arc<Base>, u64), next: &Changes) -> Result<(), String> {
        let current = self.changes.lock().clone();
        let only = current.revocations(next);
        if only.sites == current.sites {
            return Ok(());
        }
        build(&base.0, &only, self.opts)
            .map_err(|e| e.to_string())
            .and_then(|rt| self.install(rt, only, base.1))?;
        log::warn!(
            "admin: the revocations of site changes version {} applied; the rest waits for a YAML that takes it",
            next.version
        );
        Ok(())
    }
}

/// Keeps a fleet node's changes current: checks Redis every [`CATCH_UP_INTERVAL`].
pub struct CatchUp {
    pub control: Arc<Control>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for CatchUp {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(CATCH_UP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.control.catch_up().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
