//! Logs as etcd writes them: one JSON object per line in zap's shape —
//! `level`, `ts`, `caller`, `msg`, then the event's fields with etcd's
//! kebab-case keys (`local-member-id`) — so that what operators grep and
//! what log pipelines parse for etcd works for cairn. Plain text when
//! asked (`--log-format=console`) or on a terminal.
//!
//! `--log-outputs` as etcd takes it: `default` or `stderr`, `stdout`, and
//! file paths (appended to), each line written to all of them; or
//! `systemd/journal` alone, journald's native protocol.
//!
//! **Invariant:** one event is one `write` of one whole line to every
//! output, so lines from different threads never interleave.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{Config, LogFormat};

/// Installs the global subscriber from the configuration. `CAIRN_LOG`
/// (an `EnvFilter` directive) overrides `--log-level` for debugging.
pub fn init(cfg: &Config) -> io::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cfg.log_level.tracing_directive()));
    let outputs = Outputs::open(&cfg.log_outputs)?;
    let json = match cfg.log_format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Console) => false,
        None => !(outputs.only_stderr() && io::stderr().is_terminal()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(outputs);
    if json {
        builder.event_format(ZapJson).init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Where log lines go.
#[derive(Clone)]
struct Outputs {
    sinks: Arc<Vec<Sink>>,
}

enum Sink {
    Stderr,
    Stdout,
    File(Mutex<File>),
    /// journald's native protocol, stderr when a send fails (as etcd).
    Journal(UnixDatagram),
}

/// Where journald takes native-protocol datagrams.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

impl Outputs {
    fn open(names: &[String]) -> io::Result<Outputs> {
        let mut sinks = Vec::new();
        if names.iter().any(|n| n == "systemd/journal") {
            // etcd's rule and text: the journal alone (or with `default`).
            if names
                .iter()
                .any(|n| n != "systemd/journal" && n != "default")
            {
                return Err(io::Error::other(format!(
                    "running with systemd/journal but other '--log-outputs' values ({names:?}) \
                     are configured with 'default'; override 'default' value with something else"
                )));
            }
            let socket = UnixDatagram::unbound()
                .and_then(|s| s.connect(JOURNAL_SOCKET).map(|()| s))
                .map_err(|e| io::Error::other(format!("can't find journal ({e})")))?;
            return Ok(Outputs {
                sinks: Arc::new(vec![Sink::Journal(socket)]),
            });
        }
        for name in names {
            sinks.push(match name.as_str() {
                "default" | "stderr" => Sink::Stderr,
                "stdout" => Sink::Stdout,
                path => Sink::File(Mutex::new(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| io::Error::new(e.kind(), format!("open {path}: {e}")))?,
                )),
            });
        }
        if sinks.is_empty() {
            sinks.push(Sink::Stderr);
        }
        Ok(Outputs {
            sinks: Arc::new(sinks),
        })
    }

    fn only_stderr(&self) -> bool {
        self.sinks.iter().all(|s| matches!(s, Sink::Stderr))
    }
}

impl Write for Outputs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A failing output (a full disk) must not take the others down.
        for s in self.sinks.iter() {
            let _ = match s {
                Sink::Stderr => io::stderr().lock().write_all(buf),
                Sink::Stdout => io::stdout().lock().write_all(buf),
                Sink::File(f) => f.lock().unwrap_or_else(|e| e.into_inner()).write_all(buf),
                Sink::Journal(socket) => match socket.send(&journal_entry(buf)) {
                    Ok(_) => Ok(()),
                    Err(_) => io::stderr().lock().write_all(buf),
                },
            };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One log line as a journald entry: the line as MESSAGE (length-prefixed,
/// so any byte may appear), PRIORITY from its level, PACKAGE from its
/// caller's directory, SYSLOG_IDENTIFIER — the fields etcd sends.
fn journal_entry(line: &[u8]) -> Vec<u8> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let parsed: Option<Value> = serde_json::from_slice(line).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let priority = match field("level").as_deref() {
        Some("debug") => 7,
        Some("warn") => 4,
        Some("error") => 3,
        _ => 6,
    };
    let package = field("caller")
        .and_then(|c| c.rsplit_once('/').map(|(dir, _)| dir.to_string()))
        .unwrap_or_else(|| ".".into());
    let mut out = Vec::with_capacity(line.len() + 96);
    out.extend_from_slice(b"MESSAGE\n");
    out.extend_from_slice(&(line.len() as u64).to_le_bytes());
    out.extend_from_slice(line);
    // As etcd: the name the binary was started as.
    let ident = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "cairn".into());
    out.extend_from_slice(
        format!("\nPRIORITY={priority}\nPACKAGE={package}\nSYSLOG_IDENTIFIER={ident}\n").as_bytes(),
    );
    out
}

impl<'a> MakeWriter<'a> for Outputs {
    type Writer = Outputs;
    fn make_writer(&'a self) -> Outputs {
        self.clone()
    }
}

/// zap's production JSON encoding, as etcd configures it.
struct ZapJson;

impl<S, N> FormatEvent<S, N> for ZapJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        writer.write_str(&zap_line(event))?;
        writer.write_char('\n')
    }
}

