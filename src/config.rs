//! etcd's command line and `ETCD_*` environment variables, parsed into a
//! validated [`Config`].
//!
//! cairn replaces the `etcd` binary without touching its command line
//! (kubeadm's static pod, systemd units, Helm charts), so this module accepts
//! what etcd accepts, the way etcd accepts it:
//!
//! * Go `flag` syntax: `-name x`, `--name x`, `-name=x`, `--name=x`; boolean
//!   flags as `--flag`, `--flag=true`, `--flag=false` (never `--flag false`);
//!   the last occurrence of a repeated flag wins; parsing stops at the first
//!   non-flag argument, which is an error.
//! * Every flag can come from `ETCD_<NAME>` (upper case, `-` → `_`). A
//!   variable that is empty is ignored. A variable *and* the flag both given is
//!   an error, as in etcd (it refuses to guess which one the operator meant).
//! * etcd's defaults, and etcd's error texts where an operator may search for
//!   them.
//!
//! Every flag etcd 3.4–3.6 knows is listed once in `FLAGS`, together with
//! what cairn does with it: implemented, accepted with a warning when ignoring
//! it is harmless, or refused when ignoring it would weaken security or put
//! data somewhere else than asked. Implementing a flag later means moving its
//! row and reading it in `Config::build`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ColorChoice, Command};
use url::Url;

use crate::tls::{TlsProtocol, TlsSide};
use crate::version::{CAIRN_VERSION, ETCD_API_VERSION, GIT_SHA};

const DEFAULT_NAME: &str = "default";

/// etcd's `--initial-cluster` default is this literal text. When `--name` is
/// not `default` and the flag still holds exactly this text, etcd replaces it
/// with `<name>=<each --initial-advertise-peer-urls>`, so `etcd --name foo`
/// alone bootstraps a one-member cluster.
const DEFAULT_INITIAL_CLUSTER: &str = "default=http://localhost:2380";

/// etcd's upper bound on `--election-timeout`, in milliseconds.
const MAX_ELECTION_TIMEOUT_MS: u64 = 50_000;

/// What etcd uses when no progress interval is configured (or 0 is).
const DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// etcd raises shorter progress intervals to this.
const MIN_WATCH_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_millis(100);

/// `ETCD_*` variables etcd reads outside its flag set; not worth a warning.
const SPECIAL_ENV: &[&str] = &["ETCD_UNSUPPORTED_ARCH"];

// ---------------------------------------------------------------------------
// The flag table
// ---------------------------------------------------------------------------

/// How a flag's value is written, which decides how it is tokenized and
/// checked (a bad value is an error even for a flag cairn ignores, as in etcd).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Go boolean flag: takes no separate argument.
    Bool,
    Str,
    Uint,
    Int,
    /// Go duration (`5s`, `1h30m`).
    Duration,
    /// Comma-separated URLs, sorted and de-duplicated as etcd does.
    Urls,
    /// Comma-separated strings, sorted and de-duplicated as etcd does.
    Strings,
    /// One of the flags etcd itself retired: boolean syntax, any value.
    Retired,
}

impl Kind {
    /// Whether `--flag value` takes the next argument as the value.
    fn takes_separate_value(self) -> bool {
        !matches!(self, Kind::Bool | Kind::Retired)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Support {
    /// Read into [`Config`].
    Implemented,
    /// Accepted. A value other than etcd's default logs a warning with this
    /// note on why ignoring it is harmless.
    Ignored(&'static str),
    /// Accepted at etcd's default value (an empty path, `false`, ...), which
    /// is what a template that always spells every flag out passes; any other
    /// value stops startup.
    Refused(Refusal),
    /// Retired by etcd itself, which still accepts and ignores it.
    Retired,
}

/// Why a refused flag is refused, grouped so that whole features (auth)
/// move to "implemented" together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Auth,
    AccessControl,
    Discovery,
    Proxy,
    V2Api,
    WalDir,
    ForceNewCluster,
    HttpOnlyListener,
}

impl Refusal {
    /// (what is missing, what starting anyway would do).
    fn explain(self) -> (&'static str, &'static str) {
        match self {
            Refusal::Auth => (
                "authentication comes with a later release",
                "run with other security settings than asked",
            ),
            Refusal::AccessControl => (
                "CORS and host filtering come with a later release",
                "accept requests it was told to refuse",
            ),
            Refusal::Discovery => (
                "discovery bootstrapping is not implemented; use --initial-cluster",
                "bootstrap a different cluster than asked",
            ),
            Refusal::Proxy => (
                "cairn has no proxy mode",
                "start as a member instead of a proxy",
            ),
            Refusal::V2Api => (
                "cairn serves the v3 API only",
                "leave v2 clients without the API they expect",
            ),
            Refusal::WalDir => (
                "cairn keeps its log inside --data-dir",
                "put data somewhere other than asked",
            ),
            Refusal::ForceNewCluster => (
                "rewriting the membership of existing data is not implemented",
                "start with the old membership",
            ),
            Refusal::HttpOnlyListener => (
                "separate HTTP-only client listeners are not implemented",
                "leave those URLs unserved",
            ),
        }
    }
}

#[derive(Debug)]
struct FlagSpec {
    name: &'static str,
    kind: Kind,
    /// etcd's default, in flag syntax.
    default: &'static str,
    support: Support,
    /// Shown by `--help`; only implemented flags are shown.
    help: &'static str,
}

const fn flag(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    help: &'static str,
) -> FlagSpec {
    FlagSpec {
        name,
        kind,
        default,
        support: Support::Implemented,
        help,
    }
}

const fn ignored(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    note: &'static str,
) -> FlagSpec {
    FlagSpec {
        name,
        kind,
        default,
        support: Support::Ignored(note),
        help: "",
    }
}

const fn refused(name: &'static str, kind: Kind, default: &'static str, why: Refusal) -> FlagSpec {
    FlagSpec {
        name,
        kind,
        default,
        support: Support::Refused(why),
        help: "",
    }
}

const fn retired(name: &'static str) -> FlagSpec {
    FlagSpec {
        name,
        kind: Kind::Retired,
        default: "",
        support: Support::Retired,
        help: "",
    }
}

// Notes for ignored flags, shared by flag families.
const BBOLT: &str = "it tunes etcd's bbolt backend; cairn stores data in RocksDB";
const CORRUPTION: &str = "the compaction hash check is not implemented";
const TRACING: &str = "OpenTelemetry tracing is not implemented";
const WITH_DISCOVERY: &str = "it only matters with --discovery, which cairn refuses";
const WITH_PROXY: &str = "it only matters with --proxy, which cairn refuses";
const TUNING: &str = "cairn does not have this tuning knob; its own default applies";

/// Every flag etcd 3.4, 3.5 and 3.6 accept. Order only matters for which
/// problem is reported first. Kept one row per flag, unformatted, so that it
/// reads as a table.
#[rustfmt::skip]
static FLAGS: &[FlagSpec] = &[
    // --- member -------------------------------------------------------------
    flag("name", Kind::Str, DEFAULT_NAME, "Human-readable name for this member."),
    flag("data-dir", Kind::Str, "", "Path to the data directory [default: ${name}.etcd]."),
    flag("listen-peer-urls", Kind::Urls, "http://localhost:2380", "List of URLs to listen on for peer traffic."),
    flag("listen-client-urls", Kind::Urls, "http://localhost:2379", "List of URLs to listen on for client traffic."),
    flag("listen-metrics-urls", Kind::Urls, "", "List of URLs to listen on for the metrics and health endpoints."),
    flag("snapshot-count", Kind::Uint, "10000", "Number of committed transactions to trigger a snapshot to disk."),
    flag("heartbeat-interval", Kind::Uint, "100", "Time (in milliseconds) of a heartbeat interval."),
    flag("election-timeout", Kind::Uint, "1000", "Time (in milliseconds) for an election to timeout."),
    flag("quota-backend-bytes", Kind::Int, "0", "Raise an alarm when the backend size exceeds this (0 means 2 GiB)."),
    flag("max-txn-ops", Kind::Uint, "128", "Maximum number of operations permitted in a transaction."),
    flag("max-request-bytes", Kind::Uint, "1572864", "Maximum client request size in bytes the server will accept."),
    // --- clustering ---------------------------------------------------------
    flag("initial-advertise-peer-urls", Kind::Urls, "http://localhost:2380", "List of this member's peer URLs to advertise to the rest of the cluster."),
    flag("advertise-client-urls", Kind::Urls, "http://localhost:2379", "List of this member's client URLs to advertise to the public."),
    flag("initial-cluster", Kind::Str, DEFAULT_INITIAL_CLUSTER, "Initial cluster configuration for bootstrapping (name=peer-url,...)."),
    flag("initial-cluster-token", Kind::Str, "etcd-cluster", "Initial cluster token for the cluster during bootstrap."),
    flag("initial-cluster-state", Kind::Str, "new", "Initial cluster state ('new' or 'existing')."),
    // --- logging ------------------------------------------------------------
    flag("logger", Kind::Str, "zap", "Only 'zap' (structured logging) is supported."),
    flag("log-level", Kind::Str, "info", "Log level: debug, info, warn, error, dpanic, panic or fatal."),
    flag("log-outputs", Kind::Strings, "default", "Log outputs: 'default', 'stderr', 'stdout' or file paths."),
    flag("log-format", Kind::Str, "", "Log format: 'json' or 'console' [default: json, console on a terminal]."),
    // --- security -------------------------------------------------------------
    flag("cert-file", Kind::Str, "", "Path to the client server TLS cert file."),
    flag("key-file", Kind::Str, "", "Path to the client server TLS key file."),
    flag("client-cert-auth", Kind::Bool, "false", "Enable client cert authentication."),
    flag("client-crl-file", Kind::Str, "", "Path to the client certificate revocation list file."),
    flag("client-cert-allowed-hostname", Kind::Strings, "", "Comma-separated allowed TLS hostnames for client cert authentication."),
    flag("trusted-ca-file", Kind::Str, "", "Path to the client server TLS trusted CA cert file."),
    flag("auto-tls", Kind::Bool, "false", "Client TLS using generated certificates."),
    flag("client-cert-file", Kind::Str, "", "Path to an explicit client TLS cert file (checked at startup; cairn never dials client URLs)."),
    flag("client-key-file", Kind::Str, "", "Path to an explicit client TLS key file (checked at startup; cairn never dials client URLs)."),
    flag("peer-cert-file", Kind::Str, "", "Path to the peer server TLS cert file."),
    flag("peer-key-file", Kind::Str, "", "Path to the peer server TLS key file."),
    flag("peer-client-cert-auth", Kind::Bool, "false", "Enable peer client cert authentication."),
    flag("peer-trusted-ca-file", Kind::Str, "", "Path to the peer server TLS trusted CA file."),
    flag("peer-auto-tls", Kind::Bool, "false", "Peer TLS using generated certificates."),
    flag("peer-client-cert-file", Kind::Str, "", "Path to an explicit peer client TLS cert file, presented when dialling peers."),
    flag("peer-client-key-file", Kind::Str, "", "Path to an explicit peer client TLS key file."),
    flag("peer-crl-file", Kind::Str, "", "Path to the peer certificate revocation list file."),
    flag("peer-cert-allowed-cn", Kind::Strings, "", "Comma-separated allowed CNs for inter-peer TLS authentication."),
    flag("peer-cert-allowed-hostname", Kind::Strings, "", "Comma-separated allowed TLS hostnames for inter-peer TLS authentication."),
    flag("peer-skip-client-san-verification", Kind::Bool, "false", "Skip verification of SAN field in client certificate for peer connections."),
    flag("experimental-peer-skip-client-san-verification", Kind::Bool, "false", "Old name of --peer-skip-client-san-verification."),
    flag("cipher-suites", Kind::Strings, "", "Comma-separated list of supported TLS cipher suites between client/server and peers (Go's names)."),
    flag("tls-min-version", Kind::Str, "TLS1.2", "Minimum TLS version: TLS1.2 or TLS1.3."),
    flag("tls-max-version", Kind::Str, "", "Maximum TLS version: TLS1.2 or TLS1.3 (empty: the newest)."),
    flag("self-signed-cert-validity", Kind::Uint, "1", "Validity period, in years, of the certificates --auto-tls and --peer-auto-tls generate."),
    // --- watch, compaction, misc. -------------------------------------------
    flag("watch-progress-notify-interval", Kind::Duration, "10m", "Duration of periodic watch progress notifications."),
    flag("experimental-watch-progress-notify-interval", Kind::Duration, "10m", "Old name of --watch-progress-notify-interval."),
    flag("auto-compaction-retention", Kind::Str, "0", "Auto compaction retention (0 disables; hours or a duration in periodic mode)."),
    flag("auto-compaction-mode", Kind::Str, "periodic", "Interpret auto-compaction-retention as 'periodic' or 'revision'."),
    flag("version", Kind::Bool, "false", "Print the version and exit."),
    // --- accepted, ignored --------------------------------------------------
    ignored("enable-pprof", Kind::Bool, "false", "profiling endpoints are not served"),
    ignored("max-snapshots", Kind::Uint, "5", "cairn manages its own snapshot files"),
    ignored("max-wals", Kind::Uint, "5", "cairn keeps its raft log in RocksDB, not WAL files"),
    ignored("backend-bbolt-freelist-type", Kind::Str, "map", BBOLT),
    ignored("experimental-backend-bbolt-freelist-type", Kind::Str, "array", BBOLT),
    ignored("backend-batch-interval", Kind::Duration, "0s", BBOLT),
    ignored("backend-batch-limit", Kind::Int, "0", BBOLT),
    flag("grpc-keepalive-min-time", Kind::Duration, "5s", "Minimum interval a client should wait before pinging the server (cairn never cuts off clients that ping more often)."),
    flag("grpc-keepalive-interval", Kind::Duration, "2h", "Frequency of server-to-client pings to check a connection is alive (with 0 here or in the timeout, gRPC's defaults apply)."),
    flag("grpc-keepalive-timeout", Kind::Duration, "20s", "Wait for a ping's answer before closing a non-responsive connection."),
    flag("max-concurrent-streams", Kind::Uint, "4294967295", "Maximum concurrent streams that each client can open at a time."),
    ignored("socket-reuse-port", Kind::Bool, "false", "listeners are opened with cairn's own socket options"),
    ignored("socket-reuse-address", Kind::Bool, "false", "listeners are opened with cairn's own socket options"),
    ignored("raft-read-timeout", Kind::Duration, "5s", "peer connections use cairn's own timeouts"),
    ignored("raft-write-timeout", Kind::Duration, "5s", "peer connections use cairn's own timeouts"),
    ignored("initial-election-tick-advance", Kind::Bool, "true", TUNING),
    flag("strict-reconfig-check", Kind::Bool, "true", "Reject reconfiguration requests that would cause quorum loss."),
    ignored("pre-vote", Kind::Bool, "true", TUNING),
    flag("max-learners", Kind::Int, "1", "Sets the maximum number of learners that can be available in the cluster membership."),
    ignored("metrics", Kind::Str, "basic", "cairn exports one fixed set of metrics"),
    ignored("enable-grpc-gateway", Kind::Bool, "true", "the JSON gateway is not served"),
    ignored("v2-deprecation", Kind::Str, "not-yet", "cairn has no v2 store"),
    ignored("enable-log-rotation", Kind::Bool, "false", "cairn does not rotate log files"),
    ignored("log-rotation-config-json", Kind::Str, r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#, "cairn does not rotate log files"),
    ignored("log-package-levels", Kind::Str, "", "capnslog settings have no effect; use --log-level"),
    ignored("debug", Kind::Bool, "false", "use --log-level=debug"),
    ignored("unsafe-no-fsync", Kind::Bool, "false", "cairn always syncs its writes, which is the safe side"),
    flag("feature-gates", Kind::Str, "", "Feature gates as Name=bool pairs; cairn acts on InitialCorruptCheck and accepts etcd's others."),
    flag("experimental-initial-corrupt-check", Kind::Bool, "false", "Check data corruption before serving any client/peer traffic (old form of --feature-gates=InitialCorruptCheck=true)."),
    flag("experimental-corrupt-check-time", Kind::Duration, "0s", "Old name of --corrupt-check-time."),
    flag("corrupt-check-time", Kind::Duration, "0s", "Duration of time between cluster corruption check passes."),
    ignored("experimental-compact-hash-check-enabled", Kind::Bool, "false", CORRUPTION),
    ignored("experimental-compact-hash-check-time", Kind::Duration, "1m", CORRUPTION),
    ignored("compact-hash-check-time", Kind::Duration, "1m", CORRUPTION),
    ignored("experimental-enable-lease-checkpoint", Kind::Bool, "false", TUNING),
    ignored("experimental-enable-lease-checkpoint-persist", Kind::Bool, "false", TUNING),
    ignored("experimental-compaction-batch-limit", Kind::Int, "0", TUNING),
    ignored("compaction-batch-limit", Kind::Int, "0", TUNING),
    ignored("experimental-compaction-sleep-interval", Kind::Duration, "0s", TUNING),
    ignored("compaction-sleep-interval", Kind::Duration, "0s", TUNING),
    ignored("experimental-downgrade-check-time", Kind::Duration, "5s", TUNING),
    ignored("downgrade-check-time", Kind::Duration, "5s", TUNING),
    ignored("experimental-warning-apply-duration", Kind::Duration, "100ms", TUNING),
    ignored("warning-apply-duration", Kind::Duration, "100ms", TUNING),
    ignored("experimental-warning-unary-request-duration", Kind::Duration, "0s", TUNING),
    ignored("warning-unary-request-duration", Kind::Duration, "300ms", TUNING),
    ignored("experimental-memory-mlock", Kind::Bool, "false", TUNING),
    ignored("memory-mlock", Kind::Bool, "false", TUNING),
    ignored("experimental-txn-mode-write-with-shared-buffer", Kind::Bool, "true", TUNING),
    ignored("experimental-stop-grpc-service-on-defrag", Kind::Bool, "false", TUNING),
    ignored("experimental-bootstrap-defrag-threshold-megabytes", Kind::Uint, "0", TUNING),
    ignored("bootstrap-defrag-threshold-megabytes", Kind::Uint, "0", TUNING),
    ignored("experimental-snapshot-catchup-entries", Kind::Uint, "5000", TUNING),
    ignored("snapshot-catchup-entries", Kind::Uint, "5000", TUNING),
    ignored("experimental-enable-distributed-tracing", Kind::Bool, "false", TRACING),
    ignored("enable-distributed-tracing", Kind::Bool, "false", TRACING),
    ignored("experimental-distributed-tracing-address", Kind::Str, "localhost:4317", TRACING),
    ignored("distributed-tracing-address", Kind::Str, "localhost:4317", TRACING),
    ignored("experimental-distributed-tracing-service-name", Kind::Str, "etcd", TRACING),
    ignored("distributed-tracing-service-name", Kind::Str, "etcd", TRACING),
    ignored("experimental-distributed-tracing-instance-id", Kind::Str, "", TRACING),
    ignored("distributed-tracing-instance-id", Kind::Str, "", TRACING),
    ignored("experimental-distributed-tracing-sampling-rate", Kind::Int, "0", TRACING),
    ignored("distributed-tracing-sampling-rate", Kind::Int, "0", TRACING),
    ignored("discovery-fallback", Kind::Str, "proxy", WITH_DISCOVERY),
    ignored("discovery-proxy", Kind::Str, "", WITH_DISCOVERY),
    ignored("discovery-dial-timeout", Kind::Duration, "2s", WITH_DISCOVERY),
    ignored("discovery-request-timeout", Kind::Duration, "5s", WITH_DISCOVERY),
    ignored("discovery-keepalive-time", Kind::Duration, "2s", WITH_DISCOVERY),
    ignored("discovery-keepalive-timeout", Kind::Duration, "6s", WITH_DISCOVERY),
    ignored("discovery-insecure-transport", Kind::Bool, "true", WITH_DISCOVERY),
    ignored("discovery-insecure-skip-tls-verify", Kind::Bool, "false", WITH_DISCOVERY),
    ignored("discovery-cert", Kind::Str, "", WITH_DISCOVERY),
    ignored("discovery-key", Kind::Str, "", WITH_DISCOVERY),
    ignored("discovery-cacert", Kind::Str, "", WITH_DISCOVERY),
    ignored("discovery-user", Kind::Str, "", WITH_DISCOVERY),
    ignored("discovery-password", Kind::Str, "", WITH_DISCOVERY),
    ignored("proxy-failure-wait", Kind::Uint, "5000", WITH_PROXY),
    ignored("proxy-refresh-interval", Kind::Uint, "30000", WITH_PROXY),
    ignored("proxy-dial-timeout", Kind::Uint, "1000", WITH_PROXY),
    ignored("proxy-write-timeout", Kind::Uint, "5000", WITH_PROXY),
    ignored("proxy-read-timeout", Kind::Uint, "0", WITH_PROXY),
    // --- refused unless left at etcd's default --------------------------------
    refused("auth-token", Kind::Str, "simple", Refusal::Auth),
    refused("auth-token-ttl", Kind::Uint, "300", Refusal::Auth),
    refused("bcrypt-cost", Kind::Uint, "10", Refusal::Auth),
    refused("cors", Kind::Strings, "*", Refusal::AccessControl),
    refused("host-whitelist", Kind::Strings, "*", Refusal::AccessControl),
    refused("discovery", Kind::Str, "", Refusal::Discovery),
    refused("discovery-srv", Kind::Str, "", Refusal::Discovery),
    refused("discovery-srv-name", Kind::Str, "", Refusal::Discovery),
    refused("discovery-endpoints", Kind::Strings, "", Refusal::Discovery),
    refused("discovery-token", Kind::Str, "", Refusal::Discovery),
    refused("proxy", Kind::Str, "off", Refusal::Proxy),
    refused("enable-v2", Kind::Bool, "false", Refusal::V2Api),
    refused("experimental-enable-v2v3", Kind::Str, "", Refusal::V2Api),
    flag("config-file", Kind::Str, "", "Path to an etcd YAML configuration file; when given, other flags and ETCD_* variables are ignored."),
    refused("wal-dir", Kind::Str, "", Refusal::WalDir),
    refused("force-new-cluster", Kind::Bool, "false", Refusal::ForceNewCluster),
    refused("listen-client-http-urls", Kind::Urls, "", Refusal::HttpOnlyListener),
    // --- retired by etcd itself -----------------------------------------------
    retired("cluster-active-size"),
    retired("cluster-remove-delay"),
    retired("cluster-sync-interval"),
    retired("config"),
    retired("force"),
    retired("max-result-buffer"),
    retired("max-retry-attempts"),
    retired("peer-heartbeat-interval"),
    retired("peer-election-timeout"),
    retired("retry-interval"),
    retired("snapshot"),
    retired("v"),
    retired("vv"),
];

fn find_flag(name: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|spec| spec.name == name)
}

fn env_key(flag: &str) -> String {
    format!("ETCD_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// Why cairn will not start with the given command line, or that it was asked
/// for help or its version instead. [`ConfigError::exit`] prints and exits the
/// way etcd does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `-h`, `-help` or `--help`: the text to print on stdout (exit 0).
    #[error("{0}")]
    DisplayHelp(String),
    /// `--version`: the text to print on stdout (exit 0).
    #[error("{0}")]
    DisplayVersion(String),
    #[error("flag provided but not defined: -{0}")]
    UnknownFlag(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    #[error("bad flag syntax: {0}")]
    BadFlagSyntax(String),
    /// An argument that is not a flag; etcd takes no positional arguments.
    #[error("error verifying flags, '{0}' is not a valid flag. See 'cairn --help'.")]
    NotAFlag(String),
    #[error("invalid boolean value {value:?} for -{flag}: parse error")]
    InvalidBool { flag: String, value: String },
    #[error("invalid value {value:?} for flag -{flag}: {reason}")]
    InvalidFlagValue {
        flag: String,
        value: String,
        reason: String,
    },
    #[error("invalid value {value:?} for {key}: {reason}")]
    InvalidEnvValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error(
        "conflicting environment variable {0:?} is shadowed by corresponding command-line flag \
         (either unset environment variable or disable flag)"
    )]
    ShadowedEnv(String),
    #[error("argument {0:?} is not valid Unicode")]
    NotUnicode(String),
    /// An etcd feature cairn does not have yet, asked for explicitly.
    #[error("{0}")]
    Unsupported(String),
    /// A value that parses but makes no sense (mostly etcd's own texts).
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// etcd's exit status: 0 for help and version, 2 for command-line syntax
    /// errors (Go's `flag` package), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::DisplayHelp(_) | ConfigError::DisplayVersion(_) => 0,
            ConfigError::UnknownFlag(_)
            | ConfigError::MissingValue(_)
            | ConfigError::BadFlagSyntax(_)
            | ConfigError::InvalidBool { .. }
            | ConfigError::InvalidFlagValue { .. } => 2,
            _ => 1,
        }
    }

    /// Prints the help or version text on stdout, or the error on stderr, and
    /// exits with [`ConfigError::exit_code`]. For `main`, before logging is
    /// set up.
    pub fn exit(&self) -> ! {
        let code = self.exit_code();
        if code == 0 {
            print!("{self}");
            // process::exit skips the flush stdout would get at the end of main.
            let _ = std::io::Write::flush(&mut std::io::stdout());
        } else {
            eprintln!("{self}");
        }
        std::process::exit(code)
    }
}

/// A URL as etcd takes it in its URL flags: `http` or `https` (or `unix`,
/// `unixs`), an explicit `host:port`, nothing else.
///
/// [`EtcdUrl::as_str`] is etcd's textual form (scheme lower-cased, host
/// exactly as written, no trailing slash): it is what member ids are hashed
/// over and what `MemberList` reports, where kubeadm compares it byte for
/// byte. A `url::Url` would serialise `http://10.0.0.1:2380/` and lower-case
/// host names, so it is only offered, by [`EtcdUrl::url`], for dialling.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EtcdUrl {
    text: String,
    url: Url,
    port: u16,
}

