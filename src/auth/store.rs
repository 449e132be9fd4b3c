//! The token cache file (`microsoft.token_cache`): written atomically with mode 0600 so a crash
//! never leaves half a refresh token, and watched for changes so a `graph-relay auth login` run
//! beside `serve` takes effect without a restart.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// What is cached. The refresh token is as good as a password: the file is 0600.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedTokens {
    /// `delegated` or `client_credentials`.
    pub flow: String,
    pub client_id: String,
    pub access_token: String,
    /// Seconds since the epoch.
    pub expires_at: u64,
    /// The token's whole lifetime in seconds, to refresh it ahead of expiry.
    #[serde(default = "default_lifetime")]
    pub lifetime: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for CachedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedTokens")
            .field("flow", &self.flow)
            .field("client_id", &self.client_id)
            .field("expires_at", &self.expires_at)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish()
    }
}

fn default_lifetime() -> u64 {
    3600
}

/// Reads the cache; `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> io::Result<Option<CachedTokens>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the cache: temp file (0600) → fsync → rename → fsync dir.
pub fn save(path: &Path, tokens: &CachedTokens) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::spool::create_private_dir(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("token"),
        std::process::id()
    ));
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(tokens).map_err(io::Error::other)?)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Notices when any of a set of files (token cache, secret file, certificate) changes.
#[derive(Debug)]
pub struct Watched {
    paths: Vec<PathBuf>,
    last: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl Watched {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let last = paths.iter().map(|p| stamp(p)).collect();
        Watched {
            paths,
            last: Mutex::new(last),
        }
    }

    /// True once after any watched file was created, changed or removed.
    pub fn changed(&self) -> bool {
        let now: Vec<_> = self.paths.iter().map(|p| stamp(p)).collect();
        let mut last = self.last.lock().expect("watch lock");
        if *last == now {
            false
        } else {
            *last = now;
            true
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tokens(rt: &str) -> CachedTokens {
        CachedTokens {
            flow: "delegated".into(),
            client_id: "c".into(),
            access_token: "at".into(),
            expires_at: 1,
            lifetime: 3600,
            refresh_token: Some(rt.into()),
        }
    }

    #[test]
    fn save_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/token.json");
        assert_eq!(load(&path).unwrap(), None);
        save(&path, &tokens("rt-1")).unwrap();
        save(&path, &tokens("rt-2")).unwrap();
        assert_eq!(load(&path).unwrap(), Some(tokens("rt-2")));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1,
            "no temp files left"
        );
        assert!(!format!("{:?}", tokens("secret-rt")).contains("secret-rt"));
    }

    #[test]
    fn watched_reports_each_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let watched = Watched::new(vec![path.clone()]);
        assert!(!watched.changed());
        fs::write(&path, "s1").unwrap();
        assert!(watched.changed());
        assert!(!watched.changed());
        fs::write(&path, "s2-longer").unwrap();
        assert!(watched.changed());
    }
}
