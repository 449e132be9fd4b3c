//! Who may read the spool: its owner only. Mail, records and tokens are private, so every
//! folder the relay makes is 0700 and every file 0600, set at creation (never left to the
//! umask). Folders an older version made 0755 are tightened when the spool is opened. This
//! module never chmods a folder it did not name (such as `queue.dir` itself, which an admin may
//! have pointed at a shared directory).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use tracing::{info, warn};

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Options that create a file readable by its owner only. Callers add `write`, `create` etc.
pub fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates `dir` and any missing parents as 0700. An existing folder is left as it is.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Creates `dir` as 0700, or tightens it to 0700 when it exists and is ours; says so in a
/// log line. A folder owned by someone else is only warned about: changing it is their call.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    create_private_dir(dir)?;
    let meta = fs::metadata(dir)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & !DIR_MODE == 0 {
        return Ok(());
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        warn!(dir = %dir.display(), mode = %format!("{mode:04o}"), owner = meta.uid(),
            "spool folder is readable by others and not ours to tighten");
        return Ok(());
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))?;
    info!(dir = %dir.display(), "tightened spool folder from {mode:04o} to 0700: mail is for its owner only");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestResult;
    use std::io::Write as _;

    #[test]
    fn made_private_whatever_the_umask_and_old_folders_tightened() -> TestResult {
        let dir = tempfile::tempdir()?;
        // SAFETY: umask(2) cannot fail; the old mask is restored below.
        let old = unsafe { libc::umask(0) };
        let nested = dir.path().join("a/b");
        create_private_dir(&nested)?;
        let file = dir.path().join("f");
        private_file()
            .write(true)
            .create_new(true)
            .open(&file)?
            .write_all(b"x")?;
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode(&dir.path().join("a"))?, 0o700);
        assert_eq!(mode(&nested)?, 0o700);
        assert_eq!(mode(&file)?, 0o600);

        fs::set_permissions(&nested, fs::Permissions::from_mode(0o755))?;
        private_dir(&nested)?;
        assert_eq!(mode(&nested)?, 0o700);
        Ok(())
    }
}