impl EtcdUrl {
    /// Parses one URL with etcd's rules and error texts. Surrounding white
    /// space is ignored, as etcd does.
    pub fn parse(input: &str) -> Result<EtcdUrl, String> {
        let input = input.trim();
        let scheme_error = || format!("URL scheme must be http, https, unix, or unixs: {input}");
        let (scheme, rest) = input.split_once("://").ok_or_else(scheme_error)?;
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "http" | "https" => {}
            "unix" | "unixs" => {
                // Accepted by the parser so that the caller can refuse them
                // with a clear message; there is no port to speak of.
                let text = format!("{scheme}://{rest}");
                let url = Url::parse(&text).map_err(|e| format!("{e}: {input}"))?;
                return Ok(EtcdUrl { text, url, port: 0 });
            }
            _ => return Err(scheme_error()),
        }
        let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_len);
        if tail.starts_with('/') {
            return Err(format!("URL must not contain a path: {input}"));
        }
        // etcd would keep these and then never use them; refusing is clearer.
        if !tail.is_empty() {
            return Err(format!("URL must not contain a query or fragment: {input}"));
        }
        if authority.contains('@') {
            return Err(format!("URL must not contain user information: {input}"));
        }
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("URL address does not have the form \"host:port\": {input}"))?;
        if host.is_empty() {
            return Err(format!("unexpected empty host ({input})"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("invalid port {port:?} in URL: {input}"))?;
        let text = format!("{scheme}://{authority}");
        let url = Url::parse(&text).map_err(|e| format!("{e}: {input}"))?;
        Ok(EtcdUrl { text, url, port })
    }

    /// etcd's textual form; see the type's documentation.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed URL, for dialling. Its serialisation differs from
    /// [`EtcdUrl::as_str`]; do not hash or report it.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// `http`, `https`, `unix` or `unixs`.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// `host:port` exactly as written (IPv6 hosts keep their brackets), for
    /// binding or resolving with `ToSocketAddrs`.
    pub fn host_port(&self) -> &str {
        let scheme_len = self.text.find("://").map_or(0, |i| i + 3);
        &self.text[scheme_len..]
    }

    /// The host as written, without IPv6 brackets.
    pub fn host(&self) -> &str {
        split_host_port(self.host_port()).map_or("", |(host, _)| host)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

// The text says it all; the parsed Url would triple the size of every
// `{config:?}` in the logs.
impl fmt::Debug for EtcdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EtcdUrl").field(&self.text).finish()
    }
}

impl fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for EtcdUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EtcdUrl::parse(s)
    }
}

impl AsRef<str> for EtcdUrl {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// Splits `host:port` the way Go's `net.SplitHostPort` does (brackets for
/// IPv6, no other colon in the host).
fn split_host_port(authority: &str) -> Option<(&str, &str)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return (!port.contains(':')).then_some((host, port));
    }
    let (host, port) = authority.rsplit_once(':')?;
    (!host.contains(':') && !host.contains('[') && !host.contains(']')).then_some((host, port))
}

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `--initial-cluster`.
    New,
    /// Join a cluster this member was already added to (`MemberAdd`).
    Existing,
}

impl ClusterState {
    fn parse(text: &str) -> Result<ClusterState, String> {
        match text {
            "new" => Ok(ClusterState::New),
            "existing" => Ok(ClusterState::Existing),
            _ => Err(r#"valid values are "new" and "existing""#.to_string()),
        }
    }
}

/// `--log-level`, with zap's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    DPanic,
    Panic,
    Fatal,
}

impl LogLevel {
    fn parse(text: &str) -> Result<LogLevel, String> {
        // zap accepts its level names in lower or upper case, and "" as info.
        Ok(match text.to_ascii_lowercase().as_str() {
            "debug" => LogLevel::Debug,
            "" | "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            "dpanic" => LogLevel::DPanic,
            "panic" => LogLevel::Panic,
            "fatal" => LogLevel::Fatal,
            _ => {
                return Err(
                    "valid levels are debug, info, warn, error, dpanic, panic and fatal"
                        .to_string(),
                )
            }
        })
    }

