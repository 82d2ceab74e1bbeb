//! A background `trustring` process for the end-to-end tests: stdout and stderr to files,
//! waits on its output, stdin lines, and stopped by its PID (SIGTERM, then kill).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process whose stdout goes to a file; stopped by PID (SIGTERM, then kill).
pub struct Proc {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    out: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, out: PathBuf, stdin: bool) -> Self {
        let mut child = cmd
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        Self {
            stdin: child.stdin.take(),
            child: Some(child),
            out,
        }
    }

    /// The process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn text(&self) -> String {
        let mut t = std::fs::read_to_string(&self.out).unwrap_or_default();
        t.push_str(&std::fs::read_to_string(self.out.with_extension("err")).unwrap_or_default());
        t
    }

    /// Waits until the output holds `needle` `n` times.
    pub fn wait_count(&self, needle: &str, n: usize) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if self.text().matches(needle).count() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no {n} x {needle:?} in:\n{}", self.text());
    }

    pub fn wait_for(&self, needle: &str) {
        self.wait_count(needle, 1);
    }

    pub fn say(&mut self, line: &str) {
        let s = self.stdin.as_mut().expect("stdin piped");
        writeln!(s, "{line}").unwrap();
        s.flush().unwrap();
    }

    pub fn stop(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            if super::wait_timeout(&mut c, Duration::from_secs(15)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.text()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
