//! A value built from files and rebuilt when one of them changes: how a
//! rotated certificate, key, CA bundle or CRL takes effect without a
//! restart.
//!
//! etcd re-reads its certificate files on every handshake. cairn looks at
//! the files' stamps on every new connection and rebuilds only when one
//! changed. A rebuild that fails (a key written before its certificate, a
//! half-copied file) keeps the last good value and logs once per state of
//! the files, so a rotation in progress never takes the listener down.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::files::FileStamp;
use super::TlsError;

type Build<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

pub struct Reloading<T> {
    /// What is being built, for the logs ("client TLS server config").
    what: String,
    paths: Vec<PathBuf>,
    build: Build<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    /// The files as they were when `current` was built.
    built_from: Vec<Option<FileStamp>>,
    current: Arc<T>,
    /// The files as they were at the last failed rebuild, not retried
    /// until they change again.
    failed_at: Option<Vec<Option<FileStamp>>>,
}

impl<T> Reloading<T> {
    /// Builds the first value; its error is a startup error.
    pub fn new(
        what: impl Into<String>,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, TlsError> {
        let built_from = stamps(&paths);
        let current = Arc::new(build()?);
        Ok(Reloading {
            what: what.into(),
            paths,
            build: Box::new(build),
            state: Mutex::new(State {
                built_from,
                current,
                failed_at: None,
            }),
        })
    }

    /// The value for a new connection: rebuilt first if a file changed.
    pub fn get(&self) -> Arc<T> {
        let now = stamps(&self.paths);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now == state.built_from || state.failed_at.as_ref() == Some(&now) {
            return state.current.clone();
        }
        match (self.build)() {
            Ok(value) => {
                tracing::info!(what = %self.what, files = ?self.paths, "reloaded TLS files");
                state.current = Arc::new(value);
                state.built_from = now;
                state.failed_at = None;
            }
            Err(e) => {
                tracing::warn!(
                    what = %self.what,
                    error = %e,
                    "changed TLS files do not load; still using the previous ones"
                );
                state.failed_at = Some(now);
            }
        }
        state.current.clone()
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<FileStamp>> {
    paths.iter().map(|p| FileStamp::of(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replace(path: &std::path::Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn rebuilds_when_a_file_changes_and_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "1").unwrap();
        let builds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (p, b) = (path.clone(), builds.clone());
        let value = Reloading::new("test", vec![path.clone()], move || {
            b.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let text = std::fs::read_to_string(&p).map_err(|source| TlsError::Read {
                path: p.clone(),
                source,
            })?;
            text.trim().parse::<u32>().map_err(|e| TlsError::BadPem {
                path: p.clone(),
                reason: e.to_string(),
            })
        })
        .unwrap();
        assert_eq!(*value.get(), 1);
        assert_eq!(*value.get(), 1);
        assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 1);

        replace(&path, "2");
        assert_eq!(*value.get(), 2);

        // A broken file keeps the old value, and is not re-read until it
        // changes again.
        replace(&path, "oops");
        assert_eq!(*value.get(), 2);
        let after_failure = builds.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(*value.get(), 2);
        assert_eq!(
            builds.load(std::sync::atomic::Ordering::SeqCst),
            after_failure
        );

        replace(&path, "3");
        assert_eq!(*value.get(), 3);
    }

    #[test]
    fn the_first_build_must_succeed() {
        let err = Reloading::new("test", vec![], || -> Result<u32, TlsError> {
            Err(TlsError::NoRoots("none".into()))
        });
        assert!(err.is_err());
    }
}