    /// zap's name for the level.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::DPanic => "dpanic",
            LogLevel::Panic => "panic",
            LogLevel::Fatal => "fatal",
        }
    }

    /// The `tracing` filter directive with the same cut-off. zap's levels
    /// above error only add "and then crash", which cairn's logger does not
    /// do, so they filter like error.
    pub fn tracing_directive(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error | LogLevel::DPanic | LogLevel::Panic | LogLevel::Fatal => "error",
        }
    }
}

/// `--log-format` (etcd 3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Console,
}

/// `--auto-compaction-mode` and `--auto-compaction-retention`, interpreted as
/// etcd does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    Disabled,
    /// Keep this much history (a bare number in periodic mode means hours).
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(u64),
}

/// What the server runs with: etcd's flags, parsed and validated.
///
/// Bootstrap-only checks (this member's entry in `--initial-cluster`) are
/// separate, in [`Config::verify_bootstrap`] and
/// [`Config::verify_join_existing`], because etcd ignores the initial-cluster
/// flags entirely once the data directory holds a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    /// All URL lists are sorted and de-duplicated, as etcd keeps them.
    pub listen_client_urls: Vec<EtcdUrl>,
    pub advertise_client_urls: Vec<EtcdUrl>,
    pub listen_peer_urls: Vec<EtcdUrl>,
    pub initial_advertise_peer_urls: Vec<EtcdUrl>,
    pub listen_metrics_urls: Vec<EtcdUrl>,
    /// Members by name (sorted), each with its peer URLs (sorted, as etcd
    /// stores them, so `peerURLs[0]` matches etcd's).
    pub initial_cluster: Vec<(String, Vec<EtcdUrl>)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub snapshot_count: u64,
    pub max_request_bytes: u64,
    pub max_txn_ops: u64,
    pub max_learners: i64,
    pub strict_reconfig_check: bool,
    /// As given: 0 means etcd's default of 2 GiB, a negative value disables
    /// the quota.
    pub quota_backend_bytes: i64,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub log_level: LogLevel,
    /// Sorted and de-duplicated; `default` means stderr.
    pub log_outputs: Vec<String>,
    /// `None` when not given: JSON, or text on a terminal.
    pub log_format: Option<LogFormat>,
    /// Effective interval: 0 is replaced by etcd's 10 minutes and shorter
    /// than 100 ms is raised to 100 ms, as etcd does.
    pub watch_progress_notify_interval: Duration,
    pub auto_compaction: AutoCompaction,
    /// Compare hashes with the peers before serving, on a restart
    /// (`--feature-gates=InitialCorruptCheck=true` or its old flag).
    pub initial_corrupt_check: bool,
    /// Between the leader's hash comparisons; zero: never.
    pub corrupt_check_time: Duration,
    /// Server-to-client keepalive pings (with the timeout: zero in either
    /// means gRPC's defaults, as etcd).
    pub grpc_keepalive_interval: Duration,
    /// How long a ping may go unanswered.
    pub grpc_keepalive_timeout: Duration,
    /// Streams per client connection.
    pub max_concurrent_streams: u32,
    /// `--cert-file`, `--trusted-ca-file`, ...: TLS on the client URLs.
    pub client_tls: TlsSide,
    /// `--peer-cert-file`, `--peer-trusted-ca-file`, ...: TLS on the peer
    /// URLs, accepting and dialling.
    pub peer_tls: TlsSide,
    /// `--cipher-suites`, `--tls-min-version`, `--tls-max-version`.
    pub tls_protocol: TlsProtocol,
    /// `--self-signed-cert-validity`, in years.
    pub self_signed_cert_validity: u64,
    /// Things to log once logging is up: ignored flags, unknown `ETCD_*`
    /// variables.
    pub warnings: Vec<String>,
}

impl Config {
    /// Parses a command line (`args` starts with the program name) without
    /// looking at the environment.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        Config::from_args_and_env(args, Vec::<(String, String)>::new())
    }

    /// Parses the process's command line and `ETCD_*` environment.
    pub fn from_env_and_args() -> Result<Config, ConfigError> {
        // Variables that are not Unicode cannot be etcd settings; skip them.
        let env = std::env::vars_os()
            .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)));
        Config::from_args_and_env(std::env::args_os(), env)
    }

    /// Parses a command line (`args` starts with the program name) and the
    /// given environment variables; the ones not starting with `ETCD_` are
    /// ignored.
    pub fn from_args_and_env<I, T, E, K, V>(args: I, env: E) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
        E: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let args = args
            .into_iter()
            .skip(1)
            .map(|arg| {
                arg.into()
                    .into_string()
                    .map_err(|arg| ConfigError::NotUnicode(arg.to_string_lossy().into_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let normalized = normalize_args(args)?;
        let matches = command()
            .try_get_matches_from(normalized)
            .map_err(from_clap_error)?;

        let mut settings = Settings::default();
        for spec in FLAGS {
            if matches.value_source(spec.name) == Some(ValueSource::CommandLine) {
                if let Some(value) = matches.get_one::<String>(spec.name) {
                    settings.values.insert(
                        spec.name,
                        Setting {
                            raw: value.clone(),
                            origin: Origin::Flag,
                        },
                    );
                }
            }
        }
        // etcd prints its version before reading the environment or checking
        // anything else.
        if settings.get("version", parse_go_bool)? {
            return Err(ConfigError::DisplayVersion(Config::version_text()));
        }
        let mut warnings = Vec::new();
        let env: Vec<(String, String)> =
            env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        // As etcd: a config file, named by the flag or ETCD_CONFIG_FILE,
        // replaces every other flag and variable.
        let file = match settings.values.get("config-file") {
            Some(s) => Some(s.raw.clone()),
            None => env
                .iter()
                .find(|(k, v)| k == "ETCD_CONFIG_FILE" && !v.is_empty())
                .map(|(_, v)| v.clone()),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::Invalid(format!("open {path}: {e}")))?;
            let settings = Settings::from_config_file(&path, &text, &mut warnings)?;
            warnings.push(format!(
                "loaded server configuration from {path}; other configuration command line \
                 flags and environment variables are ignored"
            ));
            return Config::build(&settings, warnings);
        }
        settings.apply_env(env, &mut warnings)?;
        Config::build(&settings, warnings)
    }

    /// What `cairn --version` prints, in the shape of `etcd --version`.
    pub fn version_text() -> String {
        format!(
            "cairn Version: {CAIRN_VERSION}\netcd API Version: {ETCD_API_VERSION}\n\
             Git SHA: {}\nOS/Arch: {}/{}\n",
            GIT_SHA.unwrap_or("Not provided"),
            std::env::consts::OS,
            std::env::consts::ARCH,
        )
    }

    /// `--election-timeout` in heartbeats, which is what raft is given.
    pub fn election_ticks(&self) -> usize {
        (self.election_timeout.as_millis() / self.heartbeat_interval.as_millis()) as usize
    }

    pub fn is_new_cluster(&self) -> bool {
        self.initial_cluster_state == ClusterState::New
    }

    /// This member's entry in `--initial-cluster`, if any.
    pub fn initial_cluster_member(&self) -> Option<&[EtcdUrl]> {
        self.initial_cluster
            .iter()
            .find(|(name, _)| *name == self.name)
            .map(|(_, urls)| urls.as_slice())
    }

    /// etcd's checks before bootstrapping a new cluster from an empty data
    /// directory: this member is in `--initial-cluster` with exactly its
    /// `--initial-advertise-peer-urls`, and no peer URL appears twice.
    ///
    /// Unlike etcd, URLs that differ as text are not resolved through DNS to
    /// see whether they name the same address; they must be written alike.
    pub fn verify_bootstrap(&self) -> Result<(), ConfigError> {
        let own = self.local_member()?;
        let own_text: BTreeSet<&str> = own.iter().map(EtcdUrl::as_str).collect();
        let advertised: BTreeSet<&str> = self
            .initial_advertise_peer_urls
            .iter()
            .map(EtcdUrl::as_str)
            .collect();
        let advertised_list = self
            .initial_advertise_peer_urls
            .iter()
            .map(EtcdUrl::as_str)
            .collect::<Vec<_>>()
            .join(",");
        let missing: Vec<String> = own_text
            .difference(&advertised)
            .map(|url| format!("{}={url}", self.name))
            .collect();
        if !missing.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "--initial-cluster has {} but missing from --initial-advertise-peer-urls={advertised_list}",
                missing.join(",")
            )));
        }
        let extra: Vec<&str> = advertised.difference(&own_text).copied().collect();
        if !extra.is_empty() {
            let advertised_map = self
                .initial_advertise_peer_urls
                .iter()
                .map(|url| format!("{}={url}", self.name))
                .collect::<Vec<_>>()
                .join(",");
            return Err(ConfigError::Invalid(format!(
                "--initial-advertise-peer-urls has {} but missing from --initial-cluster={advertised_map}",
                extra.join(",")
            )));
        }
        self.check_duplicate_peer_urls()
    }

    /// etcd's checks before joining an existing cluster with an empty data
    /// directory (`--initial-cluster-state existing`).
    pub fn verify_join_existing(&self) -> Result<(), ConfigError> {
        self.local_member()?;
        self.check_duplicate_peer_urls()
    }

    fn local_member(&self) -> Result<&[EtcdUrl], ConfigError> {
        self.initial_cluster_member().ok_or_else(|| {
            ConfigError::Invalid(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                self.name
            ))
        })
    }

    fn check_duplicate_peer_urls(&self) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        let duplicate = self
            .initial_cluster
            .iter()
            .flat_map(|(_, urls)| urls)
            .any(|url| !seen.insert(url.as_str()));
        if duplicate {
            return Err(ConfigError::Invalid(format!(
                "initial cluster {} has duplicate url",
                initial_cluster_text(&self.initial_cluster)
            )));
        }
        Ok(())
    }

    fn build(settings: &Settings, mut warnings: Vec<String>) -> Result<Config, ConfigError> {
        for spec in FLAGS {
            if let Some(setting) = settings.values.get(spec.name) {
                check_unimplemented(spec, setting, &mut warnings)?;
            }
        }

        let name = settings.get("name", parse_text)?;
        let data_dir = match settings.get("data-dir", parse_text)? {
            dir if dir.is_empty() => PathBuf::from(format!("{name}.etcd")),
            dir => PathBuf::from(dir),
        };

        // Logging first, as etcd does, so that its errors come before others.
        match settings.get("logger", parse_text)?.as_str() {
            "zap" => {}
            "capnslog" => {
                return Err(ConfigError::Invalid(
                    "--logger=capnslog is removed in v3.5".into(),
                ))
            }
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown logger option {other:?}"
                )))
            }
        }
        let mut log_outputs = settings.get("log-outputs", parse_strings)?;
        if log_outputs.is_empty() {
            log_outputs.push("default".to_string());
        }
        if log_outputs.len() > 1 && log_outputs.iter().any(|o| o == "default") {
            return Err(ConfigError::Invalid(
                "multi logoutput for \"default\" is not supported yet".into(),
            ));
        }
        let log_level = settings.get("log-level", LogLevel::parse)?;
        let log_format = settings.get("log-format", parse_log_format)?;

        let listen_peer_urls = settings.get_urls("listen-peer-urls")?;
        let listen_client_urls = settings.get_urls("listen-client-urls")?;
        let listen_metrics_urls = settings.get_urls("listen-metrics-urls")?;
        let initial_advertise_peer_urls = settings.get_urls("initial-advertise-peer-urls")?;
        let advertise_client_urls = settings.get_urls("advertise-client-urls")?;
        for (flag, urls) in [
            ("listen-peer-urls", &listen_peer_urls),
            ("listen-client-urls", &listen_client_urls),
            ("listen-metrics-urls", &listen_metrics_urls),
            ("initial-advertise-peer-urls", &initial_advertise_peer_urls),
            ("advertise-client-urls", &advertise_client_urls),
        ] {
            refuse_unsupported_schemes(flag, urls)?;
        }
        for urls in [&listen_peer_urls, &listen_client_urls, &listen_metrics_urls] {
            check_bind_urls(urls)?;
        }

        let initial_cluster_state = settings.get("initial-cluster-state", ClusterState::parse)?;
        let initial_cluster_token = settings.get("initial-cluster-token", parse_text)?;
        let initial_cluster =
            if settings.raw("initial-cluster") == DEFAULT_INITIAL_CLUSTER && name != DEFAULT_NAME {
                // etcd names an unnamed member "default" here too.
                let member = if name.is_empty() {
                    DEFAULT_NAME
                } else {
                    name.as_str()
                };
                vec![(member.to_string(), initial_advertise_peer_urls.clone())]
            } else {
                settings.get("initial-cluster", parse_initial_cluster)?
            };
        for (_, urls) in &initial_cluster {
            refuse_unsupported_schemes("initial-cluster", urls)?;
        }

        let heartbeat_ms = settings.get("heartbeat-interval", parse_uint)?;
        let election_ms = settings.get("election-timeout", parse_uint)?;
        if heartbeat_ms == 0 {
            return Err(ConfigError::Invalid(format!(
                "--heartbeat-interval must be >0 (set to {heartbeat_ms}ms)"
            )));
        }
        if election_ms == 0 {
            return Err(ConfigError::Invalid(format!(
                "--election-timeout must be >0 (set to {election_ms}ms)"
            )));
        }
        if heartbeat_ms.saturating_mul(5) > election_ms {
            return Err(ConfigError::Invalid(format!(
                "--election-timeout[{election_ms}ms] should be at least as 5 times as \
                 --heartbeat-interval[{heartbeat_ms}ms]"
            )));
        }
        if election_ms > MAX_ELECTION_TIMEOUT_MS {
            return Err(ConfigError::Invalid(format!(
                "--election-timeout[{election_ms}ms] is too long, and should be set less than \
                 {MAX_ELECTION_TIMEOUT_MS}ms"
            )));
        }

        // etcd drops the default advertised client URL once the listening
        // ones are chosen, rather than advertise a URL nobody listens on.
        if settings.is_set("listen-client-urls") && !settings.is_set("advertise-client-urls") {
            return Err(ConfigError::Invalid(
                "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                    .into(),
            ));
        }

        let auto_compaction = parse_auto_compaction(
            &settings.get("auto-compaction-mode", parse_text)?,
            &settings.get("auto-compaction-retention", parse_text)?,
        )?;

        const OLD_PROGRESS: &str = "experimental-watch-progress-notify-interval";
        const NEW_PROGRESS: &str = "watch-progress-notify-interval";
        if settings.is_set(OLD_PROGRESS) && settings.is_set(NEW_PROGRESS) {
            return Err(ConfigError::Invalid(format!(
                "cannot set --{OLD_PROGRESS} and --{NEW_PROGRESS} at the same time, please use \
                 --{NEW_PROGRESS} only"
            )));
        }
        let progress_flag = if settings.is_set(OLD_PROGRESS) {
            OLD_PROGRESS
        } else {
            NEW_PROGRESS
        };
        let mut watch_progress_notify_interval =
            settings.get(progress_flag, parse_duration_flag)?;
        if watch_progress_notify_interval.is_zero() {
            watch_progress_notify_interval = DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL;
        } else if watch_progress_notify_interval < MIN_WATCH_PROGRESS_NOTIFY_INTERVAL {
            warnings.push(format!(
                "--{progress_flag} raised to the minimum of {MIN_WATCH_PROGRESS_NOTIFY_INTERVAL:?}"
            ));
            watch_progress_notify_interval = MIN_WATCH_PROGRESS_NOTIFY_INTERVAL;
        }

        let gates = settings.get("feature-gates", parse_feature_gates)?;
        const OLD_INITIAL_CHECK: &str = "experimental-initial-corrupt-check";
        let initial_corrupt_check = match gates.get(INITIAL_CORRUPT_CHECK) {
            Some(on) if settings.is_set(OLD_INITIAL_CHECK) => {
                let old = settings.get(OLD_INITIAL_CHECK, parse_go_bool)?;
                return Err(ConfigError::Invalid(format!(
                    "cannot specify both flags: --{OLD_INITIAL_CHECK}={old} and \
                     --feature-gates={INITIAL_CORRUPT_CHECK}={on} at the same time, please just \
                     use --feature-gates={INITIAL_CORRUPT_CHECK}={on}"
                )));
            }
            Some(on) => *on,
            None => settings.get(OLD_INITIAL_CHECK, parse_go_bool)?,
        };
        // Checked, though h2 has no ping policy to enforce it with: cairn
        // takes client pings at any rate (grpc-go would cut off faster ones).
        settings.get("grpc-keepalive-min-time", parse_duration_flag)?;
        // As etcd 3.6: the old name, when given, wins.
        let corrupt_check_time = if settings.is_set("experimental-corrupt-check-time") {
            settings.get("experimental-corrupt-check-time", parse_duration_flag)?
        } else {
            settings.get("corrupt-check-time", parse_duration_flag)?
        };
        let tls = TlsFlags::read(
            settings,
            &listen_client_urls,
            &listen_peer_urls,
            &listen_metrics_urls,
            &mut warnings,
        )?;

        Ok(Config {
            name,
            data_dir,
            listen_client_urls,
            advertise_client_urls,
            listen_peer_urls,
            initial_advertise_peer_urls,
            listen_metrics_urls,
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token,
            snapshot_count: settings.get("snapshot-count", parse_uint)?,
            max_request_bytes: settings.get("max-request-bytes", parse_uint)?,
            max_txn_ops: settings.get("max-txn-ops", parse_uint)?,
            max_learners: settings.get("max-learners", parse_int)?,
            strict_reconfig_check: settings.get("strict-reconfig-check", parse_go_bool)?,
            quota_backend_bytes: settings.get("quota-backend-bytes", parse_int)?,
            heartbeat_interval: Duration::from_millis(heartbeat_ms),
            election_timeout: Duration::from_millis(election_ms),
            log_level,
            log_outputs,
            log_format,
            watch_progress_notify_interval,
            auto_compaction,
            initial_corrupt_check,
            corrupt_check_time,
            grpc_keepalive_interval: settings
                .get("grpc-keepalive-interval", parse_duration_flag)?,
            grpc_keepalive_timeout: settings.get("grpc-keepalive-timeout", parse_duration_flag)?,
            max_concurrent_streams: settings
                .get("max-concurrent-streams", parse_uint)?
                .min(u64::from(u32::MAX)) as u32,
            client_tls: tls.client,
            peer_tls: tls.peer,
            tls_protocol: tls.protocol,
            self_signed_cert_validity: settings.get("self-signed-cert-validity", parse_uint)?,
            warnings,
        })
    }
}

