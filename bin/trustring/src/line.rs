//! `trustring line`: a plain PSTN phone line attached to the gateway over TR-ISUP
//! (`docs/isup.md`), steered from stdin; also the engine of `trustring device run --attach`,
//! which passes its device id and a prover backed by its trusted zone.
//!
//! Events go to stdout, one line each (JSON lines with `--json`); command errors go to stderr.
//! Commands on stdin: `answer`, `hangup`, `hold`, `resume`, `swap`, `dial NUMBER`, `quit`.
//! At the end of stdin the line stays attached (so it can run unattended with
//! `--answer-after-ms`) until `quit`, SIGINT/SIGTERM, or the exchange closing the link.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use pstn::line::{Line, LineConfig, LineEvent, LineHandle, LineProver};
use pstn::msg::Number;
use std::io::BufRead;

use tokio::sync::mpsc;

/// `trustring line` options.
#[derive(Debug, clap::Args)]
pub(crate) struct LineArgs {
    /// The gateway's TR-ISUP address (host:port).
    #[arg(long, value_name = "ADDR")]
    pub(crate) attach: String,
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
    let mut cfg = LineConfig::new(args.attach.clone(), args.number.clone());
    cfg.device_id = device_id;
    cfg.answer_after = args.answer_after_ms.map(Duration::from_millis);
    cfg.busy = args.busy;
    cfg.record = args.record.clone();
    cfg.play_tone_hz = args.play_tone;
    let (line, mut events) = Line::attach(cfg, prover).await.with_context(|| {
        format!(
            "cannot attach {} to the gateway at {}",
            args.number, args.attach
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
