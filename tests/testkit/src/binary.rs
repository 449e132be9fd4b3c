//! The real `graph-relay serve` as a child process: started on a config file, ready when it
//! prints its `graph-relay ready` line, stopped with SIGTERM (must exit 0) or SIGKILL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use super::relay::read_line_starting_with;

const START: Duration = Duration::from_secs(20);

/// The `graph-relay` binary cargo built for this test run. `env!("CARGO_BIN_EXE_graph-relay")`
/// exists only in graph-relay's own test targets, not in this crate, so it is found next to the
/// running test binary: `target/<profile>/deps/<test>` → `target/<profile>/graph-relay`.
pub fn relay_exe() -> PathBuf {
    let test = std::env::current_exe().expect("path of the running test binary");
    let profile_dir = test
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in target/<profile>/deps", test.display()));
    let exe = profile_dir.join(format!("graph-relay{}", std::env::consts::EXE_SUFFIX));
    assert!(
        exe.is_file(),
        "{} is missing (cargo test builds it)",
        exe.display()
    );
    exe
}

/// `graph-relay --config CONFIG ARGS...` run to its end (the CLI beside a running serve): its exit
/// code (-1 for a signal) and its stdout.
pub fn relay_cli(config: &Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(relay_exe())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run graph-relay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

pub struct RelayProcess {
    child: Child,
    pub smtp: SocketAddr,
    /// The status listener, unless it is off.
    pub status: Option<SocketAddr>,
}

impl RelayProcess {
    /// `graph-relay --config CONFIG serve EXTRA...`, once it is listening.
    pub async fn start(config: &Path, extra: &[&str]) -> RelayProcess {
        Self::start_logging(config, extra, "graph_relay=warn", Stdio::inherit()).await
    }

    /// `start`, with this `RUST_LOG` and its log (stderr) going to `log`.
    pub async fn start_logging(
        config: &Path,
        extra: &[&str],
        level: &str,
        log: impl Into<Stdio>,
    ) -> RelayProcess {
        Self::spawn(Self::command(config, extra, level, log)).await
    }

    /// `start_logging`, with each variable in `env` set (`Some`) or removed (`None`).
    pub async fn start_with_env(
        config: &Path,
        extra: &[&str],
        level: &str,
        log: impl Into<Stdio>,
        env: &[(&str, Option<&str>)],
    ) -> RelayProcess {
        let mut command = Self::command(config, extra, level, log);
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        Self::spawn(command).await
    }

    /// `start`, with the child's umask set first (file modes are checked under a known umask).
    pub async fn start_with_umask(config: &Path, extra: &[&str], umask: u32) -> RelayProcess {
        let mut command = Self::command(config, extra, "graph_relay=warn", Stdio::inherit());
        // SAFETY: umask(2) is async-signal-safe and touches nothing but the child's mask.
        unsafe {
            command.pre_exec(move || {
                libc::umask(umask as libc::mode_t);
                Ok(())
            });
        }
        Self::spawn(command).await
    }

    fn command(config: &Path, extra: &[&str], level: &str, log: impl Into<Stdio>) -> Command {
        let mut command = Command::new(relay_exe());
        command
            .arg("--config")
            .arg(config)
            .arg("serve")
            .args(extra)
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        command
    }

    async fn spawn(mut command: Command) -> RelayProcess {
        let mut child = command.spawn().expect("spawn graph-relay");
        let mut lines =
            tokio::io::BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let ready = read_line_starting_with(&mut lines, "graph-relay ready ", START).await;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        assert!(ready.contains(" status="), "{ready}");
        let smtp = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("smtp="))
            .and_then(|list| list.split(',').next())
            .unwrap_or_else(|| panic!("no smtp= in {ready:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("bad smtp address in {ready:?}: {e}"));
        let status = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("status="))
            .and_then(|addr| addr.parse().ok());
        RelayProcess {
            child,
            smtp,
            status,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("child still running")
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("kill -9");
    }

    /// SIGTERM to this child only; returns its exit status.
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        tokio::time::timeout(START, self.child.wait())
            .await
            .expect("graph-relay exits after SIGTERM")
            .expect("wait for graph-relay")
    }
}