// ---------------------------------------------------------------------------
// TLS flags
// ---------------------------------------------------------------------------

/// The TLS flags of both sides, read and checked as etcd checks them before
/// it opens any file (the files are read when the member starts).
struct TlsFlags {
    client: TlsSide,
    peer: TlsSide,
    protocol: TlsProtocol,
}

impl TlsFlags {
    fn read(
        settings: &Settings,
        listen_client_urls: &[EtcdUrl],
        listen_peer_urls: &[EtcdUrl],
        listen_metrics_urls: &[EtcdUrl],
        warnings: &mut Vec<String>,
    ) -> Result<TlsFlags, ConfigError> {
        let (protocol, protocol_warnings) = TlsProtocol::parse(
            settings.get("cipher-suites", parse_strings)?,
            &settings.get("tls-min-version", parse_text)?,
            &settings.get("tls-max-version", parse_text)?,
        )
        .map_err(ConfigError::Invalid)?;
        warnings.extend(protocol_warnings);
        let client = TlsSide {
            cert_file: settings.get("cert-file", parse_path)?,
            key_file: settings.get("key-file", parse_path)?,
            client_cert_file: settings.get("client-cert-file", parse_path)?,
            client_key_file: settings.get("client-key-file", parse_path)?,
            trusted_ca_file: settings.get("trusted-ca-file", parse_path)?,
            client_cert_auth: settings.get("client-cert-auth", parse_go_bool)?,
            crl_file: settings.get("client-crl-file", parse_path)?,
            auto_tls: settings.get("auto-tls", parse_go_bool)?,
            allowed_cns: settings.client_allowed_cns.clone(),
            allowed_hostnames: settings.get("client-cert-allowed-hostname", parse_strings)?,
            // etcd checks SANs against the address on the peer port only.
            skip_client_san_verify: true,
        };
        let peer = TlsSide {
            cert_file: settings.get("peer-cert-file", parse_path)?,
            key_file: settings.get("peer-key-file", parse_path)?,
            client_cert_file: settings.get("peer-client-cert-file", parse_path)?,
            client_key_file: settings.get("peer-client-key-file", parse_path)?,
            trusted_ca_file: settings.get("peer-trusted-ca-file", parse_path)?,
            client_cert_auth: settings.get("peer-client-cert-auth", parse_go_bool)?,
            crl_file: settings.get("peer-crl-file", parse_path)?,
            auto_tls: settings.get("peer-auto-tls", parse_go_bool)?,
            allowed_cns: settings.get("peer-cert-allowed-cn", parse_strings)?,
            allowed_hostnames: settings.get("peer-cert-allowed-hostname", parse_strings)?,
            skip_client_san_verify: settings
                .get("peer-skip-client-san-verification", parse_go_bool)?
                || settings.get(
                    "experimental-peer-skip-client-san-verification",
                    parse_go_bool,
                )?,
        };
        for side in [&client, &peer] {
            side.check().map_err(ConfigError::Invalid)?;
        }
        for url in listen_client_urls {
            match url.scheme() {
                "https" if !client.has_cert() && !client.auto_tls => {
                    return Err(ConfigError::Invalid(format!(
                        "TLS key/cert (--cert-file, --key-file) must be provided for client url \
                         {url} with HTTPS scheme"
                    )))
                }
                "http" if client.has_cert() => warnings.push(format!(
                    "scheme is http or unix while key and cert files are present; ignoring key \
                     and cert files (client-url {url})"
                )),
                _ => {}
            }
        }
        // As etcd: https metrics URLs are served with the client TLS
        // settings.
        for url in listen_metrics_urls {
            if url.scheme() == "https" && !client.has_cert() && !client.auto_tls {
                return Err(ConfigError::Invalid(format!(
                    "cannot listen on TLS for {}: KeyFile and CertFile are not presented",
                    url.host_port()
                )));
            }
        }
        for url in listen_peer_urls {
            match url.scheme() {
                "https" if !peer.has_cert() && !peer.auto_tls => {
                    return Err(ConfigError::Invalid(format!(
                        "cannot listen on TLS for {}: KeyFile and CertFile are not presented",
                        url.host_port()
                    )))
                }
                "http" if peer.has_cert() => warnings.push(format!(
                    "scheme is HTTP while key and cert files are present; ignoring key and cert \
                     files (peer-url {url})"
                )),
                _ => {}
            }
        }
        if client.auto_tls && client.has_cert() {
            warnings.push("ignoring client auto TLS since certs given".into());
        }
        if peer.auto_tls && peer.has_cert() {
            warnings.push("ignoring peer auto TLS since certs given".into());
        }
        Ok(TlsFlags {
            client,
            peer,
            protocol,
        })
    }
}

// ---------------------------------------------------------------------------
// Command line and environment
// ---------------------------------------------------------------------------

/// Where a flag's value came from, for error messages.
#[derive(Clone, Debug)]
enum Origin {
    Flag,
    Env(String),
    /// A key of the `--config-file` YAML file (the file's path).
    File(String),
}

#[derive(Clone, Debug)]
struct Setting {
    raw: String,
    origin: Origin,
}

/// Flags given explicitly, on the command line or in the environment.
#[derive(Default)]
struct Settings {
    values: HashMap<&'static str, Setting>,
    /// `client-transport-security.allowed-cn` of a config file (etcd has
    /// no flag for it).
    client_allowed_cns: Vec<String>,
}

impl Settings {
    fn is_set(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// The value as written, or etcd's default.
    fn raw(&self, name: &str) -> &str {
        match self.values.get(name) {
            Some(setting) => &setting.raw,
            None => spec(name).default,
        }
    }

    /// The parsed value, or the parsed default.
    fn get<T>(&self, name: &str, parse: fn(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        let spec = spec(name);
        match self.values.get(name) {
            Some(setting) => {
                parse(&setting.raw).map_err(|reason| invalid_value(spec, setting, reason))
            }
            None => Ok(parse(spec.default)
                .unwrap_or_else(|e| panic!("default of --{name} does not parse: {e}"))),
        }
    }

    /// A URL list. Given an empty value, etcd keeps the default list.
    fn get_urls(&self, name: &str) -> Result<Vec<EtcdUrl>, ConfigError> {
        if self.raw(name).is_empty() {
            let default = spec(name).default;
            return Ok(parse_urls(default)
                .unwrap_or_else(|e| panic!("default of --{name} does not parse: {e}")));
        }
        self.get(name, parse_urls)
    }

    /// Adds the `ETCD_*` variables, with etcd's rules: empty ones are ignored,
    /// one that duplicates a command-line flag is an error.
    fn apply_env<E, K, V>(&mut self, env: E, warnings: &mut Vec<String>) -> Result<(), ConfigError>
    where
        E: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let by_key: HashMap<String, &'static FlagSpec> = FLAGS
            .iter()
            .map(|spec| (env_key(spec.name), spec))
            .collect();
        // Sorted, so that messages do not depend on the environment's order.
        let env: BTreeMap<String, String> = env
            .into_iter()
            .map(|(key, value)| (key.into(), value.into()))
            .filter(|(key, _)| key.starts_with("ETCD_"))
            .collect();
        for (key, value) in env {
            if key == "ETCD_VERSION" {
                warnings.push(
                    "cannot set special environment variable ETCD_VERSION; ignoring it".into(),
                );
                continue;
            }
            let Some(spec) = by_key.get(&key) else {
                if !SPECIAL_ENV.contains(&key.as_str()) {
                    // The value is left out: it could be a secret.
                    warnings.push(format!("unrecognized environment variable {key}"));
                }
                continue;
            };
            if matches!(
                self.values.get(spec.name),
                Some(Setting {
                    origin: Origin::Flag,
                    ..
                })
            ) {
                return Err(ConfigError::ShadowedEnv(key));
            }
            if !value.is_empty() {
                self.values.insert(
                    spec.name,
                    Setting {
                        raw: value,
                        origin: Origin::Env(key),
                    },
                );
            }
        }
        Ok(())
    }
}

impl Settings {
    /// The settings of an etcd YAML configuration file, read as etcd reads
    /// it: through its JSON keys (mostly the flags' names; TLS only in the
    /// `client-transport-security` and `peer-transport-security`
    /// sections), each value of its Go type — booleans, integers (a
    /// duration is an integer of nanoseconds), strings (URL lists
    /// comma-separated), YAML sequences for etcd's list fields. A value of
    /// another type is an error, as in etcd; a key etcd does not read is
    /// ignored, with a warning.
    fn from_config_file(
        path: &str,
        text: &str,
        warnings: &mut Vec<String>,
    ) -> Result<Settings, ConfigError> {
        use yaml_rust2::{Yaml, YamlLoader};
        let bad = |why: String| ConfigError::Invalid(format!("config file {path}: {why}"));
        let docs = YamlLoader::load_from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut settings = Settings::default();
        let root = match docs.into_iter().next() {
            None | Some(Yaml::Null) => return Ok(settings),
            Some(Yaml::Hash(h)) => h,
            Some(_) => return Err(bad("the top level is not a mapping".into())),
        };
        // (flag, file key, value)
        let mut entries: Vec<(String, String, Yaml)> = Vec::new();
        for (k, v) in root {
            let Some(key) = k.as_str().map(str::to_string) else {
                return Err(bad(format!("key {k:?} is not a string")));
            };
            let prefix = match key.as_str() {
                "client-transport-security" => "",
                "peer-transport-security" => "peer-",
                _ if FILE_ONLY_IN_SECTIONS.contains(&key.as_str()) => {
                    warnings.push(format!(
                        "field {key:?} in config file {path} is read only inside \
                         client-transport-security or peer-transport-security; ignoring it"
                    ));
                    continue;
                }
                _ => {
                    entries.push((key.clone(), key, v));
                    continue;
                }
            };
            match v {
                Yaml::Hash(inner) => {
                    for (ik, iv) in inner {
                        let Some(ik) = ik.as_str() else {
                            return Err(bad(format!("{key}: key {ik:?} is not a string")));
                        };
                        if !FILE_ONLY_IN_SECTIONS.contains(&ik)
                            && ![
                                "allowed-cn",
                                "allowed-hostname",
                                "skip-client-san-verification",
                            ]
                            .contains(&ik)
                        {
                            warnings.push(format!(
                                "unknown field {key}.{ik:?} in config file {path}; ignoring it"
                            ));
                            continue;
                        }
                        let field = format!("{key}.{ik}");
                        // etcd reads the client side's allowed CNs from the
                        // file only; no flag sets them.
                        if prefix.is_empty() && ik == "allowed-cn" {
                            settings.client_allowed_cns = yaml_list(&iv)
                                .ok_or_else(|| bad(go_type_error(&field, &iv, "[]string")))?;
                            continue;
                        }
                        if prefix.is_empty() && ik == "skip-client-san-verification" {
                            continue;
                        }
                        // 3.4's single-string form of the allowed names.
                        let iv = match iv {
                            Yaml::String(one) if ik.starts_with("allowed-") => {
                                Yaml::Array(vec![Yaml::String(one)])
                            }
                            other => other,
                        };
                        entries.push((security_flag(prefix, ik), field, iv));
                    }
                }
                Yaml::Null => {}
                other => return Err(bad(go_type_error(&key, &other, "securityConfig"))),
            }
        }
        for (flag, field, value) in entries {
            if flag == "config-file" {
                continue;
            }
            let Some(spec) = find_flag(&flag) else {
                warnings.push(format!(
                    "unknown field {field:?} in config file {path}; ignoring it"
                ));
                continue;
            };
            // etcd's list fields; cors and host-whitelist are strings there.
            let list =
                spec.kind == Kind::Strings && !["cors", "host-whitelist"].contains(&spec.name);
            let raw = match (&value, spec.kind) {
                (Yaml::Null, _) => continue,
                (Yaml::Boolean(b), Kind::Bool) => b.to_string(),
                (Yaml::Integer(i), Kind::Uint | Kind::Int) => i.to_string(),
                (Yaml::Integer(ns), Kind::Duration) => format!("{ns}ns"),
                (Yaml::Array(_), Kind::Strings) if list => yaml_list(&value)
                    .ok_or_else(|| bad(go_type_error(&field, &value, "[]string")))?
                    .join(","),
                (Yaml::String(text), Kind::Str | Kind::Urls) => text.clone(),
                (Yaml::String(text), Kind::Strings) if !list => text.clone(),
                (other, kind) => {
                    let go = match kind {
                        Kind::Bool | Kind::Retired => "bool",
                        Kind::Uint => "uint64",
                        Kind::Int => "int64",
                        Kind::Duration => "time.Duration",
                        Kind::Strings if list => "[]string",
                        _ => "string",
                    };
                    return Err(bad(go_type_error(&field, other, go)));
                }
            };
            // An empty string leaves etcd's default (e.g.
            // `initial-cluster-state: ''` is a new cluster).
            if raw.is_empty() {
                continue;
            }
            settings.values.insert(
                spec.name,
                Setting {
                    raw,
                    origin: Origin::File(path.to_string()),
                },
            );
        }
        Ok(settings)
    }
}

/// Keys of etcd's configuration file that only exist inside the TLS
/// sections (at the top level etcd does not read them).
const FILE_ONLY_IN_SECTIONS: &[&str] = &[
    "cert-file",
    "key-file",
    "client-cert-file",
    "client-key-file",
    "client-cert-auth",
    "trusted-ca-file",
    "auto-tls",
];

/// The flag a key of a `*-transport-security` section stands for.
fn security_flag(prefix: &str, key: &str) -> String {
    match (prefix, key) {
        ("peer-", "allowed-cn") => "peer-cert-allowed-cn".into(),
        ("peer-", "allowed-hostname") => "peer-cert-allowed-hostname".into(),
        ("", "allowed-hostname") => "client-cert-allowed-hostname".into(),
        _ => format!("{prefix}{key}"),
    }
}

/// A YAML sequence of strings (or one string: etcd 3.4's `allowed-cn`
/// and `allowed-hostname` are single strings, 3.5's lists).
fn yaml_list(v: &yaml_rust2::Yaml) -> Option<Vec<String>> {
    match v {
        yaml_rust2::Yaml::String(one) => Some(vec![one.clone()]),
        yaml_rust2::Yaml::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect(),
        yaml_rust2::Yaml::Null => Some(Vec::new()),
        _ => None,
    }
}

/// Go's JSON decoding error for a value of the wrong type.
fn go_type_error(field: &str, v: &yaml_rust2::Yaml, go_type: &str) -> String {
    use yaml_rust2::Yaml;
    let json = match v {
        Yaml::Boolean(_) => "bool",
        Yaml::Integer(_) | Yaml::Real(_) => "number",
        Yaml::String(_) => "string",
        Yaml::Array(_) => "array",
        Yaml::Hash(_) => "object",
        _ => "value",
    };
    format!(
        "json: cannot unmarshal {json} into Go struct field configYAML.{field} of type {go_type}"
    )
}

fn spec(name: &str) -> &'static FlagSpec {
    find_flag(name).unwrap_or_else(|| panic!("--{name} is not in FLAGS"))
}

