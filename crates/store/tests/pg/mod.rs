//! A throwaway PostgreSQL cluster for the store tests: one per test binary, a fresh database
//! per test ([`database`]).
//!
//! The cluster is Debian's `postgresql` (`/usr/lib/postgresql/*/bin`, newest version, or
//! `TRUSTRING_PG_BIN`): `initdb` into a temporary directory, `pg_ctl start` listening on
//! 127.0.0.1 only, on a free port, with its socket in that directory and trust
//! authentication (nothing else can reach it). PostgreSQL refuses to run as root: as root the
//! directory is given to `nobody` and the server commands run through `runuser`.
//!
//! Stopping: a reaper process (its own process group, so a Ctrl-C of the tests does not kill
//! it first) waits for the test process to exit, however it exits, then stops the server by
//! its PID (SIGQUIT, immediate shutdown: the data is thrown away, so no shutdown checkpoint;
//! SIGKILL after 10 s) and removes the directory.
//!
//! Without the binaries the tests fail when `CI=true`, and are skipped loudly otherwise.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The running cluster.
pub(crate) struct Cluster {
    bin: PathBuf,
    port: u16,
    /// Stops the server once this process is gone ([`reap_after_exit`]); never waited for.
    _reaper: Child,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(1);

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` and `pg_ctl`.
fn find_bin() -> Option<PathBuf> {
    let usable = |bin: &Path| bin.join("initdb").exists() && bin.join("pg_ctl").exists();
    if let Some(dir) = std::env::var_os("TRUSTRING_PG_BIN") {
        let bin = PathBuf::from(dir);
        return usable(&bin).then_some(bin);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            usable(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `cmd args` as the cluster's owner (`nobody` when we are root).
fn as_owner(cmd: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

fn run(mut c: Command, what: &str) -> Output {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn id_of(flag: &str) -> u32 {
    let out = run(
        {
            let mut c = Command::new("id");
            c.args([flag, "nobody"]);
            c
        },
        "id nobody",
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("id {flag} nobody: {e}"))
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn start() -> Option<Cluster> {
    let Some(bin) = find_bin() else {
        let msg = "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb, \
                   pg_ctl; Debian package `postgresql`, or set TRUSTRING_PG_BIN)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}: the PostgreSQL store tests cannot run");
        }
        // Straight to the stderr file descriptor: the test harness captures `eprintln!`.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("\n!!!!! SKIPPING the PostgreSQL store tests: {msg} !!!!!\n\n").as_bytes(),
        );
        return None;
    };
    // Kept: the reaper removes it once the server is stopped.
    let dir = tempfile::Builder::new()
        .prefix("trustring-pg-")
        .tempdir()
        .unwrap()
        .keep();
    if is_root() {
        std::os::unix::fs::chown(&dir, Some(id_of("-u")), Some(id_of("-g"))).unwrap();
    }
    let data = dir.join("data");
    let mut initdb = as_owner(&bin.join("initdb"));
    initdb.arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--no-locale",
        "--no-sync",
    ]);
    run(initdb, "initdb");

    let mut last_err = String::new();
    for _ in 0..5 {
        let port = free_port();
        let mut pg_ctl = as_owner(&bin.join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=300",
                dir.display()
            ))
            .arg("start");
        let out = pg_ctl.stdin(Stdio::null()).output().unwrap();
        if !out.status.success() {
            last_err = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
            continue;
        }
        let pid: u32 = std::fs::read_to_string(data.join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no PID in postmaster.pid"));
        let reaper = reap_after_exit(pid, &dir);
        return Some(Cluster {
            bin,
            port,
            _reaper: reaper,
        });
    }
    panic!("PostgreSQL did not start: {last_err}");
}

/// Starts the reaper: once this process is gone, stop the server `pid` and remove `dir`.
fn reap_after_exit(pid: u32, dir: &Path) -> Child {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.2; done; \
         kill -QUIT {pid} 2>/dev/null; i=0; \
         while kill -0 {pid} 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         kill -KILL {pid} 2>/dev/null; {remove}",
        me = std::process::id(),
        // TRUSTRING_PG_KEEP=1 keeps the directory (and the server log) for a post-mortem.
        remove = if std::env::var_os("TRUSTRING_PG_KEEP").is_some() {
            String::new()
        } else {
            format!("rm -rf '{}'", dir.display())
        }
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// The cluster, started on first use; `None` when the tests are skipped.
pub(crate) fn cluster() -> Option<&'static Cluster> {
    CLUSTER.get_or_init(start).as_ref()
}

impl Cluster {
    /// The URL of database `db`.
    pub(crate) fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` in database `db` with `psql`; its output, or its error text.
    pub(crate) fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// A fresh, empty database: its name and URL; `None` when the tests are skipped.
pub(crate) fn database() -> Option<(String, String)> {
    let c = cluster()?;
    let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
    c.psql("postgres", &format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let url = c.url(&name);
    Some((name, url))
}
