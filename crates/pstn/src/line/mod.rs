//! An attached phone line: the tokio agent behind `trustring line` and
//! `trustring device run --attach`.
//!
//! [`Line::attach`] connects to the exchange (TLS with its key pinned, unless the transport
//! is explicitly plain), attaches (ATT, then ATC → ATP with the zone's proof when the number
//! is a phone's, → ATA) and spawns one task that owns the link. The task answers the
//! exchange's IAMs (asking the [`LineProver`] for the trust proof), follows the procedures of
//! `docs/isup.md`, sends a tone or silence as FRM on answered calls and can record what it
//! receives. The program steers it through the
//! [`LineHandle`] and learns what happened from [`LineEvent`]s.
//!
//! Challenge and proof values never appear in events or logs: they are security material.

mod api;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use media::g711;
use media::wav::PcmWavWriter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use crate::cause::Cause;
use crate::codec::{self, Decoder};
use crate::msg::{ATTACH_BRANCH, Cic, Event, FRAME_LEN, Iam, Law, Message, Number};

pub use api::{CommandError, LineConfig, LineError, LineEvent, LineTransport};

/// Sample rate of the bearer (G.711).
const RATE: u32 = 8000;
/// How long the exchange has to finish the attach (TLS, ATT, its ATC and our ATP, ATA): the
/// exchange asks the server for the challenge and for the proof's check on the way.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a REL waits for its RLC before the circuit is freed anyway (Q.764 T1, shortened).
const RELEASE_GUARD: Duration = Duration::from_secs(4);
/// How long [`LineHandle::shutdown`] waits for the RLCs of the calls it releases.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// A [`LineEvent::Media`] every this many received frames (5 s of voice).
const MEDIA_REPORT_EVERY: u64 = 250;
/// Amplitude of the test tone, of full scale.
const TONE_AMPLITUDE: f64 = 0.5;

/// Answers trust challenges for the line: the same contract as `phone::Prover`.
pub trait LineProver: Send {
    /// Given the IAM's trust challenge (the SIP `Trust-Challenge` value), call reference
    /// (the INVITE's Call-ID) and branch (its top Via branch), returns the `Trust-Proof`
    /// value. An `Err` is shown to the user, so it must not contain secrets; the call then
    /// rings and answers without a proof.
    ///
    /// The attach challenge (ATC) is proved the same way, with the binding it carries.
    fn prove(&mut self, challenge: &str, call_ref: &str, branch: &str) -> Result<String, String>;
}

/// Anything the link can run over: a TCP stream, or TLS over one.
trait LinkStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> LinkStream for T {}

type Link = Box<dyn LinkStream>;
type LinkReader = ReadHalf<Link>;
type LinkWriter = WriteHalf<Link>;

/// The attached line (the entry point).
#[derive(Debug)]
pub struct Line;

impl Line {
    /// Connects to the exchange (TLS with its key pinned, unless the transport is plain),
    /// attaches, and starts the line's task. When the number is an enrolled phone's, the
    /// exchange sends an attach challenge (ATC) first, which `prover` (the phone's zone)
    /// answers (ATP); a line without a prover cannot attach such a number.
    ///
    /// The first event is [`LineEvent::Attached`]; the last is [`LineEvent::Detached`], after
    /// which the channel closes.
    pub async fn attach(
        cfg: LineConfig,
        mut prover: Option<Box<dyn LineProver>>,
    ) -> Result<(LineHandle, mpsc::Receiver<LineEvent>), LineError> {
        let (link, tls) = tokio::time::timeout(ATTACH_TIMEOUT, connect(&cfg))
            .await
            .map_err(|_| LineError::Timeout(ATTACH_TIMEOUT))??;
        let (mut reader, mut writer) = tokio::io::split(link);
        let mut decoder = Decoder::new();
        let att = Message::Att {
            number: cfg.number.clone(),
            device: cfg.device_id.clone(),
        };
        writer.write_all(&codec::encode_to_vec(&att)?).await?;
        let (law, proved) = tokio::time::timeout(
            ATTACH_TIMEOUT,
            await_attach_answer(&mut reader, &mut writer, &mut decoder, &mut prover),
        )
        .await
        .map_err(|_| LineError::Timeout(ATTACH_TIMEOUT))??;
        let recorder = match &cfg.record {
            Some(path) => Some(Recorder::create(path, law)?),
            None => None,
        };
        tracing::info!(number = %cfg.number, %law, tls, proved, "attached to the exchange");

        let (event_tx, event_rx) = mpsc::channel(1024);
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let _ = event_tx.try_send(LineEvent::Attached {
            number: cfg.number.clone(),
            law,
            tls,
            proved,
        });
        let tone = cfg.play_tone_hz.map(|hz| Tone::new(hz, law));
        let agent = Agent {
            law,
            tone,
            prover,
            recorder,
            calls: BTreeMap::new(),
            events: event_tx,
            writer,
            out: Vec::with_capacity(256),
            shutdown: None,
            cfg,
        };
        tokio::spawn(agent.run(reader, decoder, cmd_rx));
        Ok((
            LineHandle {
                commands: cmd_tx,
                law,
            },
            event_rx,
        ))
    }
}

