//! `trustring line`: a plain PSTN phone line attached to the gateway over TR-ISUP
//! (`docs/isup.md`), steered from stdin; also the engine of `trustring device run --attach`,
//! which passes its device id and a prover backed by its trusted zone (the gateway has the
//! zone prove the phone's key before it gives the line the phone's number).
//!
//! The link is TLS with the gateway's key pinned: `--attach` takes the attach URI the
//! gateway prints (`trustring-line://HOST:PORT?fp=sha256:HEX`), or `HOST:PORT` with
//! `--gateway-fp`. Plain TCP only with `--danger-plain-lines` (to a gateway run with it).
//!
//! Events go to stdout, one line each (JSON lines with `--json`); command errors go to stderr.
//! Commands on stdin: `answer`, `hangup`, `hold`, `resume`, `swap`, `dial NUMBER`, `quit`.
//! At the end of stdin the line stays attached (so it can run unattended with
//! `--answer-after-ms`) until `quit`, SIGINT/SIGTERM, or the exchange closing the link.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use pstn::line::{Line, LineConfig, LineEvent, LineHandle, LineProver, LineTransport};
use pstn::msg::Number;
use std::io::BufRead;

use tokio::sync::mpsc;

/// `trustring line` options.
#[derive(Debug, clap::Args)]
pub(crate) struct LineArgs {
    /// The gateway's line port: the attach URI it prints
    /// (trustring-line://HOST:PORT?fp=sha256:HEX), or HOST:PORT with --gateway-fp.
    #[arg(long, value_name = "URI|ADDR")]
    pub(crate) attach: String,
    /// The gateway's line TLS key fingerprint to pin (sha256:HEX), when --attach is a bare
    /// HOST:PORT.
    #[arg(long, value_name = "sha256:HEX", env = "TRUSTRING_GATEWAY_FP")]
    pub(crate) gateway_fp: Option<String>,
    /// DANGER: attach over plain TCP, without TLS (only to a gateway run with
    /// --danger-plain-lines): the calls and the attach proof travel in clear, and nothing
    /// proves the other end is the gateway.
    #[arg(long, conflicts_with = "gateway_fp")]
    pub(crate) danger_plain_lines: bool,
    /// This line's number (`+` and digits).
    #[arg(long)]
    pub(crate) number: Number,
    /// Answer ringing calls by themselves after this many milliseconds.
    #[arg(long, value_name = "MS")]
    pub(crate) answer_after_ms: Option<u64>,
    /// Reject every call with cause 17 (user busy; the SIP caller gets 486).
    #[arg(long)]
    pub(crate) busy: bool,
    /// Append the received voice of answered calls to this WAV file (16-bit PCM, 8 kHz).
    #[arg(long, value_name = "FILE")]
    pub(crate) record: Option<PathBuf>,
    /// Send a sine of this frequency while a call is answered (silence otherwise).
    #[arg(long, value_name = "HZ")]
    pub(crate) play_tone: Option<f64>,
    /// Print events as JSON lines.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Attaches and runs the line until `quit`, a signal, or the exchange closing the link.
pub(crate) async fn run(
    args: LineArgs,
    device_id: Option<String>,
    prover: Option<Box<dyn LineProver>>,
) -> anyhow::Result<()> {
    if let Some(hz) = args.play_tone
        && !(hz > 0.0 && hz < 4000.0)
    {
        bail!("--play-tone must be between 0 and 4000 Hz (exclusive), got {hz}");
    }
    let (addr, transport) = attach_target(
        &args.attach,
        args.gateway_fp.as_deref(),
        args.danger_plain_lines,
    )?;
    if transport == LineTransport::Plain {
        eprintln!("warning: --danger-plain-lines: attaching over plain TCP, without TLS");
    }
    let mut cfg = LineConfig::new(addr.clone(), transport, args.number.clone());
    cfg.device_id = device_id;
    cfg.answer_after = args.answer_after_ms.map(Duration::from_millis);
    cfg.busy = args.busy;
    cfg.record = args.record.clone();
    cfg.play_tone_hz = args.play_tone;
    let (line, mut events) = Line::attach(cfg, prover).await.with_context(|| {
        format!(
            "cannot attach {} to the gateway at {addr} ({transport})",
            args.number
        )
    })?;

    let mut stdin = stdin_lines();
    let mut stdin_open = true;
    let mut stopping = false;
    let shutdown = crate::serve::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    print_event(&event, args.json);
                    if let LineEvent::Detached { reason } = event
                        && !stopping
                    {
                        bail!("line detached: {reason}");
                    }
                }
                None => return Ok(()),
            },
            input = stdin.recv(), if stdin_open && !stopping => match input {
                Some(text) => {
                    if run_command(&line, text.trim()).await {
                        stopping = true;
                        stop(&line);
                    }
                }
                None => stdin_open = false,
            },
            () = &mut shutdown, if !stopping => {
                stopping = true;
                stop(&line);
            }
        }
    }
}

/// The scheme of attach URIs.
pub(crate) const ATTACH_SCHEME: &str = "trustring-line";

