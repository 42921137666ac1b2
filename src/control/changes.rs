//! What the admin API changed, as data: one record per site, applied on top of the YAML's
//! `sites:` before the config is validated. The YAML stays the base (GitOps): a site the
//! API created is added; a field the API set (tier, routes, CORS origins, disabled) wins
//! over the YAML's value for that field; keys the API added are appended and keys it
//! removed are dropped, whichever of the two defined them. A record of a site that is
//! in neither (a YAML site deleted since) is kept but has no effect.

use crate::config::raw::{RawConfig, RawKey, RawSite};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Every change made through the API, with the version it was stored under (each
/// stored change adds one; a node applies a version it has not seen).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    pub version: u64,
    #[serde(default)]
    pub sites: BTreeMap<String, SiteChange>,
}

/// The API's changes to one site.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteChange {
    /// Created through the API (not in the YAML when it was made).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_origins: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Keys added: secrets sealed `enc:v1` for their place, bearer keys as hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<StoredKey>,
    /// Key ids removed (from the YAML's keys or the API's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_keys: Vec<String>,
}

/// A key added through the API, as stored: never a plain secret.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    pub id: String,
    pub auth: String,
    /// `enc:v1:…` sealed for `sites/<site>/keys/<key>` (hmac keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// `sha256:<hex>` (bearer keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredKey({}, {}, [REDACTED])", self.id, self.auth)
    }
}

impl StoredKey {
    fn raw(&self) -> RawKey {
        RawKey {
            id: self.id.clone(),
            auth: Some(self.auth.clone()),
            secret: self.secret.clone(),
            hash: self.hash.clone(),
            expires_at: self.expires_at.clone(),
        }
    }
}

impl Changes {
    /// Apply to the YAML's sites, in place. Returns the ids of records that had no site
    /// to apply to.
    pub fn apply(&self, raw: &mut RawConfig) -> Vec<String> {
        // One pass to index the YAML's sites: a lookup per record, not a scan (tens of
        // thousands of registered sites made every change cost seconds).
        let mut at: HashMap<String, usize> = HashMap::with_capacity(raw.sites.len());
        for (i, s) in raw.sites.iter().enumerate() {
            // The first of a duplicated id (validation names the duplicate).
            at.entry(s.id.clone()).or_insert(i);
        }
        let mut dormant = vec![];
        for (id, ch) in &self.sites {
            let i = match at.get(id) {
                Some(&i) => i,
                None if ch.created => {
                    // Named in errors as made through the API, not as `sites[N]` of a
                    // list the YAML does not have.
                    let label = format!("{}\"{id}\"", crate::config::raw::API_SITE);
                    raw.site_files.push((label, raw.sites.len(), 1));
                    raw.sites.push(RawSite {
                        id: id.clone(),
                        tier: String::new(),
                        routes: None,
                        cors_origins: None,
                        pii: None,
                        keys: vec![],
                        disabled: None,
                    });
                    at.insert(id.clone(), raw.sites.len() - 1);
                    raw.sites.len() - 1
                }
                None => {
                    dormant.push(id.clone());
                    continue;
                }
            };
            ch.apply_to(&mut raw.sites[i]);
        }
        dormant
    }

    /// The site's record, made if missing.
    pub fn site_mut(&mut self, id: &str) -> &mut SiteChange {
        self.sites.entry(id.to_string()).or_default()
    }
}

impl SiteChange {
    fn apply_to(&self, site: &mut RawSite) {
        if let Some(t) = &self.tier {
            site.tier = t.clone();
        }
        if let Some(r) = &self.routes {
            site.routes = Some(r.clone());
        }
        if let Some(c) = &self.cors_origins {
            site.cors_origins = Some(c.clone());
        }
        if let Some(d) = self.disabled {
            site.disabled = Some(d);
        }
        site.keys.retain(|k| !self.removed_keys.contains(&k.id));
        for k in &self.keys {
            if !self.removed_keys.contains(&k.id) {
                site.keys.retain(|y| y.id != k.id);
                site.keys.push(k.raw());
            }
        }
    }
}