/// TCP to the exchange, then TLS with its key pinned (unless the transport is plain).
/// Returns the link and whether it is TLS.
async fn connect(cfg: &LineConfig) -> Result<(Link, bool), LineError> {
    let stream = TcpStream::connect(&cfg.exchange)
        .await
        .map_err(|error| LineError::Connect {
            addr: cfg.exchange.clone(),
            error,
        })?;
    stream.set_nodelay(true)?;
    let LineTransport::Tls(pin) = cfg.transport else {
        return Ok((Box::new(stream), false));
    };
    let tls_err = |reason: String| LineError::Tls {
        addr: cfg.exchange.clone(),
        reason,
    };
    let config = tls::pinned_client_config(pin).map_err(|e| tls_err(e.to_string()))?;
    // The pin is the trust anchor; the name only fills SNI.
    let host = cfg
        .exchange
        .rsplit_once(':')
        .map_or(cfg.exchange.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let name = tls::pki_types::ServerName::try_from(host)
        .or_else(|_| tls::pki_types::ServerName::try_from("trustring-gateway".to_owned()))
        .map_err(|e| tls_err(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
    let stream = connector
        .connect(name, stream)
        .await
        .map_err(|e| tls_err(tls_reason(&e, pin)))?;
    Ok((Box::new(stream), true))
}

/// A TLS failure in plain words (a key mismatch names the pinned key).
fn tls_reason(e: &std::io::Error, pin: tls::Fingerprint) -> String {
    let inner = e.get_ref().map(ToString::to_string).unwrap_or_default();
    if inner.contains("ApplicationVerificationFailure") {
        format!(
            "the exchange's TLS key is not the pinned one ({pin}): refused (a man in the middle, \
             or not the gateway the fingerprint names)"
        )
    } else if inner.contains("InvalidContentType") || inner.contains("corrupt message") {
        "the exchange does not speak TLS (a plain-TCP gateway needs --danger-plain-lines on \
         both sides)"
            .to_owned()
    } else {
        format!("TLS handshake failed: {e}")
    }
}

/// Reads until ATA (the law) or ATR (refused), answering an attach challenge (ATC) with the
/// zone's proof on the way. Returns the law and whether the zone proved.
async fn await_attach_answer(
    reader: &mut LinkReader,
    writer: &mut LinkWriter,
    decoder: &mut Decoder,
    prover: &mut Option<Box<dyn LineProver>>,
) -> Result<(Law, bool), LineError> {
    let mut chunk = [0u8; 2048];
    let mut proved = false;
    loop {
        if let Some(msg) = decoder.pop() {
            match msg? {
                Message::Ata { law } => return Ok((law, proved)),
                Message::Atr { cause } => return Err(LineError::Refused(cause)),
                Message::Atc {
                    challenge,
                    call_ref,
                    branch,
                } if !proved => {
                    if branch != ATTACH_BRANCH {
                        return Err(LineError::BadAttachChallenge);
                    }
                    let Some(mut p) = prover.take() else {
                        return Err(LineError::ProofRequired);
                    };
                    let (p, result) = tokio::task::spawn_blocking(move || {
                        let result = p.prove(&challenge, &call_ref, &branch);
                        (p, result)
                    })
                    .await
                    .map_err(|_| LineError::Prove("the prover panicked".to_owned()))?;
                    *prover = Some(p);
                    let proof = result.map_err(LineError::Prove)?;
                    writer
                        .write_all(&codec::encode_to_vec(&Message::Atp { proof })?)
                        .await?;
                    proved = true;
                    tracing::info!("attach challenge proved by the zone (ATP sent)");
                    continue;
                }
                other => return Err(LineError::Unexpected(other.name())),
            }
        }
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Err(LineError::Closed);
        }
        decoder.push(&chunk[..n])?;
    }
}

/// Steers a running line. Cheap to clone; every method waits for the line's task to act.
///
/// Dropping every handle shuts the line down as [`LineHandle::shutdown`] does.
#[derive(Debug, Clone)]
pub struct LineHandle {
    commands: mpsc::Sender<Command>,
    law: Law,
}

#[derive(Debug)]
enum Command {
    Answer(oneshot::Sender<Result<Cic, CommandError>>),
    Hangup(oneshot::Sender<Result<Cic, CommandError>>),
    Hold(oneshot::Sender<Result<Cic, CommandError>>),
    Resume(oneshot::Sender<Result<Cic, CommandError>>),
    Swap(oneshot::Sender<Result<Cic, CommandError>>),
    Dial(Number, oneshot::Sender<Result<Cic, CommandError>>),
    Shutdown(oneshot::Sender<()>),
}

impl LineHandle {
    /// The law of the link's frames.
    pub fn law(&self) -> Law {
        self.law
    }

    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Cic, CommandError>>) -> Command,
    ) -> Result<Cic, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| CommandError::Detached)?;
        rx.await.map_err(|_| CommandError::Detached)?
    }

    /// Answers the ringing call (ANM with the proof already on its ACM). An active call is
    /// put on hold first.
    pub async fn answer(&self) -> Result<Cic, CommandError> {
        self.call(Command::Answer).await
    }

    /// Ends the current call: the active one, else the ringing one (REL 21 call rejected),
    /// else the one being set up, else a held one. REL 16 otherwise.
    pub async fn hangup(&self) -> Result<Cic, CommandError> {
        self.call(Command::Hangup).await
    }

    /// Puts the active call on hold (CPG remote hold).
    pub async fn hold(&self) -> Result<Cic, CommandError> {
        self.call(Command::Hold).await
    }

    /// Takes the held call off hold (CPG remote retrieval); no other call may be active.
    pub async fn resume(&self) -> Result<Cic, CommandError> {
        self.call(Command::Resume).await
    }

    /// Holds the active call and resumes the held one; returns the now active call.
    pub async fn swap(&self) -> Result<Cic, CommandError> {
        self.call(Command::Swap).await
    }

    /// Calls `called` (IAM on a free odd circuit); any active call must be on hold.
    pub async fn dial(&self, called: Number) -> Result<Cic, CommandError> {
        self.call(|tx| Command::Dial(called, tx)).await
    }

    /// Releases every call (REL 16), waits briefly for the RLCs, finishes the recording and
    /// closes the link. Returns when the line's task has ended.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Incoming, ACM sent, waiting for the user.
    Ringing,
    /// Outgoing, IAM sent.
    Dialing,
    /// Outgoing, the far end alerts.
    Alerting,
    /// ANM sent or received.
    Answered,
    /// REL sent, waiting for RLC.
    Releasing(Cause),
}

