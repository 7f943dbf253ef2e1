//! The node's identity on disk: `node_id` and `node_token` in
//! `STATE_DIR/identity`, as `key=value` lines, owner-only (0600), written
//! atomically (temporary file + rename).

use std::path::{Path, PathBuf};

use crate::Error;

/// What the dispatcher gave this node at its first registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub node_id: String,
    pub node_token: String,
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= tolk_protocol::validate::MAX_ID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Identity {
    /// Parses the file's text; `None` when it lacks either key or a value is not an id.
    pub fn parse(text: &str) -> Option<Self> {
        let get =
            |key: &str| text.lines().find_map(|l| l.split_once('=').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_owned()));
        let (node_id, node_token) = (get("node_id")?, get("node_token")?);
        (is_id(&node_id) && is_id(&node_token)).then_some(Self { node_id, node_token })
    }

    pub fn encode(&self) -> String {
        format!("node_id={}\nnode_token={}\n", self.node_id, self.node_token)
    }
}

/// The identity file's path in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity")
}

/// Reads the stored identity; `Ok(None)` when there is none (or it is unreadable garbage).
pub fn load(state_dir: &Path) -> Result<Option<Identity>, Error> {
    let p = path(state_dir);
    match std::fs::read_to_string(&p) {
        Ok(text) => {
            let id = Identity::parse(&text);
            if id.is_none() {
                tracing::warn!(path = %p.display(), "ignoring an identity file that does not parse");
            }
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::State { path: p, source }),
    }
}

/// Stores `id`, replacing any previous one.
pub fn save(state_dir: &Path, id: &Identity) -> Result<(), Error> {
    let err = |source| Error::State { path: state_dir.to_owned(), source };
    std::fs::create_dir_all(state_dir).map_err(err)?;
    let tmp = state_dir.join("identity.tmp");
    write_private(&tmp, id.encode().as_bytes()).map_err(err)?;
    std::fs::rename(&tmp, path(state_dir)).map_err(err)
}

/// Removes the stored identity (the dispatcher no longer knows it).
pub fn forget(state_dir: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path(state_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::State { path: path(state_dir), source: e }),
        _ => Ok(()),
    }
}

#[cfg(unix)]
fn write_private(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(p)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(p, bytes)
}

/// The default state directory: `$XDG_STATE_HOME/tolk-node`, else `~/.local/state/tolk-node`, else `./tolk-node-state`.
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("tolk-node");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/state/tolk-node");
    }
    PathBuf::from("tolk-node-state")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_round_trips_through_its_file_and_can_be_forgotten() {
        let dir = std::env::temp_dir().join(format!("tolk-node-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(load(&dir).unwrap(), None);
        let id = Identity { node_id: "n-abc".into(), node_token: "t0k3n".into() };
        save(&dir, &id).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(id));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(path(&dir)).unwrap().permissions().mode() & 0o777, 0o600);
        }
        forget(&dir).unwrap();
        forget(&dir).unwrap();
        assert_eq!(load(&dir).unwrap(), None);
        std::fs::write(path(&dir), "node_id=bad id\nnode_token=x\n").unwrap();
        assert_eq!(load(&dir).unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