fn zap_line(event: &Event<'_>) -> String {
    let meta = event.metadata();
    let mut fields = Fields::default();
    event.record(&mut fields);
    let mut out = Map::new();
    out.insert("level".into(), Value::from(level_name(*meta.level())));
    out.insert("ts".into(), Value::from(utc_now()));
    // Raft's own logs arrive through slog, which names its source itself.
    let caller = match (&fields.slog_file, fields.slog_line) {
        (Some(file), Some(line)) => Some(format!("{}:{line}", short_path(file))),
        _ => meta
            .file()
            .zip(meta.line())
            .map(|(f, l)| format!("{}:{l}", short_path(f))),
    };
    if let Some(c) = caller {
        out.insert("caller".into(), Value::from(c));
    }
    out.insert(
        "msg".into(),
        Value::from(fields.message.unwrap_or_default()),
    );
    for (k, v) in fields.rest {
        out.insert(k, v);
    }
    Value::Object(out).to_string()
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG | Level::TRACE => "debug",
    }
}

/// The last two components of a source path (`server/boot.rs`), as zap's
/// short caller does.
fn short_path(path: &str) -> &str {
    let mut cut = path.len();
    for _ in 0..2 {
        match path[..cut].rfind('/') {
            Some(i) => cut = i,
            None => return path,
        }
    }
    &path[cut + 1..]
}

/// The current time as etcd 3.5's zap writes it (UTC):
/// `2026-11-25T18:11:50.710123Z`.
fn utc_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_micros()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// An event's fields: the message apart, keys in etcd's kebab case.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    slog_file: Option<String>,
    slog_line: Option<u64>,
    rest: Vec<(String, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        match name {
            "message" => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            "slog.file" => self.slog_file = value.as_str().map(str::to_string),
            "slog.line" => self.slog_line = value.as_u64(),
            n if n.starts_with("slog.") || n.starts_with("log.") => {}
            n => self.rest.push((n.replace('_', "-"), value)),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }

    #[test]
    fn journal_entries_carry_etcds_fields() {
        let line = br#"{"level":"warn","ts":"x","caller":"server/boot.rs:9","msg":"m"}"#;
        let mut with_newline = line.to_vec();
        with_newline.push(b'\n');
        let e = journal_entry(&with_newline);
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&(line.len() as u64).to_le_bytes());
        want.extend_from_slice(line);
        want.extend_from_slice(b"\nPRIORITY=4\nPACKAGE=server\nSYSLOG_IDENTIFIER=");
        assert!(e.starts_with(&want), "{:?}", String::from_utf8_lossy(&e));
        assert!(e.ends_with(b"\n"));
    }

    #[test]
    fn callers_are_short() {
        assert_eq!(short_path("src/server/boot.rs"), "server/boot.rs");
        assert_eq!(
            short_path("/root/.cargo/registry/src/x/raft-0.7.0/src/raft.rs"),
            "src/raft.rs"
        );
        assert_eq!(short_path("main.rs"), "main.rs");
    }

    /// Lines are zap's shape, whatever the event carries.
    #[test]
    fn events_become_zap_lines() {
        use tracing_subscriber::layer::SubscriberExt;
        let lines = Arc::new(Mutex::new(Vec::<u8>::new()));
        #[derive(Clone)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture(lines.clone());
        let layer = tracing_subscriber::fmt::layer()
            .event_format(ZapJson)
            .with_writer(move || capture.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                local_member_id = "8e9e05c52164694d",
                term = 2u64,
                "found it"
            );
        });
        let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["level"], "warn");
        assert_eq!(line["msg"], "found it");
        assert_eq!(line["local-member-id"], "8e9e05c52164694d");
        assert_eq!(line["term"], 2);
        assert!(line["caller"]
            .as_str()
            .unwrap()
            .starts_with("src/logging.rs:"));
        let ts = line["ts"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-11-25T18:11:50.710123Z".len(), "{ts}");
        assert!(ts.ends_with('Z'));
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert_eq!(keys[..4], ["level", "ts", "caller", "msg"]);
    }
}