#[derive(Debug)]
struct Call {
    state: State,
    held_here: bool,
    held_there: bool,
    proof: Option<String>,
    /// Auto-answer time (Ringing) or release guard (Releasing).
    timer: Option<Instant>,
    frames_received: u64,
    seq: u16,
}

impl Call {
    fn new(state: State) -> Self {
        Self {
            state,
            held_here: false,
            held_there: false,
            proof: None,
            timer: None,
            frames_received: 0,
            seq: 0,
        }
    }

    fn is_talking(&self) -> bool {
        self.state == State::Answered && !self.held_here && !self.held_there
    }

    /// True for a call that keeps the line from taking another one: anything but a call
    /// held by this line or one being released.
    fn is_engaging(&self) -> bool {
        let released = matches!(self.state, State::Releasing(_));
        let held = self.state == State::Answered && self.held_here;
        !(released || held)
    }
}

/// A looping sine of a whole second, so frames join without a phase jump.
#[derive(Debug)]
struct Tone {
    codes: Vec<u8>,
    pos: usize,
}

impl Tone {
    fn new(hz: f64, law: Law) -> Self {
        let samples = media::tone::sine(hz, TONE_AMPLITUDE, RATE as usize, RATE);
        let mut codes = Vec::with_capacity(samples.len());
        g711::encode_frame(law, &samples, &mut codes);
        Self { codes, pos: 0 }
    }

