//! `cairn snapshot restore|status ...`: etcdctl's snapshot commands, with
//! etcdctl's flags, defaults, output and errors ("Error: ..." on stderr,
//! exit status 1).

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::restore::{restore, RestoreOptions};
use super::status;
use crate::server::identity::InitialMember;

#[derive(Parser, Debug)]
#[command(
    name = "cairn snapshot",
    about = "Restores or inspects etcd-format snapshot files"
)]
struct SnapshotCli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Restores a snapshot (from cairn or etcd) into a new data dir.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        #[arg(long, default_value = "default")]
        name: String,
        /// Defaults to `<name>.etcd`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Accepted for etcdctl's sake; cairn keeps its log with its data.
        #[arg(long)]
        wal_dir: Option<PathBuf>,
        #[arg(long, default_value = "default=http://localhost:2380")]
        initial_cluster: String,
        #[arg(long, default_value = "etcd-cluster")]
        initial_cluster_token: String,
        #[arg(long, default_value = "http://localhost:2380")]
        initial_advertise_peer_urls: String,
        #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
        skip_hash_check: bool,
    },
    /// Prints a snapshot file's hash, revision, total keys and size.
    Status {
        file: PathBuf,
        #[arg(short = 'w', long, default_value = "simple")]
        write_out: String,
    },
}

/// Runs `cairn snapshot ARGS...` (`args` after the word `snapshot`);
/// returns the process's exit status.
pub fn run(args: &[String]) -> i32 {
    let argv = std::iter::once("cairn snapshot".to_string()).chain(args.iter().cloned());
    let cli = match SnapshotCli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    match cli.command {
        Command::Restore {
            file,
            name,
            data_dir,
            wal_dir: _,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
            skip_hash_check,
        } => {
            let initial_cluster = match parse_initial_cluster(&initial_cluster) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.etcd")));
            let opts = RestoreOptions {
                file,
                name,
                data_dir,
                initial_cluster,
                initial_cluster_token,
                initial_advertise_peer_urls: split_list(&initial_advertise_peer_urls),
                skip_hash_check,
            };
            let on_terminal = std::io::stderr().is_terminal();
            let mut progress = |records: u64| {
                if on_terminal {
                    eprint!("\rrestored {records} revisions");
                }
            };
            match restore(&opts, &mut progress) {
                Ok(r) => {
                    if on_terminal {
                        eprintln!();
                    }
                    eprintln!(
                        "restored snapshot {} into {}: revision {}, {} revisions, {} leases; \
                         member {:x} of cluster {:x}",
                        opts.file.display(),
                        opts.data_dir.display(),
                        r.revision,
                        r.records,
                        r.leases,
                        r.member_id,
                        r.cluster_id
                    );
                    0
                }
                Err(e) => fail(&e),
            }
        }
        Command::Status { file, write_out } => {
            // etcdctl refuses an unknown format before it reads the file.
            if let Err(e) = status::check_format(&write_out) {
                eprintln!("Error: {e}");
                return status::EXIT_BAD_FEATURE;
            }
            let s = match status::status(&file) {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            match status::render(&s, &write_out) {
                Ok(text) => {
                    print!("{text}");
                    0
                }
                Err(e) => {
                    eprintln!("Error: {e}");
                    status::EXIT_BAD_FEATURE
                }
            }
        }
    }
}

fn fail(msg: &str) -> i32 {
    eprintln!("Error: {msg}");
    1
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

/// `name=url,name=url2,other=url3` into members (a name may repeat).
fn parse_initial_cluster(s: &str) -> Result<Vec<InitialMember>, String> {
    let mut out: Vec<InitialMember> = Vec::new();
    for item in split_list(s) {
        let (name, url) = item
            .split_once('=')
            .ok_or_else(|| format!("invalid initial cluster entry {item:?}"))?;
        match out.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url.to_string()),
            None => out.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
            }),
        }
    }
    Ok(out)
}
