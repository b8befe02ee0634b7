//! The member's identity in its data dir: which cluster it belongs to and its node id.
//!
//! Written once, when a data dir becomes a member (bootstrap of a new cluster, or joining an
//! existing one), and read on every later start, so a restarted member keeps its cluster id
//! (`X-Etcd-Cluster-Id`) and node id whatever its flags say now. A joining member's id is
//! assigned by the leader from its peer URLs, so it cannot be recomputed from `--name`.
//!
//! Format 1, text (`<data_dir>/identity`):
//!
//! ```text
//! rota-identity 1
//! cluster_id <16 hex>
//! node_id <16 hex>
//! token <hex of the cluster token's bytes>      (optional: absent in older files)
//! crc32 <8 hex of the lines above, newlines included>
//! ```
//!
//! The cluster token is kept here for the same reason as the ids: etcd uses the
//! `--initial-*` flags only when a member starts for the first time, and operators restart
//! members without them. A member that took `--initial-cluster-token` from each start's
//! flags was cut off from its cluster (every peer refused it) when restarted without it.
//!
//! Written to a temp file, fsynced, renamed, directory fsynced.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub(crate) const FILE_NAME: &str = "identity";
const HEADER: &str = "rota-identity 1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub cluster_id: u64,
    pub node_id: u64,
    /// The cluster token; `None` in a file written before it was kept.
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is corrupt: {reason}. It names this member and its cluster: put it back from a backup \
         of the data dir; or, in a cluster, remove this member (rota member rm ID) and add it back \
         (rota member add) with an empty data dir and --initial-cluster-state existing"
    )]
    Corrupt { path: PathBuf, reason: String },
}

impl Identity {
    fn body(&self) -> String {
        let mut body = format!(
            "{HEADER}\ncluster_id {:016x}\nnode_id {:016x}\n",
            self.cluster_id, self.node_id
        );
        if let Some(token) = &self.token {
            body.push_str("token ");
            for byte in token.as_bytes() {
                body.push_str(&format!("{byte:02x}"));
            }
            body.push('\n');
        }
        body
    }

    /// The identity stored in `data_dir`, if any.
    pub(crate) fn load(data_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = data_dir.join(FILE_NAME);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            // Bytes that are not text: damage, as a bad checksum is.
            Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                return Err(IdentityError::Corrupt { path, reason: "not text".to_string() })
            }
            Err(source) => return Err(IdentityError::Io { path, source }),
        };
        let corrupt = |reason: &str| IdentityError::Corrupt {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let Some((body, crc_line)) = text.trim_end_matches('\n').rsplit_once('\n') else {
            return Err(corrupt("too short"));
        };
        let body = format!("{body}\n");
        let crc = crc_line
            .strip_prefix("crc32 ")
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .ok_or_else(|| corrupt("no crc32 line"))?;
        if crc != crc32fast::hash(body.as_bytes()) {
            return Err(corrupt("checksum mismatch"));
        }
        let mut lines = body.lines();
        if lines.next() != Some(HEADER) {
            return Err(corrupt("unknown format version"));
        }
        let mut field = |name: &str| {
            lines
                .next()
                .and_then(|line| line.strip_prefix(name))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .ok_or_else(|| corrupt(&format!("bad {name} line")))
        };
        let cluster_id = field("cluster_id")?;
        let node_id = field("node_id")?;
        let token = match lines.next() {
            None => None,
            Some(line) => {
                let hex = line.strip_prefix("token ").ok_or_else(|| corrupt("bad token line"))?;
                Some(decode_hex(hex).ok_or_else(|| corrupt("bad token line"))?)
            }
        };
        Ok(Some(Identity {
            cluster_id,
            node_id,
            token,
        }))
    }

    /// Stores the identity durably in `data_dir`.
    pub(crate) fn store(&self, data_dir: &Path) -> Result<(), IdentityError> {
        let path = data_dir.join(FILE_NAME);
        let temp = data_dir.join(format!("{FILE_NAME}.tmp"));
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        let body = self.body();
        let text = format!("{body}crc32 {:08x}\n", crc32fast::hash(body.as_bytes()));
        let mut file = File::create(&temp).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&temp, &path).map_err(io)?;
        File::open(data_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io)
    }
}

/// The text whose UTF-8 bytes `hex` spells, two lowercase hex digits per byte.
fn decode_hex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_detects_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Identity::load(dir.path()).expect("load"), None);
        let identity = Identity {
            cluster_id: 0x8000_0000_0000_00ff,
            node_id: 42,
            token: Some("prod token/ü".to_string()),
        };
        identity.store(dir.path()).expect("store");
        assert_eq!(Identity::load(dir.path()).expect("load"), Some(identity.clone()));
        // A file from before the token was kept: no token line.
        let old = Identity { token: None, ..identity.clone() };
        old.store(dir.path()).expect("store");
        assert_eq!(Identity::load(dir.path()).expect("load"), Some(old));
        identity.store(dir.path()).expect("store");
        let path = dir.path().join(FILE_NAME);
        let text = fs::read_to_string(&path).expect("read");
        fs::write(
            &path,
            text.replace("node_id 000000000000002a", "node_id 000000000000002b"),
        )
        .expect("write");
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
        // Bytes that are not text are damage too, and the error says what to do.
        fs::write(&path, b"\xff\xfe garbage").expect("write");
        let error = Identity::load(dir.path()).expect_err("not text");
        assert!(matches!(error, IdentityError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("put it back from a backup"), "{error}");
    }
}