    fn next_frame(&mut self) -> [u8; FRAME_LEN] {
        let mut frame = [0u8; FRAME_LEN];
        for b in &mut frame {
            *b = self.codes[self.pos];
            self.pos = (self.pos + 1) % self.codes.len();
        }
        frame
    }
}

/// The WAV file the received voice goes to.
struct Recorder {
    law: Law,
    writer: PcmWavWriter<BufWriter<File>>,
    pcm: Vec<i16>,
    path: PathBuf,
}

impl Recorder {
    fn create(path: &PathBuf, law: Law) -> Result<Self, LineError> {
        let err = |error| LineError::Record {
            path: path.clone(),
            error,
        };
        let file = File::create(path).map_err(err)?;
        let writer = PcmWavWriter::create(BufWriter::new(file), RATE).map_err(err)?;
        Ok(Self {
            law,
            writer,
            pcm: Vec::with_capacity(FRAME_LEN),
            path: path.clone(),
        })
    }

    fn append(&mut self, codes: &[u8]) -> std::io::Result<()> {
        self.pcm.clear();
        g711::decode_frame(self.law, codes, &mut self.pcm);
        self.writer.write_samples(&self.pcm)
    }

    fn finish(self) -> std::io::Result<()> {
        self.writer.finish().map(drop)
    }
}

/// The line's task: owns the link, the calls and the media.
struct Agent {
    cfg: LineConfig,
    law: Law,
    tone: Option<Tone>,
    prover: Option<Box<dyn LineProver>>,
    recorder: Option<Recorder>,
    calls: BTreeMap<Cic, Call>,
    events: mpsc::Sender<LineEvent>,
    writer: LinkWriter,
    out: Vec<u8>,
    /// Set by a shutdown: when to give up waiting for RLCs, and whom to tell.
    shutdown: Option<(Instant, Option<oneshot::Sender<()>>)>,
}

/// Why the task's loop ended.
enum Exit {
    Shutdown,
    Link(String),
}

impl Agent {
    async fn run(
        mut self,
        mut reader: LinkReader,
        mut decoder: Decoder,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let exit = self.serve(&mut reader, &mut decoder, &mut commands).await;
        let reason = match exit {
            Exit::Shutdown => "shut down".to_owned(),
            Exit::Link(reason) => reason,
        };
        if let Some(rec) = self.recorder.take() {
            let path = rec.path.clone();
            if let Err(e) = rec.finish() {
                self.emit(LineEvent::Error {
                    message: format!("finishing the recording {}: {e}", path.display()),
                })
                .await;
            }
        }
        let _ = self.writer.shutdown().await;
        tracing::info!(%reason, "line detached");
        self.emit(LineEvent::Detached { reason }).await;
        if let Some((_, Some(done))) = self.shutdown.take() {
            let _ = done.send(());
        }
    }