impl Changes {
    /// What of `next` takes something away, on top of `self` (the changes in force, whose
    /// version it keeps: `next` itself has not applied): sites disabled, keys removed or
    /// replaced, created sites gone. A node that cannot build all of `next` (its YAML lacks
    /// a tier a new site names, or a master key a new secret is sealed with) still applies
    /// these: a key revoked through another node must not keep working here.
    pub fn revocations(&self, next: &Changes) -> Changes {
        let mut out = self.clone();
        out.sites
            .retain(|id, c| !c.created || next.sites.contains_key(id));
        for (id, now) in &mut out.sites {
            let Some(n) = next.sites.get(id) else {
                continue;
            };
            if n.disabled == Some(true) {
                now.disabled = Some(true);
            }
            for k in &n.removed_keys {
                if !now.removed_keys.contains(k) {
                    now.removed_keys.push(k.clone());
                }
            }
            now.keys.retain(|k| n.keys.contains(k));
        }
        for (id, n) in &next.sites {
            if out.sites.contains_key(id) || n.created {
                continue;
            }
            let taken = SiteChange {
                disabled: (n.disabled == Some(true)).then_some(true),
                removed_keys: n.removed_keys.clone(),
                ..SiteChange::default()
            };
            if taken != SiteChange::default() {
                out.sites.insert(id.clone(), taken);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml_sites: &str) -> RawConfig {
        crate::config::parse(&format!(
            "server: {{ listen: [{{ addr: \"127.0.0.1:1\" }}] }}\nsites: {yaml_sites}\n"
        ))
        .unwrap()
    }

    fn bearer(id: &str) -> StoredKey {
        StoredKey {
            id: id.into(),
            auth: "bearer".into(),
            secret: None,
            hash: Some(format!("sha256:{}", "ab".repeat(32))),
            expires_at: None,
        }
    }

    #[test]
    fn revocations_take_what_the_next_changes_take_and_add_nothing() {
        let mut now = Changes {
            version: 3,
            ..Changes::default()
        };
        now.site_mut("made").created = true;
        now.site_mut("made").keys = vec![bearer("made.k1"), bearer("made.k2")];
        now.site_mut("gone").created = true;
        now.site_mut("yaml").tier = Some("free".into());
        let mut next = now.clone();
        next.version = 5;
        next.sites.remove("gone");
        next.site_mut("made").keys.retain(|k| k.id != "made.k2");
        next.site_mut("made").removed_keys.push("made.k2".into());
        next.site_mut("yaml").disabled = Some(true);
        next.site_mut("yaml").tier = Some("gold".into());
        next.site_mut("other").removed_keys.push("other.k1".into());
        let fresh = next.site_mut("new");
        fresh.created = true;
        fresh.tier = Some("gold".into());
        fresh.keys.push(bearer("new.k1"));

        let only = now.revocations(&next);
        assert_eq!(
            only.version, 3,
            "the version in force: the next one did not apply"
        );
        assert!(!only.sites.contains_key("gone"), "a created site removed");
        assert!(!only.sites.contains_key("new"), "no site added");
        let made = &only.sites["made"];
        assert_eq!(made.keys, vec![bearer("made.k1")]);
        assert_eq!(made.removed_keys, ["made.k2"]);
        let yaml = &only.sites["yaml"];
        assert_eq!(yaml.disabled, Some(true));
        assert_eq!(yaml.tier.as_deref(), Some("free"), "no other field taken");
        assert_eq!(only.sites["other"].removed_keys, ["other.k1"]);
        // Nothing taken away: the changes in force.
        let same = now.revocations(&now);
        assert_eq!(same.sites, now.sites);
    }

    #[test]
    fn api_fields_win_over_the_yaml_and_created_sites_are_added() {
        let mut r = raw(
            "[{ id: a, tier: free, routes: [/x], keys: [{ id: a.k1, auth: bearer, hash: h }] }]",
        );
        let mut c = Changes::default();
        let a = c.site_mut("a");
        a.tier = Some("pro".into());
        a.disabled = Some(true);
        a.removed_keys.push("a.k1".into());
        a.keys.push(bearer("a.k2"));
        let b = c.site_mut("b");
        b.created = true;
        b.tier = Some("free".into());
        b.keys.push(bearer("b.k1"));
        c.site_mut("gone").tier = Some("free".into());
        assert_eq!(c.apply(&mut r), vec!["gone".to_string()]);
        let a = &r.sites[0];
        assert_eq!(
            (a.tier.as_str(), a.disabled, a.routes.clone()),
            ("pro", Some(true), Some(vec!["/x".to_string()]))
        );
        let ids: Vec<_> = a.keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["a.k2"]);
        assert_eq!(
            (r.sites[1].id.as_str(), r.sites[1].tier.as_str()),
            ("b", "free")
        );
    }

    #[test]
    fn a_removed_key_stays_removed_and_the_record_round_trips() {
        let mut c = Changes::default();
        let s = c.site_mut("a");
        s.created = true;
        s.tier = Some("free".into());
        s.keys.push(bearer("a.k1"));
        s.removed_keys.push("a.k1".into());
        let mut r = raw("[]");
        c.apply(&mut r);
        assert!(r.sites[0].keys.is_empty());
        let text = serde_yaml::to_string(&c).unwrap();
        assert_eq!(serde_yaml::from_str::<Changes>(&text).unwrap(), c);
        assert!(!format!("{:?}", c).contains("abab"));
    }
}
