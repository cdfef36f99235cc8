//! Logs as operators read them: etcd's JSON lines (`level`, `ts`,
//! `caller`, `msg` first), to every `--log-outputs` target, with the
//! milestones operators grep for, each logged once, and a clean exit on
//! SIGTERM. Runs against cairn, or the real etcd (with `--logger=zap`)
//! with `CAIRN_CLUSTER_TARGET=etcd`, the reference for the shape and the
//! texts.

mod common;

use std::time::Duration;

use common::{Kind, Server};
use serde_json::Value;

#[test]
fn json_lines_milestones_and_a_clean_stop() {
    let kind = common::target_from_env("CAIRN_CLUSTER_TARGET");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("member.log");
    let outputs = format!("--log-outputs=stderr,{}", file.display());
    let mut srv = Server::start_with(kind, &["--logger=zap", &outputs]);
    let status = srv.terminate(Duration::from_secs(20));

    let text = std::fs::read_to_string(&file).expect("the log file output");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        let keys: Vec<&String> = l.as_object().unwrap().keys().take(4).collect();
        assert_eq!(keys, ["level", "ts", "caller", "msg"], "{l}");
        assert!(
            ["debug", "info", "warn", "error"].contains(&l["level"].as_str().unwrap()),
            "{l}"
        );
        let ts = l["ts"].as_str().unwrap();
        // Milliseconds in etcd 3.4, microseconds in 3.5 and later (cairn).
        let len = if kind == Kind::Cairn { 27 } else { 24 };
        assert!(ts.len() == len && ts.ends_with('Z'), "{ts}");
    }
    let msgs: Vec<&str> = lines.iter().map(|l| l["msg"].as_str().unwrap()).collect();
    let once = |what: &str, found: &dyn Fn(&str) -> bool| {
        let n = msgs.iter().filter(|m| found(m)).count();
        assert_eq!(n, 1, "{what}: logged {n} times\n{text}");
    };
    once("leader elected", &|m| {
        m.starts_with("raft.node: ") && m.contains(" elected leader ") && m.contains(" at term ")
    });
    once("published", &|m| {
        m == "published local member to cluster through raft"
    });
    if kind == Kind::Cairn {
        // etcd 3.5 and 3.6 log it with zap; 3.4 only with its old logger.
        once("ready", &|m| m == "ready to serve client requests");
    }
    once("serving", &|m| {
        m == "serving client traffic insecurely; this is strongly discouraged!"
    });
    let signal = lines
        .iter()
        .find(|l| l["msg"] == "received signal; shutting down")
        .unwrap_or_else(|| panic!("no shutdown line\n{text}"));
    assert_eq!(signal["signal"], "terminated");
    let published = lines
        .iter()
        .find(|l| l["msg"] == "published local member to cluster through raft")
        .unwrap();
    let id = published["local-member-id"].as_str().unwrap();
    assert!(u64::from_str_radix(id, 16).is_ok(), "{published}");

    // The same lines went to stderr (the harness's log).
    let stderr = std::fs::read_to_string(srv.log_path()).unwrap();
    assert!(stderr.contains("published local member to cluster through raft"));

    if kind == Kind::Cairn {
        // etcd 3.4 re-raises the signal and dies of it; cairn exits 0.
        let status = status.expect("stopped within 20 s");
        assert!(status.success(), "{status}");
    }
}

/// `--log-outputs=systemd/journal`: every line goes to journald's socket
/// as an entry with the JSON line as MESSAGE, PRIORITY by level and the
/// binary's name as SYSLOG_IDENTIFIER; the journal with another output is
/// refused. The test stands in for journald at its socket, so it runs only
/// where no journald listens.
#[test]
fn journal_output() {
    use std::os::unix::net::UnixDatagram;
    let path = std::path::Path::new("/run/systemd/journal/socket");
    if path.exists() {
        eprintln!("journald's socket exists here; not standing in for it");
        return;
    }
    let kind = common::target_from_env("CAIRN_CLUSTER_TARGET");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    struct Remove(&'static std::path::Path);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let journal = UnixDatagram::bind(path).expect("bind the journal socket");
    let _cleanup = Remove(std::path::Path::new("/run/systemd/journal/socket"));
    // Received from the start, as journald would: a full socket queue
    // blocks the writer.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = journal.recv(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let _srv = Server::start_with(kind, &["--logger=zap", "--log-outputs=systemd/journal"]);
    let mut seen_published = false;
    while !seen_published {
        let entry = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a journal entry");
        let fields = journal_fields(&entry);
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| panic!("no {k} in {fields:?}"))
        };
        let message: Value = serde_json::from_str(get("MESSAGE").trim_end())
            .unwrap_or_else(|e| panic!("MESSAGE is not a JSON line ({e}): {fields:?}"));
        let priority = match message["level"].as_str().unwrap() {
            "debug" => "7",
            "info" => "6",
            "warn" => "4",
            _ => "3",
        };
        assert_eq!(get("PRIORITY"), priority);
        let ident = if kind == Kind::Cairn { "cairn" } else { "etcd" };
        assert_eq!(get("SYSLOG_IDENTIFIER"), ident);
        seen_published = message["msg"] == "published local member to cluster through raft";
    }
    drop(_srv);

    if kind == Kind::Cairn {
        let out = std::process::Command::new(common::CAIRN_BIN)
            .arg("--log-outputs=systemd/journal,stderr")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("running with systemd/journal but other"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A journald native-protocol datagram's fields: `KEY=value` lines, or
/// `KEY`, a newline, a little-endian u64 length and the raw value.
fn journal_fields(mut b: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let nl = b.iter().position(|&c| c == b'\n').expect("a field ends");
        let head = &b[..nl];
        if let Some(eq) = head.iter().position(|&c| c == b'=') {
            out.push((
                String::from_utf8_lossy(&head[..eq]).into_owned(),
                head[eq + 1..].to_vec(),
            ));
            b = &b[nl + 1..];
        } else {
            let len = u64::from_le_bytes(b[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let value = b[nl + 9..nl + 9 + len].to_vec();
            out.push((String::from_utf8_lossy(head).into_owned(), value));
            b = &b[nl + 9 + len + 1..];
        }
    }
    out
}
