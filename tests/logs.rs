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
        assert!(ts.len() == 24 && ts.ends_with('Z'), "{ts}");
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
