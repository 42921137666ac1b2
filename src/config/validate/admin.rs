//! `admin:` → [`AdminSettings`]: the keys that sign admin API calls, and the state file.

use super::shared::{strong_enough, valid_id, Errors, LoadOptions};
use crate::config::raw::{RawAdmin, RawMasterKey};
use crate::config::runtime::{AdminSettings, ClientKey, KeyAuth, KeyId};
use crate::config::secret::{self, MasterKey};
use std::collections::HashMap;

/// Where API changes persist without a fleet, unless `admin.state_file` says otherwise.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/keygate/sites.yaml";

pub(super) fn validate(
    raw: Option<&RawAdmin>,
    raw_master_keys: &[RawMasterKey],
    master_keys: &HashMap<String, MasterKey>,
    opts: LoadOptions,
    errs: &mut Errors,
) -> Option<AdminSettings> {
    let raw = raw?;
    let mut keys = HashMap::new();
    if raw.keys.is_empty() {
        errs.push("admin.keys", "at least one admin key is needed");
    }
    for (i, k) in raw.keys.iter().enumerate() {
        let p = format!("admin.keys[{i}]");
        if !valid_id(&k.id) {
            errs.push(format!("{p}.id"), format!("\"{}\" is not a valid id", k.id));
        }
        let id = KeyId(k.id.clone());
        if keys.contains_key(&id) {
            errs.push(
                format!("{p}.id"),
                format!("duplicate admin key id \"{}\"", k.id),
            );
            continue;
        }
        let place = format!("admin/keys/{}", k.id);
        match secret::resolve(&k.secret, &place, master_keys, opts.demo)
            .and_then(|s| strong_enough(s, opts))
        {
            Ok(s) => {
                let key = ClientKey::new(id.clone(), 0, KeyAuth::Hmac(s), None);
                keys.insert(id, key);
            }
            Err(m) => errs.push(format!("{p}.secret"), m),
        }
    }
    let state_file = raw
        .state_file
        .clone()
        .unwrap_or_else(|| DEFAULT_STATE_FILE.to_string());
    if state_file.is_empty() {
        errs.push("admin.state_file", "must not be empty");
    }
    let seal = raw_master_keys
        .first()
        .and_then(|m| Some((m.id.clone(), master_keys.get(&m.id)?.clone())));
    Some(AdminSettings {
        keys,
        state_file: state_file.into(),
        seal,
    })
}
