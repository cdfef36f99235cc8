//! Fault injection for multi-member tests: a TCP proxy in front of every
//! member's peer port, network partitions made with them, and kill -9 /
//! restart of all members at once.
//!
//! # How a partition is made
//!
//! Member i listens for peers on its own port but advertises (in
//! `--initial-advertise-peer-urls` and `--initial-cluster`) the port of its
//! proxy, so every peer connection *into* member i goes through proxy i.
//! Blocking proxy i alone is no partition: member i's own connections to the
//! others go through *their* proxies, and they carry traffic both ways. It
//! depends on the server which way matters: etcd's rafthttp stream readers
//! dial the remote member and receive its messages on that connection, so
//! with only proxy i blocked an etcd follower still receives every write;
//! cairn sends on connections the sender dialled, so with only the others'
//! proxies refusing member i's connections a cairn follower still does (both
//! seen in a scratch test). So every proxy also learns which member opened each
//! connection it accepts: on loopback the connecting socket is listed in
//! `/proc/net/tcp` (local address = the peer address the proxy sees, remote
//! address = the proxy's port) with its inode, and exactly one member process
//! holds a descriptor `socket:[inode]` (the member pids come from the
//! harness's registry, so a restarted member is recognised too).
//! [`isolate`] then stops every connection into member i (at proxy i) and
//! every connection member i opened to another member (at the other
//! proxies): no byte crosses between member i and the rest, in either
//! direction, while the rest talk normally. A connection whose opener cannot
//! be found is treated as coming from an isolated member (fail closed; a
//! message on stderr unless its opener has already closed it).
//!
//! "Stopped" means black-holed, as in a real partition: an open connection
//! stays open but nothing more is forwarded (bytes the proxy has read are
//! held; a chunk already past the gate when `isolate` runs is delivered, like
//! a packet already on the wire); a new connection is accepted but
//! not connected upstream. Nobody gets a FIN or a RST, so the members must
//! notice the partition through their own timeouts. [`heal`] resumes
//! everything — held bytes are delivered and deferred connections are
//! connected upstream, as TCP would after the partition — and an end that
//! gave up meanwhile closes its connection, which then reaches the other end.
//! Only the peer traffic is cut: clients still reach every member's client
//! port directly.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, registry, Kind, Server};

/// A TCP proxy on 127.0.0.1 that forwards to `127.0.0.1:target_port` until
/// it is blocked. Its threads stop when it is dropped.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

struct Shared {
    port: u16,
    target_port: u16,
    /// Registry ids of the cluster's members (index = member number), to
    /// find which member opened a connection; empty for a lone proxy.
    members: Vec<u64>,
    state: Mutex<State>,
    changed: Condvar,
    /// Threads still running (acceptor, per-connection pumps).
    threads: Mutex<usize>,
    threads_done: Condvar,
}

#[derive(Default)]
struct State {
    /// Every connection through this proxy is stopped.
    blocked: bool,
    /// Connections opened by these members are stopped.
    blocked_sources: BTreeSet<usize>,
    stopped: bool,
    next_conn: u64,
    /// Live connections: their sockets (clones), to shut them down when the
    /// proxy is dropped.
    conns: BTreeMap<u64, Vec<TcpStream>>,
    /// Connections accepted so far, by opener.
    openers: BTreeMap<Option<usize>, usize>,
}

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Member(usize),
    /// A lone proxy does not ask.
    NotAsked,
    /// A cluster proxy could not tell: blocked with any blocked source.
    Unknown,
    /// Closed by its opener before the proxy could tell: as `Unknown`.
    Gone,
}

impl State {
    fn passes(&self, source: Source) -> bool {
        if self.blocked {
            return false;
        }
        match source {
            Source::Member(m) => !self.blocked_sources.contains(&m),
            Source::NotAsked => true,
            Source::Unknown | Source::Gone => self.blocked_sources.is_empty(),
        }
    }
}

impl Proxy {
    /// A proxy on a free port forwarding to `target_port`.
    pub fn start(target_port: u16) -> Proxy {
        Proxy::start_on(free_port(), target_port, Vec::new())
    }