/// Where to attach and how: the attach URI (`trustring-line://HOST:PORT?fp=sha256:HEX`), or
/// `HOST:PORT` with `gateway_fp`; plain TCP only when `plain` says so. Anything else is an
/// error: a line never falls back to plain TCP by itself.
pub(crate) fn attach_target(
    attach: &str,
    gateway_fp: Option<&str>,
    plain: bool,
) -> anyhow::Result<(String, LineTransport)> {
    let attach = attach.trim();
    let prefix = format!("{ATTACH_SCHEME}://");
    let (addr, uri_fp) = match attach.get(..prefix.len()) {
        Some(p) if p.eq_ignore_ascii_case(&prefix) => {
            let rest = &attach[prefix.len()..];
            let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
            let mut fp = None;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("fp", v)) if fp.is_none() => fp = Some(v.to_owned()),
                    _ => bail!("{attach}: unexpected {pair:?} in the attach URI"),
                }
            }
            (addr.trim_end_matches('/').to_owned(), fp)
        }
        _ if attach.contains("://") => {
            bail!("{attach}: expected {prefix}HOST:PORT?fp=sha256:HEX or HOST:PORT")
        }
        _ => (attach.to_owned(), None),
    };
    if addr.is_empty() || !addr.contains(':') {
        bail!("{attach}: no HOST:PORT");
    }
    let fp = match (uri_fp, gateway_fp) {
        (Some(a), Some(b)) if a.parse::<tls::Fingerprint>().ok() != b.parse().ok() => {
            bail!("the attach URI's fingerprint and --gateway-fp differ")
        }
        (a, b) => a.or(b.map(str::to_owned)),
    };
    match (fp, plain) {
        (Some(_), true) => bail!("--danger-plain-lines with a fingerprint to pin: choose one"),
        (Some(fp), false) => {
            let pin: tls::Fingerprint = fp
                .parse()
                .with_context(|| format!("the gateway fingerprint {fp:?}"))?;
            Ok((addr, LineTransport::Tls(pin)))
        }
        (None, true) => Ok((addr, LineTransport::Plain)),
        (None, false) => bail!(
            "{attach}: the gateway's key is needed to attach over TLS: give the attach URI the \
             gateway prints ({prefix}HOST:PORT?fp=sha256:…), or --gateway-fp sha256:… \
             (--danger-plain-lines for a plain-TCP gateway)"
        ),
    }
}

/// Lines of stdin, read on a plain thread (stdin has no portable non-blocking read); the
/// channel closes at the end of stdin.
pub(crate) fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts the shutdown; the loop goes on printing events until the line's last one.
fn stop(line: &LineHandle) {
    let line = line.clone();
    tokio::spawn(async move { line.shutdown().await });
}

fn print_event(event: &LineEvent, json: bool) {
    if json {
        match serde_json::to_string(event) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: cannot print event as JSON: {e}"),
        }
    } else {
        println!("{event}");
    }
}

/// Carries out one stdin command; true for `quit`.
async fn run_command(line: &LineHandle, text: &str) -> bool {
    let mut words = text.split_whitespace();
    let Some(command) = words.next() else {
        return false;
    };
    let result = match (command, words.next()) {
        ("answer", None) => line.answer().await,
        ("hangup", None) => line.hangup().await,
        ("hold", None) => line.hold().await,
        ("resume", None) => line.resume().await,
        ("swap", None) => line.swap().await,
        ("dial", Some(number)) => match number.parse::<Number>() {
            Ok(number) => line.dial(number).await,
            Err(e) => {
                eprintln!("error: {e}");
                return false;
            }
        },
        ("quit" | "exit", None) => return true,
        _ => {
            eprintln!(
                "error: unknown command {text:?}; commands: answer, hangup, hold, resume, swap, \
                 dial NUMBER, quit"
            );
            return false;
        }
    };
    if let Err(e) = result {
        eprintln!("error: {command}: {e}");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_targets() {
        let fp = format!("sha256:{}", "ab".repeat(32));
        let pin: tls::Fingerprint = fp.parse().unwrap_or_else(|e| panic!("{e}"));
        let uri = format!("trustring-line://127.0.0.1:5071?fp={fp}");
        let ok = |a: &str, f: Option<&str>, p: bool| {
            attach_target(a, f, p).unwrap_or_else(|e| panic!("{a}: {e}"))
        };
        assert_eq!(
            ok(&uri, None, false),
            ("127.0.0.1:5071".to_owned(), LineTransport::Tls(pin))
        );
        assert_eq!(
            ok("127.0.0.1:5071", Some(&fp), false),
            ("127.0.0.1:5071".to_owned(), LineTransport::Tls(pin))
        );
        assert_eq!(
            ok(&uri, Some(&fp), false).1,
            LineTransport::Tls(pin),
            "the same pin twice"
        );
        assert_eq!(
            ok("127.0.0.1:5071", None, true),
            ("127.0.0.1:5071".to_owned(), LineTransport::Plain)
        );
        let other = format!("sha256:{}", "cd".repeat(32));
        for (a, f, p) in [
            ("127.0.0.1:5071", None, false),
            (uri.as_str(), Some(other.as_str()), false),
            (uri.as_str(), None, true),
            ("https://127.0.0.1:5071", None, true),
            ("trustring-line://127.0.0.1:5071?fp=sha256:12", None, false),
            ("trustring-line://127.0.0.1:5071?x=1", None, true),
            ("trustring-line://?fp=x", None, false),
        ] {
            assert!(attach_target(a, f, p).is_err(), "{a} {f:?} {p}");
        }
        // The gateway and the server agree on the attach binding's branch.
        assert_eq!(pstn::msg::ATTACH_BRANCH, zone::authority::ATTACH_BRANCH);
    }
}
