//! An enrolled phone for the end-to-end tests: `trustring device init` + `enroll` in a
//! temporary zone (software, or a SoftHSM2 PKCS#11 token of its own).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Server;

/// The zone PIN / passphrase every test phone uses.
pub const PIN: &str = "1234";

/// Output of a `trustring device …` command that must succeed.
pub fn dev(env: &[(&str, &str)], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_trustring"))
        .arg("device")
        .args(args)
        .envs(env.iter().copied())
        .env("TRUSTRING_ZONE_PIN", PIN)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "device {args:?} failed: {text}");
    text
}

pub struct Phone {
    pub zone: PathBuf,
    pub env: Vec<(&'static str, String)>,
    pub _dir: tempfile::TempDir,
    /// Everything the device commands printed (scanned for secrets at the end).
    pub printed: String,
}

impl Phone {
    pub fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    pub fn cmd(&mut self, args: &[&str]) -> String {
        let zone = self.zone.to_str().unwrap().to_owned();
        let mut all = args.to_vec();
        all.extend(["--zone", &zone]);
        let out = dev(&self.env(), &all);
        self.printed.push_str(&out);
        out
    }

    pub fn device_json(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.zone.join("device.json")).unwrap())
            .unwrap()
    }
}

/// A SoftHSM2 token directory of its own, with one token labelled `trustring-zone`.
pub fn softhsm(dir: &Path) -> Vec<(&'static str, String)> {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    let st = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "trustring-zone"])
        .args(["--so-pin", "12345678", "--pin", PIN])
        .env("SOFTHSM2_CONF", &conf)
        .stdout(Stdio::null())
        .status()
        .expect("softhsm2-util is needed (apt-get install softhsm2; .ci/run does it)");
    assert!(st.success());
    vec![("SOFTHSM2_CONF", conf.to_str().unwrap().to_owned())]
}

/// Creates a zone, gets a code for alice and enrols the phone.
pub fn enrol(s: &Server, backend: &str) -> Phone {
    let dir = tempfile::tempdir().unwrap();
    let zone = dir.path().join("zone");
    let env = if backend == "pkcs11" {
        softhsm(dir.path())
    } else {
        Vec::new()
    };
    let mut p = Phone {
        zone,
        env,
        _dir: dir,
        printed: String::new(),
    };
    let out = p.cmd(&["init", "--backend", backend]);
    assert!(out.contains(&format!("security level: {backend}")), "{out}");
    let (c, b) = s.api("POST", "/api/v1/subscribers/alice/enrolments", None);
    assert_eq!(c, 201, "{b}");
    let code: serde_json::Value = serde_json::from_str(&b).unwrap();
    let code = code["code"].as_str().unwrap().to_owned();
    let server = format!("http://{}", s.http);
    let out = p.cmd(&[
        "enroll",
        "--server",
        &server,
        "--code",
        &code,
        "--accept-eula",
    ]);
    assert!(out.contains("enrolled: device d-"), "{out}");
    // The code works once.
    let zone2 = tempfile::tempdir().unwrap();
    let z2 = zone2.path().to_str().unwrap();
    dev(&[], &["init", "--zone", z2]);
    let out = Command::new(env!("CARGO_BIN_EXE_trustring"))
        .args(["device", "enroll", "--zone", z2, "--server", &server])
        .args(["--code", &code, "--accept-eula"])
        .env("TRUSTRING_ZONE_PIN", PIN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("code_used"));
    p
}