    fn start_on(port: u16, target_port: u16, members: Vec<u64>) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("proxy: bind 127.0.0.1:{port}: {e}"));
        let shared = Arc::new(Shared {
            port,
            target_port,
            members,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            threads: Mutex::new(0),
            threads_done: Condvar::new(),
        });
        let acceptor = spawn_counted(&shared, "proxy-accept", {
            let shared = shared.clone();
            move || accept_loop(shared, listener)
        });
        Proxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn target_port(&self) -> u16 {
        self.shared.target_port
    }

    /// Black-holes every connection through this proxy, open or new.
    pub fn block(&self) {
        self.update(|s| s.blocked = true);
    }

    /// Black-holes the connections that cluster member `member` opened to
    /// this proxy (only for proxies made by `cluster_behind_proxies`).
    pub fn block_source(&self, member: usize) {
        assert!(
            member < self.shared.members.len(),
            "proxy :{} knows no member {member}",
            self.port
        );
        self.update(|s| {
            s.blocked_sources.insert(member);
        });
    }

    /// How many connections it accepted so far, by the member that opened
    /// them (`None`: not asked, or could not tell; connections closed by
    /// their opener before the proxy looked are not counted).
    pub fn openers(&self) -> BTreeMap<Option<usize>, usize> {
        self.shared.state.lock().unwrap().openers.clone()
    }

    /// Lets everything through again: held bytes are delivered, deferred
    /// connections connected.
    pub fn heal(&self) {
        self.update(|s| {
            s.blocked = false;
            s.blocked_sources.clear();
        });
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.shared.state.lock().unwrap());
        self.shared.changed.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock().unwrap();
            st.stopped = true;
            for sockets in st.conns.values() {
                for s in sockets {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
        self.shared.changed.notify_all();
        // Wake the acceptor.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        );
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        // Pumps see their sockets shut down; one may be connecting upstream
        // (1 s at most).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut n = self.shared.threads.lock().unwrap();
        while *n > 0 && Instant::now() < deadline {
            n = self
                .shared
                .threads_done
                .wait_timeout(n, Duration::from_millis(50))
                .unwrap()
                .0;
        }
        if *n > 0 {
            eprintln!(
                "proxy :{}: {} threads still running after drop",
                self.port, *n
            );
        }
    }
}

/// Cuts member `member` off from the others in both directions (see the
/// module doc): its own proxy black-holes everything, the others' proxies
/// black-hole the connections it opened.
pub fn isolate(proxies: &[Proxy], member: usize) {
    for (i, p) in proxies.iter().enumerate() {
        if i == member {
            p.block();
        } else {
            p.block_source(member);
        }
    }
}

/// Ends every partition made with `proxies`.
pub fn heal(proxies: &[Proxy]) {
    for p in proxies {
        p.heal();
    }
}

fn spawn_counted(
    shared: &Arc<Shared>,
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> thread::JoinHandle<()> {
    struct Done(Arc<Shared>);
    impl Drop for Done {
        fn drop(&mut self) {
            *self.0.threads.lock().unwrap() -= 1;
            self.0.threads_done.notify_all();
        }
    }
    *shared.threads.lock().unwrap() += 1;
    let done = Done(shared.clone());
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _done = done;
            f()
        })
        .expect("spawn proxy thread")
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    for conn in listener.incoming() {
        if shared.state.lock().unwrap().stopped {
            return;
        }
        let Ok(client) = conn else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = client.set_nodelay(true);
        spawn_counted(&shared, "proxy-conn", {
            let shared = shared.clone();
            move || serve(shared, client)
        });
    }
}

impl Shared {
    /// Waits until traffic of a connection from `source` may pass; false
    /// once the proxy is stopped.
    fn pass(&self, source: Source) -> bool {
        let mut st = self.state.lock().unwrap();
        loop {
            if st.stopped {
                return false;
            }
            if st.passes(source) {
                return true;
            }
            st = self.changed.wait(st).unwrap();
        }
    }

    /// Registers a connection's sockets; `None` if the proxy is stopped.
    fn register(&self, source: Source, sockets: &[&TcpStream]) -> Option<u64> {
        let clones: Vec<TcpStream> = sockets.iter().filter_map(|s| s.try_clone().ok()).collect();
        let mut st = self.state.lock().unwrap();
        if st.stopped {
            return None;
        }
        st.next_conn += 1;
        let id = st.next_conn;
        match source {
            Source::Member(m) => *st.openers.entry(Some(m)).or_default() += 1,
            Source::NotAsked | Source::Unknown => *st.openers.entry(None).or_default() += 1,
            Source::Gone => {}
        }
        st.conns.insert(id, clones);
        Some(id)
    }

    /// Adds a socket to connection `id`; false if the proxy is stopped.
    fn add_socket(&self, id: u64, s: &TcpStream) -> bool {
        let mut st = self.state.lock().unwrap();
        if st.stopped {
            return false;
        }
        if let (Some(v), Ok(c)) = (st.conns.get_mut(&id), s.try_clone()) {
            v.push(c);
        }
        true
    }