fn invalid_value(spec: &FlagSpec, setting: &Setting, reason: String) -> ConfigError {
    match &setting.origin {
        Origin::Flag if matches!(spec.kind, Kind::Bool) => ConfigError::InvalidBool {
            flag: spec.name.to_string(),
            value: setting.raw.clone(),
        },
        Origin::Flag => ConfigError::InvalidFlagValue {
            flag: spec.name.to_string(),
            value: setting.raw.clone(),
            reason,
        },
        Origin::Env(key) => ConfigError::InvalidEnvValue {
            key: key.clone(),
            value: setting.raw.clone(),
            reason,
        },
        Origin::File(path) => ConfigError::Invalid(format!(
            "invalid value {:?} for {:?} in config file {path}: {reason}",
            setting.raw, spec.name
        )),
    }
}

/// Rewrites a Go-style command line into the form the clap parser takes
/// (`--name=value` for every value), reporting Go's `flag` errors on the way:
/// single-dash long flags, values that start with `-` and boolean flags that
/// never take the next argument are all Go semantics clap does not have.
fn normalize_args(args: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            // Go stops parsing at "--"; etcd then refuses whatever follows.
            return match args.next() {
                Some(extra) => Err(ConfigError::NotAFlag(extra)),
                None => Ok(out),
            };
        }
        let body = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(body) if !body.is_empty() => body,
            _ => return Err(ConfigError::NotAFlag(arg)),
        };
        if body.starts_with('-') || body.starts_with('=') {
            return Err(ConfigError::BadFlagSyntax(arg));
        }
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            out.push("--help".to_string());
            continue;
        }
        let spec = find_flag(name).ok_or_else(|| ConfigError::UnknownFlag(name.to_string()))?;
        let value = match value {
            Some(value) => Some(value),
            None if spec.kind.takes_separate_value() => Some(
                args.next()
                    .ok_or_else(|| ConfigError::MissingValue(name.to_string()))?,
            ),
            None => None,
        };
        out.push(match value {
            Some(value) => format!("--{name}={value}"),
            None => format!("--{name}"),
        });
    }
    Ok(out)
}

/// The clap command, generated from [`FLAGS`]. Values stay strings here;
/// they are checked afterwards so that flags and `ETCD_*` variables go
/// through the same parsers.
fn command() -> Command {
    let mut command = Command::new("cairn")
        .about("An etcd-compatible key-value server: etcd's v3 API over raft and RocksDB.")
        .after_help(
            "Every flag can also be set through ETCD_<FLAG>, e.g. ETCD_DATA_DIR. Other etcd \
             flags are accepted with a warning when ignoring them is harmless, and refused \
             otherwise.",
        )
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .args_override_self(true)
        .color(ColorChoice::Never)
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .action(ArgAction::Help)
                .help("Print this help and exit."),
        );
    for spec in FLAGS {
        let mut arg = Arg::new(spec.name)
            .long(spec.name)
            .action(ArgAction::Set)
            .hide(spec.support != Support::Implemented)
            .help(spec.help);
        arg = if spec.kind.takes_separate_value() {
            let value_name = match spec.kind {
                Kind::Urls => "urls",
                Kind::Strings => "list",
                Kind::Uint | Kind::Int => "n",
                Kind::Duration => "duration",
                _ => "value",
            };
            arg.num_args(1).value_name(value_name)
        } else {
            arg.num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .value_name("bool")
        };
        if !spec.default.is_empty() && spec.kind != Kind::Bool {
            arg = arg.default_value(spec.default).hide_default_value(false);
        }
        command = command.arg(arg);
    }
    command
}

fn from_clap_error(error: clap::Error) -> ConfigError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match error.kind() {
        ErrorKind::DisplayHelp => ConfigError::DisplayHelp(error.render().to_string()),
        ErrorKind::UnknownArgument => match error.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => {
                let name = arg.trim_start_matches('-');
                ConfigError::UnknownFlag(name.split('=').next().unwrap_or(name).to_string())
            }
            _ => ConfigError::Invalid(error.render().to_string()),
        },
        // normalize_args only lets well-formed, known flags through, so this
        // is not expected; keep clap's own text if it happens.
        _ => ConfigError::Invalid(error.render().to_string()),
    }
}

/// Warns about or refuses an explicitly set flag cairn does not implement.
fn check_unimplemented(
    spec: &FlagSpec,
    setting: &Setting,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let given = match &setting.origin {
        Origin::Flag => format!("--{}", spec.name),
        Origin::Env(key) => format!("{key} (--{})", spec.name),
        Origin::File(path) => format!("{:?} in config file {path}", spec.name),
    };
    match spec.support {
        Support::Implemented => Ok(()),
        Support::Retired => {
            warnings.push(format!(
                "flag {given} is no longer supported by etcd; ignoring it"
            ));
            Ok(())
        }
        Support::Ignored(_) | Support::Refused(_) => {
            let value = comparable(spec.kind, &setting.raw, spec.default)
                .map_err(|reason| invalid_value(spec, setting, reason))?;
            let default = comparable(spec.kind, spec.default, spec.default)
                .unwrap_or_else(|e| panic!("default of --{} does not parse: {e}", spec.name));
            if value == default {
                return Ok(());
            }
            match spec.support {
                Support::Refused(refusal) => {
                    let (why, instead) = refusal.explain();
                    Err(ConfigError::Unsupported(format!(
                        "cairn: flag {given} is not supported yet ({why}); refusing to start \
                         rather than {instead}"
                    )))
                }
                Support::Ignored(note) => {
                    warnings.push(format!(
                        "flag {given} is accepted for compatibility with etcd and ignored: {note}"
                    ));
                    Ok(())
                }
                Support::Implemented | Support::Retired => unreachable!(),
            }
        }
    }
}

/// A flag value in a form that compares equal when etcd would end up with
/// the same setting (`false` and `0`, `1m` and `60s`, list order).
#[derive(Debug, PartialEq)]
enum Comparable {
    Bool(bool),
    Text(String),
    Uint(u64),
    Int(i64),
    Duration(Duration),
    List(Vec<String>),
}

fn comparable(kind: Kind, raw: &str, default: &str) -> Result<Comparable, String> {
    Ok(match kind {
        Kind::Bool => Comparable::Bool(parse_go_bool(raw)?),
        Kind::Str | Kind::Retired => Comparable::Text(raw.to_string()),
        Kind::Uint => Comparable::Uint(parse_uint(raw)?),
        Kind::Int => Comparable::Int(parse_int(raw)?),
        Kind::Duration => Comparable::Duration(parse_duration_flag(raw)?),
        // etcd keeps the default list when given an empty one.
        Kind::Urls => Comparable::List(
            parse_urls(if raw.is_empty() { default } else { raw })?
                .iter()
                .map(|url| url.as_str().to_string())
                .collect(),
        ),
        Kind::Strings => Comparable::List(parse_strings(raw)?),
    })
}

// ---------------------------------------------------------------------------
// Value parsers (errors are the reason part of etcd's messages)
// ---------------------------------------------------------------------------

fn parse_text(text: &str) -> Result<String, String> {
    Ok(text.to_string())
}

/// Go's `strconv.ParseBool`.
const INITIAL_CORRUPT_CHECK: &str = "InitialCorruptCheck";

/// etcd 3.6's server feature gates. Only InitialCorruptCheck changes what
/// cairn does; the others tune etcd internals cairn does not have.
const FEATURE_GATES: &[&str] = &[
    "AllAlpha",
    "AllBeta",
    "CompactHashCheck",
    INITIAL_CORRUPT_CHECK,
    "LeaseCheckpoint",
    "LeaseCheckpointPersist",
    "SetMemberLocalAddr",
    "StopGRPCServiceOnDefrag",
    "TxnModeWriteWithSharedBuffer",
];

/// `--feature-gates`: `Name=bool` pairs separated by commas, with the
/// errors of Kubernetes' feature-gate parser that etcd uses.
fn parse_feature_gates(text: &str) -> Result<BTreeMap<String, bool>, String> {
    let mut gates = BTreeMap::new();
    for pair in text.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let Some((name, value)) = pair.split_once('=') else {
            return Err(format!("missing bool value for {pair}"));
        };
        let (name, value) = (name.trim(), value.trim());
        if !FEATURE_GATES.contains(&name) {
            return Err(format!("unrecognized feature gate: {name}"));
        }
        let on = parse_go_bool(value).map_err(|_| {
            format!("invalid value of {name}={value}, err: strconv.ParseBool: parsing {value:?}: invalid syntax")
        })?;
        gates.insert(name.to_string(), on);
    }
    Ok(gates)
}

fn parse_go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("parse error".to_string()),
    }
}

fn parse_uint(text: &str) -> Result<u64, String> {
    text.parse::<u64>().map_err(|e| number_error(&e))
}

fn parse_int(text: &str) -> Result<i64, String> {
    text.parse::<i64>().map_err(|e| number_error(&e))
}

fn number_error(error: &std::num::ParseIntError) -> String {
    use std::num::IntErrorKind;
    match error.kind() {
        IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => "value out of range".to_string(),
        _ => "parse error".to_string(),
    }
}

fn parse_duration_flag(text: &str) -> Result<Duration, String> {
    parse_go_duration(text).map_err(|e| e.to_string())
}

/// A comma-separated URL list, sorted and de-duplicated by text as etcd keeps
/// it. An empty list is allowed (`--listen-metrics-urls` defaults to one).
fn parse_urls(text: &str) -> Result<Vec<EtcdUrl>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let urls: BTreeSet<EtcdUrl> = text
        .split(',')
        .map(EtcdUrl::parse)
        .collect::<Result<_, _>>()?;
    Ok(urls.into_iter().collect())
}

/// A comma-separated list, sorted and de-duplicated as etcd keeps it.
/// A file path; empty means not given, as in etcd.
fn parse_path(text: &str) -> Result<Option<PathBuf>, String> {
    Ok((!text.is_empty()).then(|| PathBuf::from(text)))
}

fn parse_strings(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let set: BTreeSet<&str> = text.split(',').collect();
    Ok(set.into_iter().map(str::to_string).collect())
}