    async fn serve(
        &mut self,
        reader: &mut LinkReader,
        decoder: &mut Decoder,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Exit {
        let mut chunk = vec![0u8; 4096];
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut commands_open = true;
        loop {
            if let Some((deadline, _)) = &self.shutdown
                && (self.calls.is_empty() || Instant::now() >= *deadline)
            {
                return Exit::Shutdown;
            }
            let timer = self.next_timer();
            let result = tokio::select! {
                read = reader.read(&mut chunk) => match read {
                    Ok(0) => return Exit::Link("the exchange closed the link".to_owned()),
                    Ok(n) => self.on_bytes(decoder, &chunk[..n]).await,
                    Err(e) => return Exit::Link(format!("link read failed: {e}")),
                },
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => {
                        commands_open = false;
                        self.begin_shutdown(None).await
                    }
                },
                _ = ticker.tick() => self.send_media().await,
                () = sleep_until_opt(timer) => self.on_timers().await,
            };
            if let Err(exit) = result {
                return exit;
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        let calls = self.calls.values().filter_map(|c| c.timer);
        let shutdown = self.shutdown.as_ref().map(|(d, _)| *d);
        calls.chain(shutdown).min()
    }

    /// Queues an event; the future does not borrow the agent (which is not `Sync`).
    fn emit(&self, event: LineEvent) -> impl Future<Output = ()> + Send + 'static {
        let events = self.events.clone();
        async move {
            let _ = events.send(event).await;
        }
    }

    async fn send(&mut self, msg: &Message) -> Result<(), Exit> {
        self.out.clear();
        if let Err(e) = codec::encode(msg, &mut self.out) {
            // Only over-long texts fail; the call goes on without the message.
            self.emit(LineEvent::Error {
                message: format!("cannot send {}: {e}", msg.name()),
            })
            .await;
            return Ok(());
        }
        if !matches!(msg, Message::Frm { .. }) {
            tracing::debug!(msg = msg.name(), cic = %msg.cic(), "sent");
        }
        self.writer
            .write_all(&self.out)
            .await
            .map_err(|e| Exit::Link(format!("link write failed: {e}")))
    }

    async fn on_bytes(&mut self, decoder: &mut Decoder, bytes: &[u8]) -> Result<(), Exit> {
        if let Err(e) = decoder.push(bytes) {
            return Err(Exit::Link(format!("protocol error: {e}")));
        }
        while let Some(decoded) = decoder.pop() {
            match decoded {
                Ok(msg) => self.on_message(msg).await?,
                Err(e) if e.is_fatal() => return Err(Exit::Link(format!("protocol error: {e}"))),
                Err(e) => {
                    tracing::warn!(error = %e, "bad message from the exchange skipped");
                    self.emit(LineEvent::Error {
                        message: format!("skipped: {e}"),
                    })
                    .await;
                }
            }
        }
        Ok(())
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), Exit> {
        if !matches!(msg, Message::Frm { .. }) {
            tracing::debug!(msg = msg.name(), cic = %msg.cic(), "received");
        }
        match msg {
            Message::Iam(iam) => self.on_iam(iam).await,
            Message::Acm { cic, .. }
            | Message::Cpg {
                cic,
                event: Event::Alerting,
                ..
            } => {
                if let Some(call) = self.calls.get_mut(&cic)
                    && call.state == State::Dialing
                {
                    call.state = State::Alerting;
                    self.emit(LineEvent::Alerting { cic }).await;
                }
                Ok(())
            }
            Message::Anm { cic, .. } => {
                if let Some(call) = self.calls.get_mut(&cic)
                    && matches!(call.state, State::Dialing | State::Alerting)
                {
                    call.state = State::Answered;
                    self.emit(LineEvent::Answered { cic }).await;
                }
                Ok(())
            }
            Message::Cpg { cic, event } => {
                self.on_remote_progress(cic, event).await;
                Ok(())
            }
            Message::Rel { cic, cause } => {
                let call = self.calls.remove(&cic);
                self.send(&Message::Rlc { cic }).await?;
                if let Some(call) = call {
                    self.report_release(cic, &call, cause, true).await;
                }
                Ok(())
            }
            Message::Rlc { cic } => {
                if let Some(State::Releasing(cause)) = self.calls.get(&cic).map(|c| c.state)
                    && let Some(call) = self.calls.remove(&cic)
                {
                    self.report_release(cic, &call, cause, false).await;
                }
                Ok(())
            }
            Message::Frm { cic, payload, .. } => {
                self.on_frame(cic, &payload).await;
                Ok(())
            }
            Message::Atr { cause } => Err(Exit::Link(format!(
                "the exchange detached the line: cause {cause}"
            ))),
            Message::Att { .. }
            | Message::Ata { .. }
            | Message::Atc { .. }
            | Message::Atp { .. } => {
                self.emit(LineEvent::Error {
                    message: format!("unexpected {} after the attach", msg.name()),
                })
                .await;
                Ok(())
            }
        }
    }

    async fn report_release(&mut self, cic: Cic, call: &Call, cause: Cause, by_remote: bool) {
        if call.frames_received > 0 {
            self.emit(LineEvent::Media {
                cic,
                frames_received: call.frames_received,
            })
            .await;
        }
        self.emit(LineEvent::Released {
            cic,
            cause,
            by_remote,
        })
        .await;
    }

    async fn on_iam(&mut self, iam: Iam) -> Result<(), Exit> {
        let cic = iam.cic;
        if cic.is_line_side() || cic == Cic::LINK || self.calls.contains_key(&cic) {
            // The exchange seizes even circuits only, and never a busy one (dual seizure).
            self.emit(LineEvent::Error {
                message: format!("IAM on unusable cic {cic} refused"),
            })
            .await;
            if !self.calls.contains_key(&cic) {
                self.release(cic, Cause::PROTOCOL_ERROR, Call::new(State::Ringing))
                    .await?;
            }
            return Ok(());
        }
        self.emit(LineEvent::Incoming {
            cic,
            calling: iam.calling.clone(),
            challenged: iam.challenge.is_some(),
        })
        .await;
        let engaged = self.calls.values().any(Call::is_engaging);
        if self.cfg.busy || engaged || self.shutdown.is_some() {
            return self
                .release(cic, Cause::USER_BUSY, Call::new(State::Ringing))
                .await;
        }
        let mut call = Call::new(State::Ringing);
        if let Some(challenge) = iam.challenge.as_deref() {
            match self
                .prove(challenge, iam.call_ref.as_deref(), iam.branch.as_deref())
                .await
            {
                Ok(proof) => call.proof = Some(proof),
                Err(reason) => self.emit(LineEvent::ProofFailed { cic, reason }).await,
            }
        }
        call.timer = self.cfg.answer_after.map(|d| Instant::now() + d);
        let acm = Message::Acm {
            cic,
            proof: call.proof.clone(),
        };
        self.calls.insert(cic, call);
        self.send(&acm).await
    }

    /// Asks the prover off the runtime's threads (a trusted zone may take a while).
    async fn prove(
        &mut self,
        challenge: &str,
        call_ref: Option<&str>,
        branch: Option<&str>,
    ) -> Result<String, String> {
        let (Some(call_ref), Some(branch)) = (call_ref, branch) else {
            return Err("the challenge came without call reference or branch".to_owned());
        };
        let Some(mut prover) = self.prover.take() else {
            return Err("no prover on this line".to_owned());
        };
        let (challenge, call_ref, branch) =
            (challenge.to_owned(), call_ref.to_owned(), branch.to_owned());
        let joined = tokio::task::spawn_blocking(move || {
            let result = prover.prove(&challenge, &call_ref, &branch);
            (prover, result)
        })
        .await;
        match joined {
            Ok((prover, result)) => {
                self.prover = Some(prover);
                result
            }
            Err(_) => Err("the prover panicked".to_owned()),
        }
    }

    async fn on_remote_progress(&mut self, cic: Cic, event: Event) {
        let Some(call) = self.calls.get_mut(&cic) else {
            return;
        };
        match event {
            Event::RemoteHold if !call.held_there => {
                call.held_there = true;
                self.emit(LineEvent::Held {
                    cic,
                    by_remote: true,
                })
                .await;
            }
            Event::RemoteRetrieval if call.held_there => {
                call.held_there = false;
                self.emit(LineEvent::Resumed {
                    cic,
                    by_remote: true,
                })
                .await;
            }
            _ => {}
        }
    }

    async fn on_frame(&mut self, cic: Cic, payload: &[u8]) {
        let Some(call) = self.calls.get_mut(&cic) else {
            return;
        };
        if !call.is_talking() {
            return;
        }
        call.frames_received += 1;
        let report = call.frames_received % MEDIA_REPORT_EVERY == 0;
        let frames_received = call.frames_received;
        if let Some(rec) = &mut self.recorder
            && let Err(e) = rec.append(payload)
        {
            let message = format!("recording to {} stopped: {e}", rec.path.display());
            self.recorder = None;
            self.emit(LineEvent::Error { message }).await;
        }
        if report {
            // Periodic and droppable: a slow reader must not stall the voice.
            let _ = self.events.try_send(LineEvent::Media {
                cic,
                frames_received,
            });
        }
    }

    async fn send_media(&mut self) -> Result<(), Exit> {
        let talking: Vec<Cic> = self
            .calls
            .iter()
            .filter(|(_, c)| c.is_talking())
            .map(|(cic, _)| *cic)
            .collect();
        for cic in talking {
            let payload = match &mut self.tone {
                Some(tone) => tone.next_frame(),
                None => [self.law.silence(); FRAME_LEN],
            };
            let Some(call) = self.calls.get_mut(&cic) else {
                continue;
            };
            let seq = call.seq;
            call.seq = call.seq.wrapping_add(1);
            self.send(&Message::Frm { cic, seq, payload }).await?;
        }
        Ok(())
    }

    async fn on_timers(&mut self) -> Result<(), Exit> {
        let now = Instant::now();
        let due: Vec<Cic> = self
            .calls
            .iter()
            .filter(|(_, c)| c.timer.is_some_and(|t| t <= now))
            .map(|(cic, _)| *cic)
            .collect();
        for cic in due {
            let Some(call) = self.calls.get_mut(&cic) else {
                continue;
            };
            call.timer = None;
            match call.state {
                State::Ringing => {
                    self.answer_call(cic).await?;
                }
                State::Releasing(cause) => {
                    tracing::warn!(%cic, "no RLC in time; circuit freed");
                    if let Some(call) = self.calls.remove(&cic) {
                        self.report_release(cic, &call, cause, false).await;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Sends REL and waits for RLC (the call stays until then, or until the guard fires).
    async fn release(&mut self, cic: Cic, cause: Cause, mut call: Call) -> Result<(), Exit> {
        call.state = State::Releasing(cause);
        call.timer = Some(Instant::now() + RELEASE_GUARD);
        self.calls.insert(cic, call);
        self.send(&Message::Rel { cic, cause }).await
    }

    async fn answer_call(&mut self, cic: Cic) -> Result<Cic, Exit> {
        // Answering a waiting call puts the current one on hold.
        if let Some(active) = self.active_call()
            && active != cic
        {
            self.hold_call(active).await?;
        }
        let Some(call) = self.calls.get_mut(&cic) else {
            return Ok(cic);
        };
        call.state = State::Answered;
        call.timer = None;
        let anm = Message::Anm {
            cic,
            proof: call.proof.clone(),
        };
        self.send(&anm).await?;
        self.emit(LineEvent::Answered { cic }).await;
        Ok(cic)
    }

    async fn hold_call(&mut self, cic: Cic) -> Result<(), Exit> {
        if let Some(call) = self.calls.get_mut(&cic) {
            call.held_here = true;
        }
        self.send(&Message::Cpg {
            cic,
            event: Event::RemoteHold,
        })
        .await?;
        self.emit(LineEvent::Held {
            cic,
            by_remote: false,
        })
        .await;
        Ok(())
    }

    async fn resume_call(&mut self, cic: Cic) -> Result<(), Exit> {
        if let Some(call) = self.calls.get_mut(&cic) {
            call.held_here = false;
        }
        self.send(&Message::Cpg {
            cic,
            event: Event::RemoteRetrieval,
        })
        .await?;
        self.emit(LineEvent::Resumed {
            cic,
            by_remote: false,
        })
        .await;
        Ok(())
    }

    /// The answered call this line has not put on hold.
    fn active_call(&self) -> Option<Cic> {
        self.find(|c| c.state == State::Answered && !c.held_here)
    }

    fn held_call(&self) -> Option<Cic> {
        self.find(|c| c.state == State::Answered && c.held_here)
    }

    fn find(&self, pred: impl Fn(&Call) -> bool) -> Option<Cic> {
        self.calls
            .iter()
            .find(|(_, c)| pred(c))
            .map(|(cic, _)| *cic)
    }

    async fn on_command(&mut self, cmd: Command) -> Result<(), Exit> {
        match cmd {
            Command::Answer(reply) => {
                let result = match self.find(|c| c.state == State::Ringing) {
                    Some(cic) => Ok(self.answer_call(cic).await?),
                    None => Err(CommandError::NoRingingCall),
                };
                let _ = reply.send(result);
            }
            Command::Hangup(reply) => {
                let target = self
                    .active_call()
                    .map(|cic| (cic, Cause::NORMAL_CLEARING))
                    .or_else(|| {
                        self.find(|c| c.state == State::Ringing)
                            .map(|cic| (cic, Cause::CALL_REJECTED))
                    })
                    .or_else(|| {
                        self.find(|c| matches!(c.state, State::Dialing | State::Alerting))
                            .map(|cic| (cic, Cause::NORMAL_CLEARING))
                    })
                    .or_else(|| self.held_call().map(|cic| (cic, Cause::NORMAL_CLEARING)));
                let result = match target {
                    Some((cic, cause)) => {
                        if let Some(call) = self.calls.remove(&cic) {
                            self.release(cic, cause, call).await?;
                        }
                        Ok(cic)
                    }
                    None => Err(CommandError::NoActiveCall),
                };
                let _ = reply.send(result);
            }
            Command::Hold(reply) => {
                let result = match self.active_call() {
                    Some(cic) => {
                        self.hold_call(cic).await?;
                        Ok(cic)
                    }
                    None => Err(CommandError::NoActiveCall),
                };
                let _ = reply.send(result);
            }
            Command::Resume(reply) => {
                let result = match (self.active_call(), self.held_call()) {
                    (Some(active), _) => Err(CommandError::OtherCallActive(active)),
                    (None, Some(held)) => {
                        self.resume_call(held).await?;
                        Ok(held)
                    }
                    (None, None) => Err(CommandError::NoHeldCall),
                };
                let _ = reply.send(result);
            }
            Command::Swap(reply) => {
                let active = self.active_call();
                let held = self.find(|c| c.state == State::Answered && c.held_here);
                let result = match held {
                    Some(held) => {
                        if let Some(active) = active {
                            self.hold_call(active).await?;
                        }
                        self.resume_call(held).await?;
                        Ok(held)
                    }
                    None => Err(CommandError::NoHeldCall),
                };
                let _ = reply.send(result);
            }
            Command::Dial(called, reply) => {
                let result = self.dial(called).await?;
                let _ = reply.send(result);
            }
            Command::Shutdown(done) => self.begin_shutdown(Some(done)).await?,
        }
        Ok(())
    }

    async fn dial(&mut self, called: Number) -> Result<Result<Cic, CommandError>, Exit> {
        if let Some(busy) = self.find(Call::is_engaging) {
            return Ok(Err(CommandError::OtherCallActive(busy)));
        }
        let Some(cic) = (1..=u16::MAX)
            .step_by(2)
            .map(Cic)
            .find(|cic| !self.calls.contains_key(cic))
        else {
            return Ok(Err(CommandError::NoFreeCircuit));
        };
        self.calls.insert(cic, Call::new(State::Dialing));
        let iam = Message::Iam(Iam {
            cic,
            called: called.clone(),
            calling: Some(self.cfg.number.clone()),
            challenge: None,
            call_ref: None,
            branch: None,
        });
        self.send(&iam).await?;
        self.emit(LineEvent::Dialing { cic, called }).await;
        Ok(Ok(cic))
    }

    async fn begin_shutdown(&mut self, done: Option<oneshot::Sender<()>>) -> Result<(), Exit> {
        if let Some((_, waiting)) = &mut self.shutdown {
            // Already shutting down: answer this caller too when done.
            if waiting.is_none() {
                *waiting = done;
            }
            return Ok(());
        }
        self.shutdown = Some((Instant::now() + SHUTDOWN_GRACE, done));
        let live: Vec<Cic> = self
            .calls
            .iter()
            .filter(|(_, c)| !matches!(c.state, State::Releasing(_)))
            .map(|(cic, _)| *cic)
            .collect();
        for cic in live {
            if let Some(call) = self.calls.remove(&cic) {
                self.release(cic, Cause::NORMAL_CLEARING, call).await?;
            }
        }
        Ok(())
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
