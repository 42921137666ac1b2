//! Pending registrations: in this process, or in Redis with a fleet (a link followed on
//! one node and a poll answered by another). Codes and poll tokens are kept only as
//! SHA-256 hashes; each transition that must happen once (a code used, a secret
//! collected) is one atomic take (`GETDEL` in Redis, a map removal here).

use crate::fleet::conn::Req;
use crate::fleet::Fleet;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// One registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub site_url: String,
    /// SHA-256 (hex) of the poll token.
    pub poll_hash: String,
    /// Unix second it expires at (the code's lifetime, renewed once verified).
    pub expires_at: i64,
    pub status: Status,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Verified,
    Delivered,
}

/// What a verified registration's poll collects (the secret sealed `enc:v1`).
#[derive(Clone, Serialize, Deserialize)]
pub struct Issued {
    pub site_id: String,
    pub key_id: String,
    pub sealed_secret: String,
}

/// The store.
pub enum RegStore {
    Local(Mutex<Local>),
    Redis(Arc<Fleet>),
}

#[derive(Default)]
pub struct Local {
    records: HashMap<String, Record>,
    codes: HashMap<String, (String, i64)>,
    issued: HashMap<String, Issued>,
}

impl Local {
    fn sweep(&mut self, now: i64) {
        self.records.retain(|_, r| r.expires_at > now);
        self.codes.retain(|_, (_, exp)| *exp > now);
        let records = &self.records;
        self.issued.retain(|id, _| records.contains_key(id));
    }
}

/// The store was unreachable (Redis down).
#[derive(Debug)]
pub struct Unavailable;

fn down(_: crate::fleet::RedisDown) -> Unavailable {
    Unavailable
}

/// `SET key value EXAT until`.
async fn set_until(f: &Fleet, key: String, value: &str, until: i64) -> Result<(), Unavailable> {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value).arg("EXAT").arg(until);
    f.redis
        .call("registration", Req::Cmd(&cmd))
        .await
        .map_err(down)
}

/// `GET` (or `GETDEL`) a JSON value; `None` when absent (or unreadable).
async fn read_json<T: serde::de::DeserializeOwned>(
    f: &Fleet,
    verb: &str,
    key: String,
) -> Result<Option<T>, Unavailable> {
    let cmd = redis::cmd(verb).arg(key).clone();
    let text: Option<String> = f
        .redis
        .call("registration", Req::Cmd(&cmd))
        .await
        .map_err(down)?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

impl RegStore {
    fn key(fleet: &Fleet, kind: &str, id: &str) -> String {
        format!("{}g{kind}:{{{id}}}", fleet.settings().key_prefix)
    }

    /// Registrations pending or verified but not collected, when counted here (a fleet's
    /// are bounded per node by the caller).
    pub fn local_len(&self, now: i64) -> usize {
        match self {
            RegStore::Local(m) => {
                let mut l = m.lock();
                l.sweep(now);
                l.records.len()
            }
            RegStore::Redis(_) => 0,
        }
    }

    /// Store a new registration and its code (hashed), both until `rec.expires_at`.
    pub async fn put(&self, id: &str, code_hash: &str, rec: &Record) -> Result<(), Unavailable> {
        match self {
            RegStore::Local(m) => {
                let mut l = m.lock();
                l.records.insert(id.to_string(), rec.clone());
                l.codes
                    .insert(code_hash.to_string(), (id.to_string(), rec.expires_at));
                Ok(())
            }
            RegStore::Redis(f) => {
                // The code first: a record without its code can never be verified.
                let text = serde_json::to_string(rec).unwrap_or_default();
                set_until(f, Self::key(f, "c", code_hash), id, rec.expires_at).await?;
                set_until(f, Self::key(f, "r", id), &text, rec.expires_at).await
            }
        }
    }

    /// Use a code: the registration id it was for, once; `None` if unknown, used or expired.
    pub async fn take_code(
        &self,
        code_hash: &str,
        now: i64,
    ) -> Result<Option<String>, Unavailable> {
        match self {
            RegStore::Local(m) => {
                let mut l = m.lock();
                l.sweep(now);
                Ok(l.codes.remove(code_hash).map(|(id, _)| id))
            }
            RegStore::Redis(f) => {
                let cmd = redis::cmd("GETDEL")
                    .arg(Self::key(f, "c", code_hash))
                    .clone();
                f.redis
                    .call("registration", Req::Cmd(&cmd))
                    .await
                    .map_err(down)
            }
        }
    }

    pub async fn get(&self, id: &str, now: i64) -> Result<Option<Record>, Unavailable> {
        match self {
            RegStore::Local(m) => {
                let mut l = m.lock();
                l.sweep(now);
                Ok(l.records.get(id).cloned())
            }
            RegStore::Redis(f) => read_json(f, "GET", Self::key(f, "r", id)).await,
        }
    }

    /// Replace a registration's record (its status moved on).
    pub async fn set(&self, id: &str, rec: &Record) -> Result<(), Unavailable> {
        match self {
            RegStore::Local(m) => {
                m.lock().records.insert(id.to_string(), rec.clone());
                Ok(())
            }
            RegStore::Redis(f) => {
                let text = serde_json::to_string(rec).unwrap_or_default();
                set_until(f, Self::key(f, "r", id), &text, rec.expires_at).await
            }
        }
    }

    /// Keep what a verified registration's poll collects.
    pub async fn issue(&self, id: &str, issued: &Issued, until: i64) -> Result<(), Unavailable> {
        match self {
            RegStore::Local(m) => {
                m.lock().issued.insert(id.to_string(), issued.clone());
                Ok(())
            }
            RegStore::Redis(f) => {
                let text = serde_json::to_string(issued).unwrap_or_default();
                set_until(f, Self::key(f, "s", id), &text, until).await
            }
        }
    }

    /// Collect it: once.
    pub async fn collect(&self, id: &str) -> Result<Option<Issued>, Unavailable> {
        match self {
            RegStore::Local(m) => Ok(m.lock().issued.remove(id)),
            RegStore::Redis(f) => read_json(f, "GETDEL", Self::key(f, "s", id)).await,
        }
    }
}
