//! Servers started on a data dir built beforehand — by `cairn snapshot
//! restore` or `etcdctl snapshot restore` — instead of a fresh one.
//!
//! [`Server::unstarted`] gives a server with fresh ports and a name, not
//! running, whose [`Server::data_dir`] does not exist yet: restore into it,
//! then [`Server::start_on_data_dir`]. Every process is started through the
//! parent module's `spawn`, so it is in the registry, dies with the test
//! process, and is killed on `Drop`.

use super::{free_port, Kind, Server};

impl Server {
    /// A single member named `name` on fresh ports, not started.
    pub fn unstarted(kind: Kind, name: &str) -> Server {
        let client_port = free_port();
        let peer_port = free_port();
        let initial = format!("{name}=http://127.0.0.1:{peer_port}");
        super::join::unstarted(kind, name, client_port, peer_port, initial, Vec::new())
    }

    /// The members of a new cluster, named `{prefix}0`, `{prefix}1`, ...,
    /// on fresh ports, none started; every one's `--initial-cluster` names
    /// them all.
    pub fn unstarted_cluster(kind: Kind, n: usize, prefix: &str) -> Vec<Server> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("{prefix}{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        ports
            .into_iter()
            .enumerate()
            .map(|(i, (client_port, peer_port))| {
                super::join::unstarted(
                    kind,
                    &format!("{prefix}{i}"),
                    client_port,
                    peer_port,
                    initial.clone(),
                    Vec::new(),
                )
            })
            .collect()
    }

    /// The `--initial-cluster` the server is (or will be) started with.
    pub fn initial_cluster(&self) -> String {
        self.initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, self.peer_url()))
    }

    /// Starts the server on its data dir, which must exist (restored), and
    /// waits until it is ready.
    pub fn start_on_data_dir(&mut self) {
        self.spawn_on_data_dir();
        self.wait_ready();
    }

    /// Starts the server on its existing data dir without waiting (the
    /// members of a cluster are started together; then `await_ready`).
    pub fn spawn_on_data_dir(&mut self) {
        assert!(
            self.data_dir().is_dir(),
            "{}: no data dir at {} to start on",
            self.name,
            self.data_dir().display()
        );
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.spawn();
    }
}
