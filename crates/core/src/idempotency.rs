//! The idempotency table: the first outcome of each keyed request, replayed on repeats.
//!
//! This is the Raft paper's client-session rule, bounded two ways: every record expires
//! (`idempotency_ttl_ms` after it was written) and the table holds at most
//! `idempotency_records_max` records, dropping the one that expires first when full.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::Response;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyTable {
    records: HashMap<String, Record>,
    /// (expires_ms, key), to expire and evict in order.
    by_expiry: BTreeSet<(u64, String)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    fingerprint: u64,
    response: Response,
    expires_ms: u64,
}

pub enum IdempotencyOutcome {
    New,
    Replay(Response),
    Conflict,
}

impl IdempotencyTable {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn lookup(&self, key: &str, fingerprint: u64) -> IdempotencyOutcome {
        match self.records.get(key) {
            None => IdempotencyOutcome::New,
            Some(record) if record.fingerprint == fingerprint => {
                IdempotencyOutcome::Replay(record.response.clone())
            }
            Some(_) => IdempotencyOutcome::Conflict,
        }
    }

    pub fn record(
        &mut self,
        key: String,
        fingerprint: u64,
        response: Response,
        expires_ms: u64,
        records_max: usize,
    ) {
        if let Some(old) = self.records.remove(&key) {
            self.by_expiry.remove(&(old.expires_ms, key.clone()));
        }
        while self.records.len() >= records_max.max(1) {
            let Some((_, oldest)) = self.by_expiry.pop_first() else { break };
            self.records.remove(&oldest);
        }
        self.by_expiry.insert((expires_ms, key.clone()));
        self.records.insert(key, Record { fingerprint, response, expires_ms });
    }

    /// Drops every record whose expiry is at or before `now_ms`.
    pub fn expire_until(&mut self, now_ms: u64) {
        while let Some((expires_ms, _)) = self.by_expiry.first() {
            if *expires_ms > now_ms {
                break;
            }
            if let Some((_, key)) = self.by_expiry.pop_first() {
                self.records.remove(&key);
            }
        }
    }
}