fn parse_log_format(text: &str) -> Result<Option<LogFormat>, String> {
    match text {
        "" => Ok(None),
        "json" => Ok(Some(LogFormat::Json)),
        "console" => Ok(Some(LogFormat::Console)),
        _ => Err(r#"valid formats are "json" and "console""#.to_string()),
    }
}

/// `name=url,name=url,...`; a member may be listed several times, once per
/// peer URL. Entries without `=` or with bad URLs are errors.
fn parse_initial_cluster(text: &str) -> Result<Vec<(String, Vec<EtcdUrl>)>, String> {
    let mut members: BTreeMap<String, Vec<EtcdUrl>> = BTreeMap::new();
    for entry in text.split(',').filter(|entry| !entry.is_empty()) {
        let (name, url) = entry.split_once('=').unwrap_or((entry, ""));
        members
            .entry(name.to_string())
            .or_default()
            .push(EtcdUrl::parse(url)?);
    }
    Ok(members
        .into_iter()
        .map(|(name, mut urls)| {
            urls.sort();
            (name, urls)
        })
        .collect())
}

/// etcd's text for an initial cluster: `name=url` pairs, sorted.
fn initial_cluster_text(cluster: &[(String, Vec<EtcdUrl>)]) -> String {
    let mut pairs: Vec<String> = cluster
        .iter()
        .flat_map(|(name, urls)| urls.iter().map(move |url| format!("{name}={url}")))
        .collect();
    pairs.sort();
    pairs.join(",")
}

fn refuse_unsupported_schemes(flag: &str, urls: &[EtcdUrl]) -> Result<(), ConfigError> {
    for url in urls {
        let (what, why, instead) = match url.scheme() {
            "unix" | "unixs" => (
                "unix socket URLs",
                "cairn listens on TCP only",
                "leave them unserved",
            ),
            _ => continue,
        };
        return Err(ConfigError::Unsupported(format!(
            "cairn: {what} in --{flag} are not supported yet ({why}); refusing to start rather \
             than {instead}"
        )));
    }
    Ok(())
}

/// Listening needs an address, not a name to resolve (except `localhost`).
fn check_bind_urls(urls: &[EtcdUrl]) -> Result<(), ConfigError> {
    for url in urls {
        let host = url.host();
        if host != "localhost" && host.parse::<IpAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "expected IP in URL for binding ({url})"
            )));
        }
    }
    Ok(())
}

fn parse_auto_compaction(mode: &str, retention: &str) -> Result<AutoCompaction, ConfigError> {
    let retention = if retention.is_empty() { "0" } else { retention };
    let retention_error = |reason: String| {
        ConfigError::Invalid(format!("error parsing CompactionRetention: {reason}"))
    };
    let compaction = match mode {
        "periodic" => match retention.parse::<u64>() {
            Ok(hours) => AutoCompaction::Periodic(Duration::from_secs(hours.saturating_mul(3600))),
            Err(_) => AutoCompaction::Periodic(
                parse_go_duration(retention).map_err(|e| retention_error(e.to_string()))?,
            ),
        },
        // etcd would read a duration here as that many nanoseconds' worth of
        // revisions; a number is the only sensible value.
        "revision" => AutoCompaction::Revision(retention.parse::<u64>().map_err(|_| {
            retention_error(format!(
                "{retention:?} is not a number of revisions (--auto-compaction-mode=revision)"
            ))
        })?),
        // etcd treats an empty mode as "no compaction".
        "" => AutoCompaction::Disabled,
        other => {
            return Err(ConfigError::Invalid(format!(
                "unknown auto-compaction-mode {other:?}"
            )))
        }
    };
    Ok(match compaction {
        AutoCompaction::Periodic(d) if d.is_zero() => AutoCompaction::Disabled,
        AutoCompaction::Revision(0) => AutoCompaction::Disabled,
        other => other,
    })
}

// ---------------------------------------------------------------------------
// Go durations
// ---------------------------------------------------------------------------

/// Why a Go duration did not parse; the texts are Go's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("time: invalid duration {0:?}")]
    Invalid(String),
    #[error("time: missing unit in duration {0:?}")]
    MissingUnit(String),
    #[error("time: unknown unit {unit:?} in duration {text:?}")]
    UnknownUnit { unit: String, text: String },
    /// Go accepts negative durations; no cairn setting has a use for one.
    #[error("negative duration {0:?} is not allowed")]
    Negative(String),
}

