//! Outside tools and abilities the tests need (swaks, php + PHPMailer, chromium/chromedriver,
//! openssl, `ip netns`, mounting a tmpfs), and what a test does without one: on a developer's
//! machine it prints "skipped: ..." and passes; with the environment variable `CI` set it fails,
//! because `.ci/run` installs every tool and runs as root, so a missing one there is a broken CI
//! setup that would otherwise pass unnoticed.

use std::path::PathBuf;

/// Where `program` is on PATH.
pub fn find(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// True when `program` is on PATH.
pub fn have(program: &str) -> bool {
    find(program).is_some()
}

/// True when `program` is on PATH; otherwise [`unavailable`] with `why` the test needs it.
#[track_caller]
pub fn require_tool(program: &str, why: &str) -> bool {
    require(
        have(program),
        &format!("`{program}` is not installed ({why})"),
    )
}

/// `available`, after calling [`unavailable`] with `what` when it is false.
#[track_caller]
pub fn require(available: bool, what: &str) -> bool {
    if !available {
        unavailable(what);
    }
    available
}

/// A test, or part of one, cannot run here for `reason`: fails the test when `CI` is set, else
/// prints "skipped: REASON" and returns (the caller then skips). The failure points at the test.
#[track_caller]
pub fn unavailable(reason: &str) {
    if in_ci() {
        panic!("{reason}; failing, not skipping, because CI is set");
    }
    eprintln!("skipped: {reason}");
}

/// `CI` is set to anything but empty, `0` or `false` (CI services set `CI=true`).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// A tmpfs mounted for one test (root only; CI runs as root), unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs with `options` (e.g. `size=256k`, `ro,size=64k`) on the existing folder
    /// `dir`; `None` (after [`unavailable`]) when this machine does not let the test mount one.
    #[track_caller]
    pub fn mount(dir: &std::path::Path, options: &str) -> Option<Tmpfs> {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        require(
            mounted,
            &format!("this machine does not let the test mount a tmpfs ({options})"),
        )
        .then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