    fn unregister(&self, id: u64) {
        if let Some(sockets) = self.state.lock().unwrap().conns.remove(&id) {
            for s in sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// One accepted connection: find its opener, wait until it may pass,
/// connect upstream, then pump both ways.
fn serve(shared: Arc<Shared>, client: TcpStream) {
    let source = match client.peer_addr() {
        Ok(peer) if !shared.members.is_empty() => identify(&shared, peer),
        Ok(_) => Source::NotAsked,
        Err(_) => return,
    };
    let Some(id) = shared.register(source, &[&client]) else {
        return;
    };
    if !shared.pass(source) {
        shared.unregister(id);
        return;
    }
    let target = SocketAddr::from(([127, 0, 0, 1], shared.target_port));
    let upstream = match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
        Ok(u) => u,
        Err(_) => {
            // The member is down: the closest to "connection refused".
            shared.unregister(id);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if !shared.add_socket(id, &upstream) {
        let _ = upstream.shutdown(Shutdown::Both);
        shared.unregister(id);
        return;
    }
    let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else {
        shared.unregister(id);
        return;
    };
    let back = spawn_counted(&shared, "proxy-pump", {
        let shared = shared.clone();
        move || pump(&shared, source, upstream2, client2)
    });
    pump(&shared, source, client, upstream);
    let _ = back.join();
    shared.unregister(id);
}

/// Copies `from` → `to`; every chunk (and the end of the stream) waits at
/// the gate first.
fn pump(shared: &Shared, source: Source, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let r = from.read(&mut buf);
        if matches!(&r, Err(e) if e.kind() == ErrorKind::Interrupted) {
            continue;
        }
        if !shared.pass(source) {
            return;
        }
        match r {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
            Err(_) => {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Which cluster member opened the connection whose far end is `peer`.
fn identify(shared: &Shared, peer: SocketAddr) -> Source {
    let mut inode = 0;
    for _ in 0..10 {
        inode = match socket_inode(peer.port(), shared.port) {
            Some(inode) if inode != 0 => inode,
            // No process holds the socket any more (its opener closed it or
            // died): the connection is dead anyway.
            _ => return Source::Gone,
        };
        let pids: Vec<(usize, u32)> = {
            let r = registry().lock().unwrap();
            shared
                .members
                .iter()
                .enumerate()
                .filter_map(|(i, id)| r.get(id).map(|(pid, _)| (i, *pid)))
                .collect()
        };
        for (i, pid) in pids {
            if holds_socket(pid, inode) {
                return Source::Member(i);
            }
        }
        // A member just (re)started may not be in the registry yet.
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "proxy :{}: the connection from {peer} (socket inode {inode}) was opened by no \
         member; it is stopped by any partition",
        shared.port
    );
    Source::Unknown
}

/// The inode of the loopback socket `127.0.0.1:local_port` connected to
/// `127.0.0.1:remote_port`, from `/proc/net/tcp` (or `tcp6`, v4-mapped);
/// 0 if no process holds it any more.
fn socket_inode(local_port: u16, remote_port: u16) -> Option<u64> {
    // A live socket wins over an old one (TIME_WAIT, inode 0) on the same
    // addresses.
    let mut found = None;
    for (file, addrs) in [
        ("/proc/net/tcp", &["0100007F", "7F000001"][..]),
        (
            "/proc/net/tcp6",
            &[
                "0000000000000000FFFF00000100007F",
                "00000000000000000000FFFF7F000001",
            ][..],
        ),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let matches = |field: &str, port: u16| {
                addrs
                    .iter()
                    .any(|a| field.eq_ignore_ascii_case(&format!("{a}:{port:04X}")))
            };
            if matches(f[1], local_port) && matches(f[2], remote_port) {
                if let Ok(inode) = f[9].parse::<u64>() {
                    found = found.max(Some(inode));
                }
            }
        }
    }
    found
}

/// Whether process `pid` has a descriptor for socket `inode`.
fn holds_socket(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
}

impl Server {
    /// Starts an `n`-member cluster whose peer traffic goes through one
    /// [`Proxy`] per member: member i listens for peers on its own port and
    /// advertises proxy i's URL (kept across restarts). `extra_args` go to
    /// every member, after the harness's flags. Proxy i is `proxies[i]`;
    /// [`isolate`] partitions a member.
    pub fn cluster_behind_proxies(
        kind: Kind,
        n: usize,
        extra_args: &[&str],
    ) -> (Vec<Server>, Vec<Proxy>) {
        // (client, peer, proxy) ports.
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, _, x))| format!("m{i}=http://127.0.0.1:{x}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Server> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, peer_port, proxy_port))| {
                // Later flags win (etcd's flag package, cairn's
                // args_override_self): this replaces the harness's
                // advertised peer URL.
                let mut extra = vec![format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{proxy_port}"
                )];
                extra.extend(extra_args.iter().map(|s| s.to_string()));
                super::join::unstarted(
                    kind,
                    &format!("m{i}"),
                    client_port,
                    peer_port,
                    initial.clone(),
                    extra,
                )
            })
            .collect();
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        let proxies: Vec<Proxy> = ports
            .iter()
            .map(|&(_, peer_port, proxy_port)| Proxy::start_on(proxy_port, peer_port, ids.clone()))
            .collect();
        for m in &mut members {
            m.spawn();
        }
        for m in &mut members {
            m.wait_ready();
        }
        (members, proxies)
    }

    /// SIGKILLs every server at once (all signals sent before any is
    /// reaped), then reaps them. Data dirs are kept.
    pub fn kill9_all(servers: &mut [Server]) {
        for s in servers.iter_mut() {
            if let Some(c) = &mut s.child {
                let _ = c.kill();
            }
        }
        for s in servers.iter_mut() {
            s.kill9();
        }
    }

    /// Starts every server again on its data dir and ports (killing any
    /// that still runs), all at once since none is ready before a quorum
    /// is up, and waits until each is ready.
    pub fn restart_all(servers: &mut [Server]) {
        for s in servers.iter_mut() {
            s.kill9();
        }
        for s in servers.iter_mut() {
            s.spawn();
        }
        for s in servers.iter_mut() {
            s.wait_ready();
        }
    }
}
