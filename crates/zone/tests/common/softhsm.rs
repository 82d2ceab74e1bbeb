//! The SoftHSM2 harness of the PKCS#11 zone tests.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once, when the module is initialised, and PKCS#11 state
//! (initialisation, login) is per process. So every test runs its body in a child process:
//! the parent (the normal `cargo test` thread) makes a fresh directory with its own
//! `softhsm2.conf` and token directory, initialises the tokens the test needs with
//! `softhsm2-util --init-token --free --label L --so-pin 12345678 --pin 1234`, then re-runs
//! the test binary with `--exact <test>` and `SOFTHSM2_CONF` set for that child only.
//! Tests therefore run in parallel without sharing any token or environment.
//!
//! `softhsm2-util` and the module (`/usr/lib/softhsm/libsofthsm2.so`, override with
//! `TRUSTRING_PKCS11_MODULE`) are required: without them these tests fail, they never skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use trustring_zone::pkcs11::SOFTHSM2_MODULE;

/// What a test body returns.
pub type TestResult = Result<(), Box<dyn std::error::Error>>;

const CHILD_ENV: &str = "TRUSTRING_PKCS11_TEST_CHILD";
const DIR_ENV: &str = "TRUSTRING_PKCS11_TEST_DIR";
const MODULE_ENV: &str = "TRUSTRING_PKCS11_MODULE";
const SO_PIN: &str = "12345678";
pub const PIN: &str = "1234";
pub const TOKEN_A: &str = "zone-a";
pub const TOKEN_B: &str = "zone-b";

/// What a test body gets: its private directory (tokens live in `dir/tokens`).
pub struct Env {
    pub dir: PathBuf,
}

impl Env {
    pub fn state_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

pub fn module() -> PathBuf {
    std::env::var_os(MODULE_ENV).map_or_else(|| PathBuf::from(SOFTHSM2_MODULE), PathBuf::from)
}

/// Runs `body` in a child process with its own SoftHSM2 config and the given tokens.
pub fn isolated(name: &str, tokens: &[&str], body: fn(&Env) -> TestResult) {
    if let Some(child) = std::env::var_os(CHILD_ENV) {
        if child == name {
            let dir = std::env::var_os(DIR_ENV).map(PathBuf::from);
            let dir = dir.expect("child started without its test directory");
            if let Err(e) = body(&Env { dir }) {
                panic!("{name}: {e}");
            }
        }
        return;
    }

    let module = module();
    assert!(
        module.exists(),
        "PKCS#11 module {} not found: install SoftHSM2 (apt-get install softhsm2) or set {MODULE_ENV}",
        module.display()
    );
    let tmp = tempfile::tempdir().expect("temporary directory");
    let tokens_dir = tmp.path().join("tokens");
    std::fs::create_dir(&tokens_dir).expect("token directory");
    let conf = tmp.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens_dir.display()
        ),
    )
    .expect("softhsm2.conf");
    for label in tokens {
        init_token(&conf, label);
    }

    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .env(DIR_ENV, tmp.path())
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("running the test body in a child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed in its child process ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

fn init_token(conf: &Path, label: &str) {
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label])
        .args(["--so-pin", SO_PIN, "--pin", PIN])
        .env("SOFTHSM2_CONF", conf)
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "softhsm2-util not found: the PKCS#11 zone tests need SoftHSM2 (apt-get install softhsm2)"
        ),
        Err(e) => panic!("running softhsm2-util: {e}"),
    };
    assert!(
        out.status.success(),
        "softhsm2-util --init-token {label} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test `name` whose body runs in a child process with its own SoftHSM2 tokens
/// ([`isolated`]).
macro_rules! token_test {
    ($(#[$meta:meta])* $name:ident, $tokens:expr, $body:expr) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            $crate::common::softhsm::isolated(stringify!($name), $tokens, $body);
        }
    };
}