/// Parses a duration written for Go's `time.ParseDuration`: a sequence of
/// decimal numbers, each with an optional fraction and a unit (`ns`, `us`,
/// `µs`, `ms`, `s`, `m`, `h`), such as `300ms`, `1.5h` or `2h45m`; a bare `0`
/// is allowed. etcd's duration flags take this syntax.
pub fn parse_go_duration(text: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(text.to_string());
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_digits, after_int) = rest.split_at(int_len);
        let (frac_digits, after_number) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after_dot.len());
                after_dot.split_at(frac_len)
            }
            None => ("", after_int),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(invalid());
        }
        let unit_len = after_number
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after_number.len());
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(text.to_string()));
        }
        let (unit, after_unit) = after_number.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => {
                return Err(DurationError::UnknownUnit {
                    unit: unit.to_string(),
                    text: text.to_string(),
                })
            }
        };
        let int_value: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| invalid())?
        };
        let mut nanos = int_value.checked_mul(unit_nanos).ok_or_else(invalid)?;
        if !frac_digits.is_empty() {
            // Digits past the 18th cannot change the result by a nanosecond
            // for any unit up to hours; dropping them avoids overflow.
            let frac = &frac_digits[..frac_digits.len().min(18)];
            let scale = 10u128.pow(frac.len() as u32);
            let frac_value: u128 = frac.parse().map_err(|_| invalid())?;
            nanos += frac_value * unit_nanos / scale;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(invalid)?;
        // Go's durations are signed 64-bit nanoseconds.
        if total_nanos > i64::MAX as u128 {
            return Err(invalid());
        }
        rest = after_unit;
    }
    if negative && total_nanos != 0 {
        return Err(DurationError::Negative(text.to_string()));
    }
    Ok(Duration::from_nanos(total_nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::from_args(std::iter::once("cairn").chain(args.iter().copied()))
    }

    fn parse_env(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_args_and_env(
            std::iter::once("cairn").chain(args.iter().copied()),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    fn urls(config_urls: &[EtcdUrl]) -> Vec<&str> {
        config_urls.iter().map(EtcdUrl::as_str).collect()
    }

    /// Flags for a one-member cluster on the loopback address.
    const LOOPBACK: &[&str] = &[
        "--name=n1",
        "--listen-client-urls=http://127.0.0.1:2379",
        "--advertise-client-urls=http://127.0.0.1:2379",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=n1=http://127.0.0.1:2380",
    ];

    #[test]
    fn defaults_match_etcd() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.name, "default");
        assert_eq!(config.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(urls(&config.listen_client_urls), ["http://localhost:2379"]);
        assert_eq!(
            urls(&config.advertise_client_urls),
            ["http://localhost:2379"]
        );
        assert_eq!(urls(&config.listen_peer_urls), ["http://localhost:2380"]);
        assert_eq!(
            urls(&config.initial_advertise_peer_urls),
            ["http://localhost:2380"]
        );
        assert!(config.listen_metrics_urls.is_empty());
        assert_eq!(config.initial_cluster.len(), 1);
        assert_eq!(config.initial_cluster[0].0, "default");
        assert_eq!(
            urls(&config.initial_cluster[0].1),
            ["http://localhost:2380"]
        );
        assert_eq!(config.initial_cluster_state, ClusterState::New);
        assert_eq!(config.initial_cluster_token, "etcd-cluster");
        assert_eq!(config.snapshot_count, 10_000);
        assert_eq!(config.max_request_bytes, 1_572_864);
        assert_eq!(config.max_txn_ops, 128);
        assert_eq!(config.quota_backend_bytes, 0);
        assert_eq!(config.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(config.election_timeout, Duration::from_millis(1000));
        assert_eq!(config.election_ticks(), 10);
        assert_eq!(config.log_level, LogLevel::Info);
        assert_eq!(config.log_outputs, ["default"]);
        assert_eq!(config.log_format, None);
        assert_eq!(
            config.watch_progress_notify_interval,
            Duration::from_secs(600)
        );
        assert_eq!(config.auto_compaction, AutoCompaction::Disabled);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        config.verify_bootstrap().unwrap();
    }

    #[test]
    fn name_alone_names_the_initial_cluster_and_data_dir() {
        let config = parse(&["--name", "foo"]).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("foo.etcd"));
        assert_eq!(config.initial_cluster.len(), 1);
        assert_eq!(config.initial_cluster[0].0, "foo");
        assert_eq!(
            urls(&config.initial_cluster[0].1),
            ["http://localhost:2380"]
        );
        config.verify_bootstrap().unwrap();

        // The derived cluster follows the advertised peer URLs.
        let config = parse(&[
            "--name=foo",
            "--listen-peer-urls=http://127.0.0.1:12380",
            "--initial-advertise-peer-urls=http://127.0.0.1:12380",
        ])
        .unwrap();
        assert_eq!(
            urls(&config.initial_cluster[0].1),
            ["http://127.0.0.1:12380"]
        );
        config.verify_bootstrap().unwrap();
    }

    #[test]
    fn default_name_keeps_the_default_initial_cluster() {
        // etcd only derives the initial cluster for a non-default name, so
        // this fails exactly as `etcd` does with these flags.
        let config = parse(&[
            "--listen-peer-urls=http://127.0.0.1:23802",
            "--initial-advertise-peer-urls=http://127.0.0.1:23802",
        ])
        .unwrap();
        assert_eq!(
            config.verify_bootstrap().unwrap_err().to_string(),
            "--initial-cluster has default=http://localhost:2380 but missing from \
             --initial-advertise-peer-urls=http://127.0.0.1:23802"
        );
    }

    #[test]
    fn go_flag_syntax() {
        let config = parse(&[
            "-name",
            "a",
            "-data-dir=/var/lib/x",
            "--snapshot-count",
            "5",
            "--max-txn-ops=7",
            "-quota-backend-bytes=-1",
        ])
        .unwrap();
        assert_eq!(config.name, "a");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/x"));
        assert_eq!(config.snapshot_count, 5);
        assert_eq!(config.max_txn_ops, 7);
        assert_eq!(config.quota_backend_bytes, -1);

        // The last occurrence wins; a value may start with a dash.
        let config = parse(&["--name=a", "--name", "-b"]).unwrap();
        assert_eq!(config.name, "-b");
    }

    #[test]
    fn booleans_take_etcd_forms() {
        for (args, warned) in [
            (&["--enable-pprof"][..], true),
            (&["--enable-pprof=true"][..], true),
            (&["-enable-pprof=T"][..], true),
            (&["--enable-pprof=1"][..], true),
            (&["--enable-pprof=false"][..], false),
            (&["--enable-pprof=0"][..], false),
        ] {
            let config = parse(args).unwrap();
            assert_eq!(!config.warnings.is_empty(), warned, "{args:?}");
        }
        let err = parse(&["--enable-pprof=yes"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid boolean value "yes" for -enable-pprof: parse error"#
        );
        assert_eq!(err.exit_code(), 2);
        // A boolean never takes the next argument, so this is a stray word.
        let err = parse(&["--enable-pprof", "true"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "error verifying flags, 'true' is not a valid flag. See 'cairn --help'."
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn command_line_errors_read_like_etcd() {
        let err = parse(&["--foo"]).unwrap_err();
        assert_eq!(err.to_string(), "flag provided but not defined: -foo");
        assert_eq!(err.exit_code(), 2);
        assert_eq!(
            parse(&["-foo=bar"]).unwrap_err(),
            ConfigError::UnknownFlag("foo".into())
        );

        let err = parse(&["--name"]).unwrap_err();
        assert_eq!(err.to_string(), "flag needs an argument: -name");
        assert_eq!(err.exit_code(), 2);

        let err = parse(&["--snapshot-count=abc"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid value "abc" for flag -snapshot-count: parse error"#
        );
        assert_eq!(err.exit_code(), 2);

        let err = parse(&["--initial-cluster-state=foo"]).unwrap_err();
        assert!(err
            .to_string()
            .starts_with(r#"invalid value "foo" for flag -initial-cluster-state"#));

        assert_eq!(
            parse(&["foo"]).unwrap_err(),
            ConfigError::NotAFlag("foo".into())
        );
        assert_eq!(
            parse(&["--", "foo"]).unwrap_err(),
            ConfigError::NotAFlag("foo".into())
        );
        assert_eq!(
            parse(&["---name=x"]).unwrap_err(),
            ConfigError::BadFlagSyntax("---name=x".into())
        );
    }

    #[test]
    fn help_and_version() {
        for flag in ["-h", "--help", "-help"] {
            let err = parse(&[flag]).unwrap_err();
            assert_eq!(err.exit_code(), 0);
            let ConfigError::DisplayHelp(text) = err else {
                panic!("{flag}: {err:?}")
            };
            assert!(text.contains("--listen-client-urls"), "{text}");
            assert!(text.contains("--cert-file"), "{text}");
            // Flags cairn does not implement are not advertised.
            assert!(!text.contains("--auth-token"), "{text}");
        }
        let err = parse(&["--version"]).unwrap_err();
        assert_eq!(err.exit_code(), 0);
        let ConfigError::DisplayVersion(text) = err else {
            panic!("{err:?}")
        };
        assert!(
            text.starts_with(&format!("cairn Version: {CAIRN_VERSION}\n")),
            "{text}"
        );
        assert!(text.contains("etcd API Version: 3.5.21\n"), "{text}");
        assert_eq!(text, Config::version_text());
        // --version wins over problems found later, as in etcd.
        assert!(matches!(
            parse(&["--version", "--cert-file=/x"]),
            Err(ConfigError::DisplayVersion(_))
        ));
    }

    #[test]
    fn environment_variables() {
        let config = parse_env(
            &[],
            &[
                ("ETCD_DATA_DIR", "/data"),
                ("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:2379"),
                ("ETCD_ADVERTISE_CLIENT_URLS", "http://127.0.0.1:2379"),
                ("ETCD_SNAPSHOT_COUNT", "42"),
                ("ETCD_ENABLE_PPROF", "true"),
                ("ETCD_NAME", ""),
                ("ETCD_FOO", "bar"),
                ("ETCDCTL_API", "3"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert_eq!(config.name, "default", "an empty variable is ignored");
        assert_eq!(config.data_dir, PathBuf::from("/data"));
        assert_eq!(urls(&config.listen_client_urls), ["http://127.0.0.1:2379"]);
        assert_eq!(config.snapshot_count, 42);
        assert!(config
            .warnings
            .iter()
            .any(|w| w.contains("ETCD_ENABLE_PPROF (--enable-pprof)")));
        assert!(config
            .warnings
            .iter()
            .any(|w| w == "unrecognized environment variable ETCD_FOO"));
        assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
    }

    #[test]
    fn environment_and_flag_together_is_an_error() {
        for value in ["x", ""] {
            let err = parse_env(&["--name", "y"], &[("ETCD_NAME", value)]).unwrap_err();
            assert_eq!(
                err.to_string(),
                "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding \
                 command-line flag (either unset environment variable or disable flag)"
            );
            assert_eq!(err.exit_code(), 1);
        }
    }

    #[test]
    fn bad_environment_value_names_the_variable() {
        let err = parse_env(&[], &[("ETCD_SNAPSHOT_COUNT", "many")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid value "many" for ETCD_SNAPSHOT_COUNT: parse error"#
        );
        assert_eq!(err.exit_code(), 1);
        let err = parse_env(&[], &[("ETCD_ENABLE_PPROF", "yes")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid value "yes" for ETCD_ENABLE_PPROF: parse error"#
        );
        // ETCD_VERSION cannot ask for the version.
        let config = parse_env(&[], &[("ETCD_VERSION", "true")]).unwrap();
        assert_eq!(config.warnings.len(), 1);
    }

    #[test]
    fn url_lists_are_sorted_and_deduplicated() {
        let config = parse(&[
            "--listen-client-urls= http://127.0.0.2:2379,http://127.0.0.1:2379,http://127.0.0.2:2379",
            "--advertise-client-urls=http://b:1,http://a:1",
        ])
        .unwrap();
        assert_eq!(
            urls(&config.listen_client_urls),
            ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]
        );
        assert_eq!(
            urls(&config.advertise_client_urls),
            ["http://a:1", "http://b:1"]
        );
    }

    #[test]
    fn an_empty_url_list_keeps_the_default() {
        let config = parse(&["--advertise-client-urls=", "--listen-metrics-urls="]).unwrap();
        assert_eq!(
            urls(&config.advertise_client_urls),
            ["http://localhost:2379"]
        );
        assert!(config.listen_metrics_urls.is_empty());
        assert_eq!(parse(&["--log-outputs="]).unwrap().log_outputs, ["default"]);
    }

    #[test]
    fn url_text_is_etcds() {
        let url = EtcdUrl::parse(" HTTP://LocalHost:32580 ").unwrap();
        assert_eq!(url.as_str(), "http://LocalHost:32580");
        assert_eq!(url.host(), "LocalHost");
        assert_eq!(url.port(), 32580);
        assert_eq!(url.host_port(), "LocalHost:32580");
        assert_eq!(url.url().as_str(), "http://localhost:32580/");

        let url = EtcdUrl::parse("http://[::1]:2380").unwrap();
        assert_eq!(url.as_str(), "http://[::1]:2380");
        assert_eq!(url.host(), "::1");
        assert_eq!(url.host_port(), "[::1]:2380");

        // An explicit default port stays, unlike in url::Url.
        let url = EtcdUrl::parse("http://10.0.0.1:80").unwrap();
        assert_eq!(url.as_str(), "http://10.0.0.1:80");
        assert_eq!(url.port(), 80);
    }

    #[test]
    fn bad_urls_are_reported_with_etcds_texts() {
        for (value, reason) in [
            (
                "http://127.0.0.1:12379/",
                "URL must not contain a path: http://127.0.0.1:12379/",
            ),
            (
                "http://127.0.0.1:12379/x",
                "URL must not contain a path: http://127.0.0.1:12379/x",
            ),
            (
                "http://127.0.0.1",
                r#"URL address does not have the form "host:port": http://127.0.0.1"#,
            ),
            (
                "ftp://127.0.0.1:1",
                "URL scheme must be http, https, unix, or unixs: ftp://127.0.0.1:1",
            ),
            (
                "127.0.0.1:2379",
                "URL scheme must be http, https, unix, or unixs: 127.0.0.1:2379",
            ),
        ] {
            let err = parse(&[&format!("--listen-client-urls={value}")]).unwrap_err();
            assert_eq!(
                err,
                ConfigError::InvalidFlagValue {
                    flag: "listen-client-urls".into(),
                    value: value.into(),
                    reason: reason.into(),
                }
            );
            assert_eq!(
                err.to_string(),
                format!("invalid value {value:?} for flag -listen-client-urls: {reason}")
            );
        }
        assert!(EtcdUrl::parse("http://x:99999").is_err());
        assert!(EtcdUrl::parse("http://user@x:1").is_err());
        assert!(EtcdUrl::parse("http://x:1?a=b").is_err());
        assert!(EtcdUrl::parse("http://:1").is_err());
    }

    #[test]
    fn listening_needs_an_ip_address() {
        let err = parse(&[
            "--listen-client-urls=http://example.com:1",
            "--advertise-client-urls=http://example.com:1",
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected IP in URL for binding (http://example.com:1)"
        );
        // Advertising a name is fine.
        parse(&["--advertise-client-urls=http://example.com:2379"]).unwrap();
        parse(&["--listen-metrics-urls=http://[::]:2381"]).unwrap();
    }

    #[test]
    fn listen_client_urls_need_advertise_client_urls() {
        let err = parse(&["--listen-client-urls=http://127.0.0.1:23793"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--advertise-client-urls is required when --listen-client-urls is set explicitly"
        );
    }

    #[test]
    fn https_urls_need_a_certificate_and_unix_urls_are_refused() {
        let err = parse(&[
            "--listen-client-urls=https://127.0.0.1:2379",
            "--advertise-client-urls=https://127.0.0.1:2379",
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "TLS key/cert (--cert-file, --key-file) must be provided for client url \
             https://127.0.0.1:2379 with HTTPS scheme"
        );
        assert_eq!(err.exit_code(), 1);
        let err = parse(&[
            "--listen-peer-urls=https://127.0.0.1:2380",
            "--initial-advertise-peer-urls=https://127.0.0.1:2380",
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot listen on TLS for 127.0.0.1:2380: KeyFile and CertFile are not presented"
        );
        // Auto TLS stands in for the files.
        parse(&[
            "--listen-client-urls=https://127.0.0.1:2379",
            "--advertise-client-urls=https://127.0.0.1:2379",
            "--auto-tls",
            "--listen-peer-urls=https://127.0.0.1:2380",
            "--initial-advertise-peer-urls=https://127.0.0.1:2380",
            "--initial-cluster=default=https://127.0.0.1:2380",
            "--peer-auto-tls",
        ])
        .unwrap();
        // Other members' https URLs need nothing of this member.
        parse(&[
            "--name=a",
            "--initial-cluster=a=http://localhost:2380,b=https://b:2380",
        ])
        .unwrap();
        let err = parse(&["--listen-metrics-urls=https://127.0.0.1:2381"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot listen on TLS for 127.0.0.1:2381: KeyFile and CertFile are not presented"
        );
        parse(&[
            "--listen-metrics-urls=https://127.0.0.1:2381",
            "--cert-file=/c.crt",
            "--key-file=/c.key",
        ])
        .unwrap();
        let err = parse(&["--listen-metrics-urls=unix://localhost:1"]).unwrap_err();
        assert!(matches!(err, ConfigError::Unsupported(_)), "{err}");
    }

    #[test]
    fn tls_flag_checks_read_like_etcd() {
        let err = parse(&["--tls-min-version=TLS1.1"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unexpected TLS version "TLS1.1" (must be one of: TLS1.2, TLS1.3)"#
        );
        let err = parse(&["--cipher-suites=FOO"]).unwrap_err();
        assert_eq!(err.to_string(), r#"unexpected TLS cipher suite "FOO""#);
        let err = parse(&[
            "--peer-cert-allowed-cn=etcd",
            "--peer-cert-allowed-hostname=etcd.example",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("mutually exclusive"), "{err}");
        let config = parse(&[
            "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_RSA_WITH_AES_128_CBC_SHA",
            "--experimental-peer-skip-client-san-verification",
            "--peer-cert-allowed-cn=b,a",
            "--self-signed-cert-validity=3",
        ])
        .unwrap();
        assert!(config.peer_tls.skip_client_san_verify);
        assert_eq!(config.peer_tls.allowed_cns, ["a", "b"]);
        assert_eq!(config.self_signed_cert_validity, 3);
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        // Files given on plaintext URLs are ignored, with etcd's warning.
        let config = parse(&["--cert-file=/c", "--key-file=/k"]).unwrap();
        assert!(
            config.warnings[0].contains("ignoring key and cert files"),
            "{:?}",
            config.warnings
        );
    }

    #[test]
    fn initial_cluster_with_several_urls_per_member() {
        let config = parse(&[
            "--name=a",
            "--listen-peer-urls=http://127.0.0.1:1,http://127.0.0.2:2",
            "--initial-advertise-peer-urls=http://y:2,http://x:1",
            "--initial-cluster=b=http://z:3,a=http://y:2,,a=http://x:1",
            "--initial-cluster-token=tok",
            "--initial-cluster-state=existing",
        ])
        .unwrap();
        let members: Vec<(&str, Vec<&str>)> = config
            .initial_cluster
            .iter()
            .map(|(name, member_urls)| (name.as_str(), urls(member_urls)))
            .collect();
        assert_eq!(
            members,
            [
                ("a", vec!["http://x:1", "http://y:2"]),
                ("b", vec!["http://z:3"])
            ]
        );
        assert_eq!(config.initial_cluster_state, ClusterState::Existing);
        assert!(!config.is_new_cluster());
        assert_eq!(
            urls(config.initial_cluster_member().unwrap()),
            ["http://x:1", "http://y:2"]
        );
        config.verify_bootstrap().unwrap();
        config.verify_join_existing().unwrap();

        let err = parse(&["--initial-cluster=a=http://x:1/"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid value "a=http://x:1/" for flag -initial-cluster: URL must not contain a path: http://x:1/"#
        );
        let err = parse(&["--initial-cluster=a"]).unwrap_err();
        assert!(err.to_string().contains("URL scheme must be"), "{err}");
    }

    #[test]
    fn bootstrap_checks_read_like_etcd() {
        let config = parse(&["--name=zz", "--initial-cluster=a=http://localhost:2380"]).unwrap();
        assert_eq!(
            config.verify_bootstrap().unwrap_err().to_string(),
            r#"couldn't find local name "zz" in the initial cluster configuration"#
        );
        assert!(config.verify_join_existing().is_err());

        let config = parse(&[
            "--name=a",
            "--initial-cluster=a=http://localhost:2380,b=http://localhost:2380",
        ])
        .unwrap();
        assert_eq!(
            config.verify_bootstrap().unwrap_err().to_string(),
            "initial cluster a=http://localhost:2380,b=http://localhost:2380 has duplicate url"
        );
        assert!(config.verify_join_existing().is_err());

        let config = parse(&[
            "--name=a",
            "--listen-peer-urls=http://127.0.0.1:23806",
            "--initial-advertise-peer-urls=http://127.0.0.1:23806,http://127.0.0.2:23806",
            "--initial-cluster=a=http://127.0.0.1:23806",
        ])
        .unwrap();
        assert_eq!(
            config.verify_bootstrap().unwrap_err().to_string(),
            "--initial-advertise-peer-urls has http://127.0.0.2:23806 but missing from \
             --initial-cluster=a=http://127.0.0.1:23806,a=http://127.0.0.2:23806"
        );
        // Joining does not compare the advertised URLs.
        config.verify_join_existing().unwrap();

        let config = parse(LOOPBACK).unwrap();
        config.verify_bootstrap().unwrap();
    }

    #[test]
    fn member_id_of_parsed_urls_matches_etcd() {
        // Same flags as ids::tests::host_case_is_kept, read through the parser.
        let config = parse(&[
            "--name=Mixed",
            "--listen-peer-urls=http://127.0.0.1:32580",
            "--initial-advertise-peer-urls=HTTP://LocalHost:32580",
            "--initial-cluster=Mixed=HTTP://LocalHost:32580",
        ])
        .unwrap();
        config.verify_bootstrap().unwrap();
        let peer_urls = config.initial_cluster_member().unwrap();
        let id = crate::ids::member_id(peer_urls, &config.initial_cluster_token);
        assert_eq!(id, 9168771404639767028);
    }

    #[test]
    fn timing_checks() {
        let err = parse(&["--heartbeat-interval=0"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--heartbeat-interval must be >0 (set to 0ms)"
        );
        let err = parse(&["--heartbeat-interval=300"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]"
        );
        let err = parse(&["--election-timeout=60000"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--election-timeout[60000ms] is too long, and should be set less than 50000ms"
        );
        let config = parse(&["--heartbeat-interval=250", "--election-timeout=2500"]).unwrap();
        assert_eq!(config.election_ticks(), 10);
    }

    #[test]
    fn logging_flags() {
        let err = parse(&["--logger=capnslog"]).unwrap_err();
        assert_eq!(err.to_string(), "--logger=capnslog is removed in v3.5");
        let err = parse(&["--logger=foo"]).unwrap_err();
        assert_eq!(err.to_string(), r#"unknown logger option "foo""#);
        let err = parse(&["--log-outputs=default,stdout"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"multi logoutput for "default" is not supported yet"#
        );
        let config = parse(&[
            "--log-outputs=stdout,/var/log/x,stdout",
            "--log-level=DEBUG",
            "--log-format=console",
        ])
        .unwrap();
        assert_eq!(config.log_outputs, ["/var/log/x", "stdout"]);
        assert_eq!(config.log_level, LogLevel::Debug);
        assert_eq!(config.log_level.tracing_directive(), "debug");
        assert_eq!(config.log_format, Some(LogFormat::Console));
        assert!(parse(&["--log-level=verbose"]).is_err());
        assert_eq!(
            parse(&["--log-level=fatal"])
                .unwrap()
                .log_level
                .tracing_directive(),
            "error"
        );
    }

    #[test]
    fn watch_progress_notify_interval() {
        let five = Duration::from_secs(5);
        assert_eq!(
            parse(&["--watch-progress-notify-interval=5s"])
                .unwrap()
                .watch_progress_notify_interval,
            five
        );
        assert_eq!(
            parse(&["--experimental-watch-progress-notify-interval=5s"])
                .unwrap()
                .watch_progress_notify_interval,
            five
        );
        let err = parse(&[
            "--experimental-watch-progress-notify-interval=5s",
            "--watch-progress-notify-interval=5s",
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot set --experimental-watch-progress-notify-interval and \
             --watch-progress-notify-interval at the same time, please use \
             --watch-progress-notify-interval only"
        );
        let config = parse(&["--watch-progress-notify-interval=0"]).unwrap();
        assert_eq!(
            config.watch_progress_notify_interval,
            Duration::from_secs(600)
        );
        let config = parse(&["--watch-progress-notify-interval=10ms"]).unwrap();
        assert_eq!(
            config.watch_progress_notify_interval,
            Duration::from_millis(100)
        );
        assert_eq!(config.warnings.len(), 1);
        let err = parse(&["--watch-progress-notify-interval=5"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid value "5" for flag -watch-progress-notify-interval: time: missing unit in duration "5""#
        );
    }

    #[test]
    fn auto_compaction() {
        let compaction = |args: &[&str]| parse(args).map(|c| c.auto_compaction);
        assert_eq!(compaction(&[]).unwrap(), AutoCompaction::Disabled);
        assert_eq!(
            compaction(&["--auto-compaction-retention=1"]).unwrap(),
            AutoCompaction::Periodic(Duration::from_secs(3600))
        );
        assert_eq!(
            compaction(&["--auto-compaction-retention=30m"]).unwrap(),
            AutoCompaction::Periodic(Duration::from_secs(1800))
        );
        assert_eq!(
            compaction(&[
                "--auto-compaction-mode=revision",
                "--auto-compaction-retention=1000"
            ])
            .unwrap(),
            AutoCompaction::Revision(1000)
        );
        assert_eq!(
            compaction(&["--auto-compaction-mode=revision"]).unwrap(),
            AutoCompaction::Disabled
        );
        assert_eq!(
            compaction(&["--auto-compaction-mode=hourly"])
                .unwrap_err()
                .to_string(),
            r#"unknown auto-compaction-mode "hourly""#
        );
        assert!(compaction(&["--auto-compaction-retention=soon"]).is_err());
        assert!(compaction(&[
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=5m"
        ])
        .is_err());
    }

    #[test]
    fn refused_flags_only_refuse_a_non_default_value() {
        let err = parse(&["--auth-token=jwt"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cairn: flag --auth-token is not supported yet (authentication comes with a later \
             release); refusing to start rather than run with other security settings than asked"
        );
        assert_eq!(err.exit_code(), 1);
        let err = parse_env(&[], &[("ETCD_BCRYPT_COST", "12")]).unwrap_err();
        assert!(
            err.to_string().contains("ETCD_BCRYPT_COST (--bcrypt-cost)"),
            "{err}"
        );
        for harmless in [
            "--cert-file=",
            "--client-cert-auth=false",
            "--force-new-cluster=false",
            "--enable-v2=false",
            "--proxy=off",
            "--auth-token=simple",
            "--tls-min-version=TLS1.2",
            "--cors=*",
        ] {
            let config = parse(&[harmless]).unwrap();
            assert!(
                config.warnings.is_empty(),
                "{harmless}: {:?}",
                config.warnings
            );
        }
        for (flag, fragment) in [
            ("--wal-dir=/wal", "put data somewhere other than asked"),
            ("--force-new-cluster", "start with the old membership"),
            (
                "--discovery=https://discovery.etcd.io/x",
                "use --initial-cluster",
            ),
            ("--enable-v2", "v3 API only"),
            ("--auth-token=jwt,pub-key=a", "authentication"),
            (
                "--host-whitelist=a.example",
                "accept requests it was told to refuse",
            ),
            ("--listen-client-http-urls=http://127.0.0.1:1", "unserved"),
        ] {
            let err = parse(&[flag]).unwrap_err();
            assert!(
                matches!(err, ConfigError::Unsupported(_)),
                "{flag}: {err:?}"
            );
            assert!(err.to_string().contains(fragment), "{flag}: {err}");
        }
    }

    #[test]
    fn ignored_flags_warn_and_still_check_their_values() {
        let config = parse(&[
            "--experimental-compact-hash-check-enabled=true",
            "--enable-pprof=true",
            "--pre-vote=true",
            "--strict-reconfig-check",
            "--max-learners=1",
            "--grpc-keepalive-min-time=5000ms",
            "-v",
        ])
        .unwrap();
        assert_eq!(config.warnings.len(), 3, "{:?}", config.warnings);
        assert!(config.warnings.contains(
            &"flag --experimental-compact-hash-check-enabled is accepted for compatibility with \
              etcd and ignored: the compaction hash check is not implemented"
                .to_string()
        ));
        assert!(config.warnings.iter().any(|w| w.contains("--enable-pprof")));
        assert!(config
            .warnings
            .iter()
            .any(|w| w.contains("--v is no longer supported")));

        let err = parse(&["--max-learners=abc"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid value "abc" for flag -max-learners: parse error"#
        );
        let err = parse(&["--pre-vote=maybe"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid boolean value "maybe" for -pre-vote: parse error"#
        );
    }

    /// etcd's YAML configuration file: keys are flags, TLS sections, YAML
    /// types; flags and ETCD_* variables beside it are ignored.
    #[test]
    fn config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.yaml");
        std::fs::write(
            &path,
            r#"
name: 'cp1'
data-dir: /var/lib/etcd
listen-client-urls: http://127.0.0.1:2379,http://10.0.0.5:2379
advertise-client-urls: http://10.0.0.5:2379
initial-cluster: cp1=http://10.0.0.5:2380
initial-advertise-peer-urls: http://10.0.0.5:2380
listen-peer-urls: http://10.0.0.5:2380
snapshot-count: 5000
heartbeat-interval: 200
election-timeout: 2000
strict-reconfig-check: false
quota-backend-bytes: 8589934592
watch-progress-notify-interval: 5000000000
log-outputs: [stdout, stderr]
auto-compaction-mode: revision
auto-compaction-retention: "1000"
feature-gates: InitialCorruptCheck=true
initial-cluster-state: ''
enable-v2: false
cors:
some-future-field: 1
cert-file: /top-level/is/not/read.crt
client-transport-security:
  cert-file: /pki/server.crt
  key-file: /pki/server.key
  trusted-ca-file: /pki/ca.crt
  client-cert-auth: true
  allowed-cn: [apiserver, healthcheck]
peer-transport-security:
  cert-file: /pki/peer.crt
  key-file: /pki/peer.key
  trusted-ca-file: /pki/ca.crt
  client-cert-auth: true
  allowed-cn: [etcd-peer]
"#,
        )
        .unwrap();
        let arg = format!("--config-file={}", path.display());
        let c = Config::from_args_and_env(
            ["cairn", &arg, "--name=ignored"],
            [("ETCD_SNAPSHOT_COUNT", "7")],
        )
        .unwrap();
        assert_eq!(c.name, "cp1");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/etcd"));
        assert_eq!(
            urls(&c.listen_client_urls),
            ["http://10.0.0.5:2379", "http://127.0.0.1:2379"]
        );
        assert_eq!(c.snapshot_count, 5000);
        assert_eq!(c.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(c.election_timeout, Duration::from_secs(2));
        assert!(!c.strict_reconfig_check);
        assert_eq!(c.quota_backend_bytes, 8 << 30);
        assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(5));
        assert_eq!(c.log_outputs, ["stderr", "stdout"]);
        assert_eq!(c.auto_compaction, AutoCompaction::Revision(1000));
        assert!(c.initial_corrupt_check);
        assert_eq!(c.initial_cluster_state, ClusterState::New);
        assert!(
            c.warnings.iter().any(|w| w.contains("some-future-field")),
            "{:?}",
            c.warnings
        );
        // TLS from the sections only, client allowed CNs included.
        let pki = |f: &str| Some(PathBuf::from(format!("/pki/{f}")));
        assert_eq!(c.client_tls.cert_file, pki("server.crt"));
        assert_eq!(c.client_tls.trusted_ca_file, pki("ca.crt"));
        assert!(c.client_tls.client_cert_auth);
        assert_eq!(c.client_tls.allowed_cns, ["apiserver", "healthcheck"]);
        assert_eq!(c.peer_tls.cert_file, pki("peer.crt"));
        assert!(c.peer_tls.client_cert_auth);
        assert_eq!(c.peer_tls.allowed_cns, ["etcd-peer"]);
        assert!(
            c.warnings.iter().any(|w| w.contains("\"cert-file\"")),
            "{:?}",
            c.warnings
        );
        // Also named by ETCD_CONFIG_FILE.
        let p = path.display().to_string();
        let c = Config::from_args_and_env(["cairn"], [("ETCD_CONFIG_FILE", p.as_str())]).unwrap();
        assert_eq!(c.name, "cp1");

        // Values of the wrong type are refused, as etcd's JSON decoding
        // refuses them (each checked against etcd 3.4.23).
        for (yaml, want) in [
            ("auto-compaction-retention: 1", "cannot unmarshal number into Go struct field configYAML.auto-compaction-retention of type string"),
            ("grpc-keepalive-interval: 2h", "cannot unmarshal string into Go struct field configYAML.grpc-keepalive-interval of type time.Duration"),
            ("enable-pprof: \"true\"", "cannot unmarshal string into Go struct field configYAML.enable-pprof of type bool"),
            ("listen-client-urls: [http://a:1]", "cannot unmarshal array into Go struct field configYAML.listen-client-urls of type string"),
            ("log-outputs: stderr", "cannot unmarshal string into Go struct field configYAML.log-outputs of type []string"),
        ] {
            std::fs::write(&path, yaml).unwrap();
            let err = parse(&[&arg]).unwrap_err().to_string();
            assert!(err.ends_with(want), "{yaml}: {err}");
        }
        // Bad values of the right type name the key and the file.
        std::fs::write(&path, "initial-cluster-state: maybe\n").unwrap();
        let err = parse(&[&arg]).unwrap_err().to_string();
        assert!(err.contains("maybe"), "{err}");
        std::fs::write(&path, "wal-dir: /wal\n").unwrap();
        assert!(matches!(
            parse(&[&arg]).unwrap_err(),
            ConfigError::Unsupported(_)
        ));
        std::fs::write(&path, "- a\n- b\n").unwrap();
        assert!(parse(&[&arg]).is_err());
        let err = parse(&["--config-file=/nonexistent/etcd.yaml"]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/etcd.yaml"), "{err}");
    }

    #[test]
    fn corruption_check_flags() {
        let c = parse(&[]).unwrap();
        assert!(!c.initial_corrupt_check);
        assert_eq!(c.corrupt_check_time, Duration::ZERO);
        for args in [
            &["--feature-gates=InitialCorruptCheck=true"][..],
            &["--feature-gates=LeaseCheckpoint=false, InitialCorruptCheck=true"],
            &["--experimental-initial-corrupt-check"],
        ] {
            assert!(parse(args).unwrap().initial_corrupt_check, "{args:?}");
        }
        assert!(
            !parse(&["--feature-gates=InitialCorruptCheck=false"])
                .unwrap()
                .initial_corrupt_check
        );
        // etcd 3.6's refusal of both forms at once.
        let err = parse(&[
            "--experimental-initial-corrupt-check=true",
            "--feature-gates=InitialCorruptCheck=true",
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot specify both flags: --experimental-initial-corrupt-check=true and \
             --feature-gates=InitialCorruptCheck=true at the same time, please just use \
             --feature-gates=InitialCorruptCheck=true"
        );
        for (arg, reason) in [
            ("--feature-gates=Bogus=true", "unrecognized feature gate: Bogus"),
            ("--feature-gates=InitialCorruptCheck", "missing bool value for InitialCorruptCheck"),
            (
                "--feature-gates=InitialCorruptCheck=yes",
                "invalid value of InitialCorruptCheck=yes, err: strconv.ParseBool: parsing \"yes\": invalid syntax",
            ),
        ] {
            let err = parse(&[arg]).unwrap_err().to_string();
            assert!(err.contains("-feature-gates") && err.ends_with(reason), "{arg}: {err}");
        }
        assert_eq!(
            parse(&["--corrupt-check-time=3s"])
                .unwrap()
                .corrupt_check_time,
            Duration::from_secs(3)
        );
        assert_eq!(
            parse(&[
                "--corrupt-check-time=3s",
                "--experimental-corrupt-check-time=1m"
            ])
            .unwrap()
            .corrupt_check_time,
            Duration::from_secs(60)
        );
    }

    /// kubeadm's static pod command line (kubeadm 1.33, etcd 3.6 flags).
    fn kubeadm_args() -> Vec<&'static str> {
        vec![
            "--advertise-client-urls=https://10.0.0.5:2379",
            "--cert-file=/etc/kubernetes/pki/etcd/server.crt",
            "--client-cert-auth=true",
            "--data-dir=/var/lib/etcd",
            "--feature-gates=InitialCorruptCheck=true",
            "--initial-advertise-peer-urls=https://10.0.0.5:2380",
            "--initial-cluster=cp1=https://10.0.0.5:2380",
            "--key-file=/etc/kubernetes/pki/etcd/server.key",
            "--listen-client-urls=https://127.0.0.1:2379,https://10.0.0.5:2379",
            "--listen-metrics-urls=http://127.0.0.1:2381",
            "--listen-peer-urls=https://10.0.0.5:2380",
            "--name=cp1",
            "--peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt",
            "--peer-client-cert-auth=true",
            "--peer-key-file=/etc/kubernetes/pki/etcd/peer.key",
            "--peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt",
            "--snapshot-count=10000",
            "--trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt",
            "--watch-progress-notify-interval=5s",
        ]
    }

    #[test]
    fn kubeadm_command_line() {
        let config = parse(&kubeadm_args()).unwrap();
        assert_eq!(config.name, "cp1");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/etcd"));
        assert_eq!(urls(&config.listen_metrics_urls), ["http://127.0.0.1:2381"]);
        assert_eq!(
            urls(&config.listen_client_urls),
            ["https://10.0.0.5:2379", "https://127.0.0.1:2379"]
        );
        assert_eq!(
            config.watch_progress_notify_interval,
            Duration::from_secs(5)
        );
        assert_eq!(config.snapshot_count, 10_000);
        assert_eq!(
            config.client_tls.cert_file.as_deref(),
            Some(std::path::Path::new("/etc/kubernetes/pki/etcd/server.crt"))
        );
        assert!(config.client_tls.client_cert_auth);
        assert!(config.client_tls.requires_client_cert());
        assert_eq!(
            config.peer_tls.trusted_ca_file.as_deref(),
            Some(std::path::Path::new("/etc/kubernetes/pki/etcd/ca.crt"))
        );
        assert!(config.peer_tls.client_cert_auth);
        assert!(!config.peer_tls.skip_client_san_verify);
        assert_eq!(config.tls_protocol, TlsProtocol::default());
        assert!(config.initial_corrupt_check);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        config.verify_bootstrap().unwrap();
    }

    #[test]
    fn flag_table_is_consistent() {
        let mut names = BTreeSet::new();
        for spec in FLAGS {
            assert!(names.insert(spec.name), "--{} listed twice", spec.name);
            assert!(
                comparable(spec.kind, spec.default, spec.default).is_ok(),
                "default of --{} does not parse",
                spec.name
            );
            assert_eq!(
                spec.support == Support::Implemented,
                !spec.help.is_empty(),
                "--{}",
                spec.name
            );
        }
        // The clap command accepts every flag of the table.
        command().debug_assert();
    }

    #[test]
    fn go_durations() {
        let ok = |text: &str| parse_go_duration(text).unwrap();
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("10m"), Duration::from_secs(600));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("+2s"), Duration::from_secs(2));
        assert_eq!(ok("1h2m3s4ms5us6ns"), Duration::new(3723, 4_005_006));
        assert_eq!(ok("3µs"), Duration::from_micros(3));
        assert_eq!(ok("3μs"), Duration::from_micros(3));
        assert_eq!(ok("-0"), Duration::ZERO);
        assert_eq!(ok("2562047h"), Duration::from_secs(2_562_047 * 3600));

        assert_eq!(
            parse_go_duration(""),
            Err(DurationError::Invalid("".into()))
        );
        assert_eq!(
            parse_go_duration("s"),
            Err(DurationError::Invalid("s".into()))
        );
        assert_eq!(
            parse_go_duration("."),
            Err(DurationError::Invalid(".".into()))
        );
        assert_eq!(
            parse_go_duration("5"),
            Err(DurationError::MissingUnit("5".into()))
        );
        assert_eq!(
            parse_go_duration("5d").unwrap_err().to_string(),
            r#"time: unknown unit "d" in duration "5d""#
        );
        assert_eq!(
            parse_go_duration("-5s"),
            Err(DurationError::Negative("-5s".into()))
        );
        // Past Go's range of int64 nanoseconds.
        assert!(parse_go_duration("2562048h").is_err());
        assert!(parse_go_duration("99999999999999999999999h").is_err());
    }
}
