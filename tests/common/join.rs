//! Membership changes: clusters with extra flags, new members that join a
//! running cluster (after the test ran `etcdctl member add`), a member
//! restarted on another peer port (after `etcdctl member update`), and
//! waiting for a member that was removed to exit on its own.
//!
//! Every process is started through the parent module's `spawn`, so it is in
//! the registry, dies with the test process, and is killed on `Drop`.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::{free_port, registry, Kind, Server, NEXT_ID};

/// A member that is about to join: its name and the ports it will use,
/// chosen before `etcdctl member add NAME --peer-urls=PEER_URL`.
#[derive(Debug, Clone)]
pub struct NewMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
}

impl NewMember {
    /// `name` on fresh free client and peer ports.
    pub fn new(name: &str) -> NewMember {
        NewMember {
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
        }
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `NAME=PEER_URL`, this member's `--initial-cluster` entry.
    pub fn initial_cluster_entry(&self) -> String {
        format!("{}={}", self.name, self.peer_url())
    }
}

/// `--initial-cluster` for a member joining `members` (the running ones, as
/// `name=peer URL`) plus `new`.
pub fn initial_cluster_with(members: &[&Server], new: &NewMember) -> String {
    members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .chain(std::iter::once(new.initial_cluster_entry()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A `Server` value that is not started yet. The one place outside
/// `mod.rs` that builds the struct (restore.rs and proxy.rs use it too), so
/// a new field in `Server` needs one change here.
pub(super) fn unstarted(
    kind: Kind,
    name: &str,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    extra_args: Vec<String>,
) -> Server {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-member-", kind.name()))
        .tempdir()
        .expect("temp dir");
    Server {
        kind,
        id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        name: name.to_string(),
        client_port,
        peer_port,
        dir,
        child: None,
        extra_args,
        initial_cluster: Some(initial_cluster),
    }
}

impl Server {
    /// Like `Server::cluster`, with extra flags (e.g. `--snapshot-count=1000`)
    /// for every member, kept across restarts.
    pub fn cluster_with(kind: Kind, n: usize, extra_args: &[&str]) -> Vec<Server> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut members: Vec<Server> = ports
            .into_iter()
            .enumerate()
            .map(|(i, (client_port, peer_port))| {
                let mut s = unstarted(
                    kind,
                    &format!("m{i}"),
                    client_port,
                    peer_port,
                    initial.clone(),
                    extra.clone(),
                );
                s.spawn();
                s
            })
            .collect();
        for m in &mut members {
            m.wait_ready();
        }
        members
    }

    /// Starts `new` as a member joining a running cluster — the test has
    /// already announced it with `etcdctl member add` (as a voter or a
    /// learner) — with `--initial-cluster-state=existing` and
    /// `--initial-cluster=initial_cluster` (every member including `new`),
    /// the harness's other flags, then `extra_args`; waits until it answers
    /// `Status` with a leader (learners do too).
    pub fn join(kind: Kind, new: &NewMember, initial_cluster: &str, extra_args: &[&str]) -> Server {
        let mut s = Server::join_spawn(kind, new, initial_cluster, extra_args);
        s.wait_ready();
        s
    }

    /// `join` without waiting for readiness.
    pub fn join_spawn(
        kind: Kind,
        new: &NewMember,
        initial_cluster: &str,
        extra_args: &[&str],
    ) -> Server {
        let mut extra = vec!["--initial-cluster-state=existing".to_string()];
        extra.extend(extra_args.iter().map(|s| s.to_string()));
        let mut s = unstarted(
            kind,
            &new.name,
            new.client_port,
            new.peer_port,
            initial_cluster.to_string(),
            extra,
        );
        s.spawn();
        s
    }

    /// Kills the server (kill -9) and starts it again on the same data dir
    /// and client port, listening for peers on `peer_port` (and advertising
    /// it, with its `--initial-cluster` entry changed to match) — what a
    /// member does after `etcdctl member update ID --peer-urls=...`. Waits
    /// until it is ready.
    pub fn restart_on_peer_port(&mut self, peer_port: u16) {
        self.kill9();
        let old_entry = format!("{}={}", self.name, self.peer_url());
        self.peer_port = peer_port;
        let new_entry = format!("{}={}", self.name, self.peer_url());
        if let Some(ic) = &mut self.initial_cluster {
            *ic = ic
                .split(',')
                .map(|e| {
                    if e == old_entry {
                        new_entry.as_str()
                    } else {
                        e
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
        }
        self.spawn_and_wait();
    }

    /// Starts the members of a cluster (named m0, m1, ...) with flags of
    /// their own for each (`extra[i]` for member i), without waiting for
    /// any of them: some may be meant never to become ready.
    pub fn cluster_spawn_each(kind: Kind, extra: &[&[&str]]) -> Vec<Server> {
        let ports: Vec<(u16, u16)> = extra.iter().map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        ports
            .into_iter()
            .zip(extra)
            .enumerate()
            .map(|(i, ((client_port, peer_port), flags))| {
                let mut s = unstarted(
                    kind,
                    &format!("m{i}"),
                    client_port,
                    peer_port,
                    initial.clone(),
                    flags.iter().map(|f| f.to_string()).collect(),
                );
                s.spawn();
                s
            })
            .collect()
    }

    /// Waits until the server answers `Status` with a leader (panics with
    /// its log after the harness's deadline).
    pub fn await_ready(&mut self) {
        self.wait_ready();
    }

    /// Kills the server (kill -9) and starts it again on the same data dir
    /// and ports, without waiting for it to be ready (it may be meant to
    /// fail).
    pub fn restart_no_wait(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Waits up to `within` for the server to exit on its own (e.g. after it
    /// was removed from the cluster); its exit status, or `None` if it is
    /// still running then (it is left running) or was not running at all.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let status = self.child.as_mut()?.try_wait();
            match status {
                Ok(Some(s)) => {
                    self.child = None;
                    registry().lock().unwrap().remove(&self.id);
                    return Some(s);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => return None,
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        }
    }
}
