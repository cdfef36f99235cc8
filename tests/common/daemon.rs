//! A supervised process started from a command line the test builds itself
//! (a deploy file's `command:` or `ExecStart=`), optionally with an
//! environment of its own (`env_clear` + the given variables, as systemd
//! runs a service), its stdout and stderr in a log file in a temp dir that
//! also holds its data.
//!
//! Started through the parent module's `spawn_child` and registry, so it dies
//! with the test process and is killed on `Drop`; a `Drop` during a panic
//! first prints the end of its log, so a failing test shows what every member
//! said.

use std::ffi::c_int;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{clear_etcd_env, log_tail, registry, spawn_child, NEXT_ID};

/// How many log lines a panicking test prints per daemon.
const LOG_LINES_ON_PANIC: usize = 80;

pub struct Daemon {
    id: u64,
    pub name: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    /// A daemon not started yet, with a fresh temp dir (for its data and
    /// its log).
    pub fn new(name: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix(&format!("cairn-deploy-{name}-"))
            .tempdir()
            .expect("temp dir");
        Daemon {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            dir,
            child: None,
        }
    }

    /// The daemon's own temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Starts `argv[0]` with `argv[1..]`, in `cwd`. With `env`, the process
    /// gets exactly those variables (and nothing inherited); without, it
    /// inherits the test's environment minus `ETCD*`.
    pub fn start(&mut self, argv: &[String], env: Option<&[(String, String)]>, cwd: &Path) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open daemon log");
        let mut header = log.try_clone().unwrap();
        let env_text = env
            .map(|vars| {
                vars.iter()
                    .map(|(k, v)| format!("{k}={v} "))
                    .collect::<String>()
            })
            .unwrap_or_default();
        let _ = writeln!(header, "=== {env_text}{}", argv.join(" "));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        match env {
            Some(vars) => {
                cmd.env_clear();
                cmd.envs(vars.iter().map(|(k, v)| (k, v)));
            }
            None => clear_etcd_env(&mut cmd),
        }
        let child = spawn_child(cmd).unwrap_or_else(|e| panic!("spawn {}: {e}", argv[0]));
        registry()
            .lock()
            .unwrap()
            .insert(self.id, (child.id(), self.dir.path().to_path_buf()));
        self.child = Some(child);
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its exit status if it has exited (reaped), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        registry().lock().unwrap().remove(&self.id);
        Some(status)
    }

    /// Sends `signal` and waits up to `within` for the process to exit:
    /// its exit status and how long it took; `Err` when it still ran
    /// then (it is killed).
    pub fn signal_and_wait(
        &mut self,
        signal: c_int,
        within: Duration,
    ) -> Result<(ExitStatus, Duration), String> {
        let pid = self
            .pid()
            .ok_or_else(|| format!("{} is not running", self.name))?;
        let start = Instant::now();
        if unsafe { super::kill(pid as c_int, signal) } != 0 {
            return Err(format!(
                "kill({pid}, {signal}): {}",
                std::io::Error::last_os_error()
            ));
        }
        loop {
            if let Some(status) = self.exited() {
                return Ok((status, start.elapsed()));
            }
            if start.elapsed() > within {
                self.kill9();
                return Err(format!(
                    "{} still running {within:?} after signal {signal}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap. The temp dir stays until the `Daemon` is dropped.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        registry().lock().unwrap().remove(&self.id);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last {LOG_LINES_ON_PANIC} log lines of {} ({}) -----\n{}\n----- end of {} -----",
                self.name,
                self.log_path().display(),
                self.log_tail(LOG_LINES_ON_PANIC),
                self.name
            );
        }
        self.kill9();
    }
}
