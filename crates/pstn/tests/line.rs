//! The line agent against a tiny in-test exchange speaking the codec over loopback TCP.

use std::time::Duration;

use media::g711;
use pstn::line::{
    CommandError, Line, LineConfig, LineError, LineEvent, LineHandle, LineProver, LineTransport,
};
use pstn::msg::FRAME_LEN;
use pstn::{Cause, Cic, Decoder, Event, Iam, Law, Message, Number};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use trustring_pstn as pstn;

const WAIT: Duration = Duration::from_secs(5);

fn num(s: &str) -> Number {
    Number::new(s).expect("valid number")
}

/// The exchange's side of one link.
struct Exchange {
    stream: TcpStream,
    decoder: Decoder,
}

impl Exchange {
    async fn send(&mut self, msg: &Message) {
        let bytes = pstn::codec::encode_to_vec(msg).expect("encodes");
        self.stream.write_all(&bytes).await.expect("write");
    }

    /// The next message, frames included.
    async fn recv_any(&mut self) -> Message {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(m) = self.decoder.pop() {
                return m.expect("valid message from the line");
            }
            let n = timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("line answered in time")
                .expect("read");
            assert!(n > 0, "line closed the link");
            self.decoder.push(&chunk[..n]).expect("fits");
        }
    }

    /// The next signalling message, skipping frames.
    async fn recv(&mut self) -> Message {
        loop {
            let m = self.recv_any().await;
            if !matches!(m, Message::Frm { .. }) {
                return m;
            }
        }
    }

    async fn offer(&mut self, cic: u16, challenge: Option<&str>) {
        self.send(&Message::Iam(Iam {
            cic: Cic(cic),
            called: num("+4930123456"),
            calling: Some(num("+4930999")),
            challenge: challenge.map(str::to_owned),
            call_ref: Some("call-id-1".into()),
            branch: Some("z9hG4bK-1".into()),
        }))
        .await;
    }
}

/// Starts an exchange that accepts one attach with `law`, then a line with `cfg`.
async fn attach_with(
    law: Law,
    tweak: impl FnOnce(&mut LineConfig),
    prover: Option<Box<dyn LineProver>>,
) -> (Exchange, LineHandle, mpsc::Receiver<LineEvent>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let exchange = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut ex = Exchange {
            stream,
            decoder: Decoder::new(),
        };
        match ex.recv().await {
            Message::Att { number, device } => {
                assert_eq!(number.as_str(), "+4930123456");
                assert_eq!(device.as_deref(), Some("d-test"));
            }
            other => panic!("expected ATT, got {other:?}"),
        }
        ex.send(&Message::Ata { law }).await;
        ex
    });
    let mut cfg = LineConfig::new(addr.to_string(), LineTransport::Plain, num("+4930123456"));
    cfg.device_id = Some("d-test".into());
    tweak(&mut cfg);
    let (handle, mut events) = Line::attach(cfg, prover).await.expect("attaches");
    let ex = exchange.await.expect("exchange task");
    assert_eq!(handle.law(), law);
    assert_eq!(
        next(&mut events).await,
        LineEvent::Attached {
            number: num("+4930123456"),
            law,
            tls: false,
            proved: false,
        }
    );
    (ex, handle, events)
}

async fn attach(
    tweak: impl FnOnce(&mut LineConfig),
    prover: Option<Box<dyn LineProver>>,
) -> (Exchange, LineHandle, mpsc::Receiver<LineEvent>) {
    attach_with(Law::Pcma, tweak, prover).await
}

/// The next event that is not a periodic media report.
async fn next(events: &mut mpsc::Receiver<LineEvent>) -> LineEvent {
    loop {
        let e = timeout(WAIT, events.recv())
            .await
            .expect("event in time")
            .expect("open");
        if !matches!(e, LineEvent::Media { .. }) {
            return e;
        }
    }
}

/// Proves by echoing its inputs, so the test sees the binding went through.
struct EchoProver;

impl LineProver for EchoProver {
    fn prove(&mut self, challenge: &str, call_ref: &str, branch: &str) -> Result<String, String> {
        Ok(format!("proof({challenge},{call_ref},{branch})"))
    }
}

struct FailingProver;

impl LineProver for FailingProver {
    fn prove(&mut self, _: &str, _: &str, _: &str) -> Result<String, String> {
        Err("license revoked".into())
    }
}

#[tokio::test]
async fn attach_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut ex = Exchange {
            stream,
            decoder: Decoder::new(),
        };
        let _ = ex.recv().await;
        ex.send(&Message::Atr {
            cause: Cause::UNALLOCATED_NUMBER,
        })
        .await;
    });
    let cfg = LineConfig::new(addr.to_string(), LineTransport::Plain, num("+4930123456"));
    match Line::attach(cfg, None).await {
        Err(LineError::Refused(c)) => assert_eq!(c, Cause::UNALLOCATED_NUMBER),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn attach_connection_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let cfg = LineConfig::new(addr.to_string(), LineTransport::Plain, num("+4930123456"));
    let err = Line::attach(cfg, None)
        .await
        .map(|_| ())
        .expect_err("fails");
    assert!(matches!(err, LineError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn incoming_call_with_proof_then_remote_release() {
    let (mut ex, line, mut events) = attach(|_| {}, Some(Box::new(EchoProver))).await;
    ex.offer(2, Some("v=1;ctr=1")).await;
    let want = Some("proof(v=1;ctr=1,call-id-1,z9hG4bK-1)".to_owned());
    assert_eq!(
        ex.recv().await,
        Message::Acm {
            cic: Cic(2),
            proof: want.clone()
        }
    );
    assert_eq!(
        next(&mut events).await,
        LineEvent::Incoming {
            cic: Cic(2),
            calling: Some(num("+4930999")),
            challenged: true
        }
    );
    assert_eq!(line.answer().await, Ok(Cic(2)));
    assert_eq!(
        ex.recv().await,
        Message::Anm {
            cic: Cic(2),
            proof: want
        }
    );
    assert_eq!(next(&mut events).await, LineEvent::Answered { cic: Cic(2) });
    // Silence frames flow once answered.
    match ex.recv_any().await {
        Message::Frm { cic, payload, .. } => {
            assert_eq!(cic, Cic(2));
            assert_eq!(payload, [Law::Pcma.silence(); FRAME_LEN]);
        }
        other => panic!("expected FRM, got {other:?}"),
    }
    ex.send(&Message::Rel {
        cic: Cic(2),
        cause: Cause::NORMAL_CLEARING,
    })
    .await;
    assert_eq!(ex.recv().await, Message::Rlc { cic: Cic(2) });
    assert_eq!(
        next(&mut events).await,
        LineEvent::Released {
            cic: Cic(2),
            cause: Cause::NORMAL_CLEARING,
            by_remote: true
        }
    );
    assert_eq!(line.answer().await, Err(CommandError::NoRingingCall));
    line.shutdown().await;
    assert!(matches!(
        next(&mut events).await,
        LineEvent::Detached { .. }
    ));
}

#[tokio::test]
async fn no_prover_or_failing_prover_means_no_proof() {
    let (mut ex, _line, mut events) = attach(|_| {}, None).await;
    ex.offer(2, Some("v=1")).await;
    assert_eq!(
        ex.recv().await,
        Message::Acm {
            cic: Cic(2),
            proof: None
        }
    );
    assert!(matches!(
        next(&mut events).await,
        LineEvent::Incoming { .. }
    ));
    assert!(matches!(
        next(&mut events).await,
        LineEvent::ProofFailed { cic: Cic(2), .. }
    ));

    let (mut ex, line, mut events) = attach(|_| {}, Some(Box::new(FailingProver))).await;
    ex.offer(2, Some("v=1")).await;
    assert_eq!(
        ex.recv().await,
        Message::Acm {
            cic: Cic(2),
            proof: None
        }
    );
    assert!(matches!(
        next(&mut events).await,
        LineEvent::Incoming { .. }
    ));
    let failed = next(&mut events).await;
    assert_eq!(
        failed,
        LineEvent::ProofFailed {
            cic: Cic(2),
            reason: "license revoked".into()
        }
    );
    // The event never shows the challenge or proof, in either form.
    let json = serde_json::to_string(&failed).expect("serializes");
    assert_eq!(
        json,
        r#"{"event":"proof_failed","cic":2,"reason":"license revoked"}"#
    );
    line.answer().await.expect("answers");
    assert_eq!(
        ex.recv().await,
        Message::Anm {
            cic: Cic(2),
            proof: None
        }
    );

    // An unchallenged call needs no prover and reports nothing.
    ex.send(&Message::Rel {
        cic: Cic(2),
        cause: Cause::NORMAL_CLEARING,
    })
    .await;
    assert_eq!(ex.recv().await, Message::Rlc { cic: Cic(2) });
}

#[tokio::test]
async fn busy_line_rejects_with_17() {
    let (mut ex, _line, mut events) = attach(|c| c.busy = true, None).await;
    ex.offer(4, None).await;
    assert_eq!(
        ex.recv().await,
        Message::Rel {
            cic: Cic(4),
            cause: Cause::USER_BUSY
        }
    );
    assert_eq!(pstn::sip_status_for(Cause::USER_BUSY), 486);
    ex.send(&Message::Rlc { cic: Cic(4) }).await;
    assert!(matches!(
        next(&mut events).await,
        LineEvent::Incoming { .. }
    ));
    assert_eq!(
        next(&mut events).await,
        LineEvent::Released {
            cic: Cic(4),
            cause: Cause::USER_BUSY,
            by_remote: false
        }
    );
}

#[tokio::test]
async fn call_waiting_only_while_the_other_call_is_held() {
    let (mut ex, line, mut events) = attach(|c| c.answer_after = Some(Duration::ZERO), None).await;
    ex.offer(2, None).await;
    assert_eq!(
        ex.recv().await,
        Message::Acm {
            cic: Cic(2),
            proof: None
        }
    );
    assert_eq!(
        ex.recv().await,
        Message::Anm {
            cic: Cic(2),
            proof: None
        }
    );
    // A second call while talking: busy.
    ex.offer(4, None).await;
    assert_eq!(
        ex.recv().await,
        Message::Rel {
            cic: Cic(4),
            cause: Cause::USER_BUSY
        }
    );
    ex.send(&Message::Rlc { cic: Cic(4) }).await;
    // Hold the first: the next call is accepted and auto-answered.
    assert_eq!(line.hold().await, Ok(Cic(2)));
    assert_eq!(
        ex.recv().await,
        Message::Cpg {
            cic: Cic(2),
            event: Event::RemoteHold
        }
    );
    ex.offer(6, None).await;
    assert_eq!(
        ex.recv().await,
        Message::Acm {
            cic: Cic(6),
            proof: None
        }
    );
    assert_eq!(
        ex.recv().await,
        Message::Anm {
            cic: Cic(6),
            proof: None
        }
    );
    // Swap back to the first.
    assert_eq!(line.swap().await, Ok(Cic(2)));
    assert_eq!(
        ex.recv().await,
        Message::Cpg {
            cic: Cic(6),
            event: Event::RemoteHold
        }
    );
    assert_eq!(
        ex.recv().await,
        Message::Cpg {
            cic: Cic(2),
            event: Event::RemoteRetrieval
        }
    );
    // Hang up the active one (2), then the held one (6).
    assert_eq!(line.hangup().await, Ok(Cic(2)));
    assert_eq!(
        ex.recv().await,
        Message::Rel {
            cic: Cic(2),
            cause: Cause::NORMAL_CLEARING
        }
    );
    ex.send(&Message::Rlc { cic: Cic(2) }).await;
    assert_eq!(line.hangup().await, Ok(Cic(6)));
    assert_eq!(
        ex.recv().await,
        Message::Rel {
            cic: Cic(6),
            cause: Cause::NORMAL_CLEARING
        }
    );
    ex.send(&Message::Rlc { cic: Cic(6) }).await;
    let mut released = Vec::new();
    while released.len() < 3 {
        if let LineEvent::Released {
            cic,
            by_remote: false,
            ..
        } = next(&mut events).await
        {
            released.push(cic.0);
        }
    }
    assert_eq!(released, [4, 2, 6]);
}

#[tokio::test]
async fn hold_and_resume_stop_and_restart_frames() {
    let (mut ex, line, mut events) = attach(|c| c.answer_after = Some(Duration::ZERO), None).await;
    ex.offer(2, None).await;
    assert!(matches!(ex.recv().await, Message::Acm { .. }));
    assert!(matches!(ex.recv().await, Message::Anm { .. }));
    assert_eq!(line.hold().await, Ok(Cic(2)));
    assert_eq!(
        ex.recv().await,
        Message::Cpg {
            cic: Cic(2),
            event: Event::RemoteHold
        }
    );
    assert_eq!(line.hold().await, Err(CommandError::NoActiveCall));
    // No frame while held.
    let quiet = timeout(Duration::from_millis(150), ex.recv_any()).await;
    assert!(quiet.is_err(), "frame on a held call: {quiet:?}");
    assert_eq!(line.resume().await, Ok(Cic(2)));
    assert_eq!(
        ex.recv().await,
        Message::Cpg {
            cic: Cic(2),
            event: Event::RemoteRetrieval
        }
    );
    assert!(matches!(
        ex.recv_any().await,
        Message::Frm { cic: Cic(2), .. }
    ));
    // The exchange's side holds too.
    ex.send(&Message::Cpg {
        cic: Cic(2),
        event: Event::RemoteHold,
    })
    .await;
    let mut seen = Vec::new();
    loop {
        let e = next(&mut events).await;
        let done = e
            == LineEvent::Held {
                cic: Cic(2),
                by_remote: true,
            };
        seen.push(e);
        if done {
            break;
        }
    }
    assert!(seen.contains(&LineEvent::Held {
        cic: Cic(2),
        by_remote: false
    }));
    assert!(seen.contains(&LineEvent::Resumed {
        cic: Cic(2),
        by_remote: false
    }));
}

#[tokio::test]
async fn dial_out_and_hang_up() {
    let (mut ex, line, mut events) = attach(|_| {}, None).await;
    let cic = line.dial(num("+4930777")).await.expect("dials");
    assert!(cic.is_line_side());
    match ex.recv().await {
        Message::Iam(iam) => {
            assert_eq!(iam.cic, cic);
            assert_eq!(iam.called, num("+4930777"));
            assert_eq!(iam.calling, Some(num("+4930123456")));
            assert_eq!(iam.challenge, None);
        }
        other => panic!("expected IAM, got {other:?}"),
    }
    assert_eq!(
        next(&mut events).await,
        LineEvent::Dialing {
            cic,
            called: num("+4930777")
        }
    );
    // A second dial while the first is being set up is refused.
    assert_eq!(
        line.dial(num("+4930778")).await,
        Err(CommandError::OtherCallActive(cic))
    );
    ex.send(&Message::Acm { cic, proof: None }).await;
    assert_eq!(next(&mut events).await, LineEvent::Alerting { cic });
    ex.send(&Message::Anm { cic, proof: None }).await;
    assert_eq!(next(&mut events).await, LineEvent::Answered { cic });
    assert!(matches!(ex.recv_any().await, Message::Frm { .. }));
    assert_eq!(line.hangup().await, Ok(cic));
    assert_eq!(
        ex.recv().await,
        Message::Rel {
            cic,
            cause: Cause::NORMAL_CLEARING
        }
    );
    ex.send(&Message::Rlc { cic }).await;
    assert_eq!(
        next(&mut events).await,
        LineEvent::Released {
            cic,
            cause: Cause::NORMAL_CLEARING,
            by_remote: false
        }
    );
    assert_eq!(line.hangup().await, Err(CommandError::NoActiveCall));
}

#[tokio::test]
async fn records_the_received_tone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("call.wav");
    let rec = path.clone();
    let (mut ex, line, mut events) = attach_with(
        Law::Pcmu,
        move |c| {
            c.answer_after = Some(Duration::ZERO);
            c.record = Some(rec);
        },
        None,
    )
    .await;
    ex.offer(2, None).await;
    assert!(matches!(ex.recv().await, Message::Acm { .. }));
    assert!(matches!(ex.recv().await, Message::Anm { .. }));
    let tone = media::tone::sine(1000.0, 0.5, 50 * FRAME_LEN, 8000);
    for (seq, chunk) in tone.chunks(FRAME_LEN).enumerate() {
        let mut codes = Vec::new();
        g711::encode_frame(Law::Pcmu, chunk, &mut codes);
        let payload: [u8; FRAME_LEN] = codes.try_into().expect("160 codes");
        let seq = u16::try_from(seq).expect("small");
        ex.send(&Message::Frm {
            cic: Cic(2),
            seq,
            payload,
        })
        .await;
    }
    ex.send(&Message::Rel {
        cic: Cic(2),
        cause: Cause::NORMAL_CLEARING,
    })
    .await;
    assert_eq!(ex.recv().await, Message::Rlc { cic: Cic(2) });
    loop {
        match timeout(WAIT, events.recv())
            .await
            .expect("in time")
            .expect("open")
        {
            LineEvent::Media {
                cic,
                frames_received,
            } => {
                assert_eq!((cic, frames_received), (Cic(2), 50));
            }
            LineEvent::Released { .. } => break,
            _ => {}
        }
    }
    line.shutdown().await;
    let wav = media::wav::read(std::fs::File::open(&path).expect("wav exists")).expect("wav");
    assert_eq!(wav.rate, 8000);
    assert_eq!(wav.samples.len(), 50 * FRAME_LEN);
    let purity = media::tone::tone_purity(&wav.samples, 1000.0, 8000);
    assert!(purity > 0.9, "purity {purity}");
}

#[tokio::test]
async fn plays_a_tone_while_answered() {
    let (mut ex, line, _events) = attach(
        |c| {
            c.answer_after = Some(Duration::ZERO);
            c.play_tone_hz = Some(440.0);
        },
        None,
    )
    .await;
    ex.offer(2, None).await;
    assert!(matches!(ex.recv().await, Message::Acm { .. }));
    assert!(matches!(ex.recv().await, Message::Anm { .. }));
    let mut pcm = Vec::new();
    let mut last_seq = None;
    while pcm.len() < 25 * FRAME_LEN {
        if let Message::Frm { seq, payload, .. } = ex.recv_any().await {
            if let Some(last) = last_seq {
                assert_eq!(seq, u16::wrapping_add(last, 1));
            }
            last_seq = Some(seq);
            g711::decode_frame(Law::Pcma, &payload, &mut pcm);
        }
    }
    let purity = media::tone::tone_purity(&pcm, 440.0, 8000);
    assert!(purity > 0.9, "purity {purity}");
    line.shutdown().await;
}

#[tokio::test]
async fn shutdown_releases_calls_and_link_loss_detaches() {
    let (mut ex, line, mut events) = attach(|c| c.answer_after = Some(Duration::ZERO), None).await;
    ex.offer(2, None).await;
    assert!(matches!(ex.recv().await, Message::Acm { .. }));
    assert!(matches!(ex.recv().await, Message::Anm { .. }));
    let stopping = tokio::spawn({
        let line = line.clone();
        async move { line.shutdown().await }
    });
    assert_eq!(
        ex.recv().await,
        Message::Rel {
            cic: Cic(2),
            cause: Cause::NORMAL_CLEARING
        }
    );
    ex.send(&Message::Rlc { cic: Cic(2) }).await;
    timeout(WAIT, stopping)
        .await
        .expect("shut down in time")
        .expect("task");
    assert_eq!(line.answer().await, Err(CommandError::Detached));

    let (ex, _line, mut events2) = attach(|_| {}, None).await;
    drop(ex);
    loop {
        if let LineEvent::Detached { reason } = next(&mut events2).await {
            assert!(reason.contains("closed"), "{reason}");
            break;
        }
    }
    let mut rest = Vec::new();
    while let Some(e) = events.recv().await {
        rest.push(e);
    }
    assert!(matches!(rest.last(), Some(LineEvent::Detached { .. })));
}

#[test]
fn events_read_well() {
    let e = LineEvent::Released {
        cic: Cic(2),
        cause: Cause::NON_SELECTED_USER_CLEARING,
        by_remote: true,
    };
    assert_eq!(
        e.to_string(),
        "cic 2: released by the exchange, cause 26 (non-selected user clearing)"
    );
    assert_eq!(
        serde_json::to_string(&e).expect("json"),
        r#"{"event":"released","cic":2,"cause":26,"by_remote":true}"#
    );
    let a = LineEvent::Attached {
        number: num("+4930123456"),
        law: Law::Pcmu,
        tls: true,
        proved: true,
    };
    assert_eq!(
        serde_json::to_string(&a).expect("json"),
        r#"{"event":"attached","number":"+4930123456","law":"PCMU","tls":true,"proved":true}"#
    );
    assert_eq!(
        a.to_string(),
        "attached as +4930123456 (PCMU) over TLS (exchange key pinned); zone key proved"
    );
}

/// An exchange on `listener` that answers the first ATT with an attach challenge, checks the
/// line's ATP, then sends `answer` (its ATA or ATR); it returns what the line sent.
async fn challenging_exchange(
    stream: impl AsyncRead + AsyncWrite + Unpin,
    branch: &str,
    answer: Message,
) -> Vec<Message> {
    let mut stream = stream;
    let mut decoder = Decoder::new();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    let send = |m: &Message| pstn::codec::encode_to_vec(m).expect("encodes");
    loop {
        while let Some(m) = decoder.pop() {
            let m = m.expect("valid");
            seen.push(m.clone());
            match m {
                Message::Att { .. } => {
                    let atc = Message::Atc {
                        challenge: "v=1;ctr=7".into(),
                        call_ref: "attach-42".into(),
                        branch: branch.into(),
                    };
                    stream.write_all(&send(&atc)).await.expect("write");
                }
                Message::Atp { .. } => {
                    stream.write_all(&send(&answer)).await.expect("write");
                }
                _ => {}
            }
        }
        match timeout(WAIT, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => decoder.push(&chunk[..n]).expect("fits"),
            _ => return seen,
        }
    }
}

#[tokio::test]
async fn attach_challenge_is_proved_by_the_zone() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ex = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        challenging_exchange(
            stream,
            pstn::msg::ATTACH_BRANCH,
            Message::Ata { law: Law::Pcmu },
        )
        .await
    });
    let cfg = LineConfig::new(addr.to_string(), LineTransport::Plain, num("+4930123456"));
    let (line, mut events) = Line::attach(cfg, Some(Box::new(EchoProver)))
        .await
        .expect("attaches");
    assert_eq!(
        next(&mut events).await,
        LineEvent::Attached {
            number: num("+4930123456"),
            law: Law::Pcmu,
            tls: false,
            proved: true,
        }
    );
    line.shutdown().await;
    let seen = ex.await.expect("exchange");
    assert_eq!(
        seen[1],
        Message::Atp {
            proof: "proof(v=1;ctr=7,attach-42,trustring-attach)".into()
        }
    );
}

#[tokio::test]
async fn attach_challenge_needs_a_zone_and_the_attach_branch() {
    // No prover: a plain line cannot take a phone's number.
    for (prover, branch, want) in [
        (None, pstn::msg::ATTACH_BRANCH, "ProofRequired"),
        (
            Some(Box::new(FailingProver) as Box<dyn LineProver>),
            pstn::msg::ATTACH_BRANCH,
            "Prove",
        ),
        // A call's binding sent as an attach challenge: the zone is not asked.
        (
            Some(Box::new(EchoProver) as Box<dyn LineProver>),
            "z9hG4bK-call",
            "BadAttachChallenge",
        ),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ex = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            challenging_exchange(stream, branch, Message::Ata { law: Law::Pcmu }).await
        });
        let cfg = LineConfig::new(addr.to_string(), LineTransport::Plain, num("+4930123456"));
        let err = Line::attach(cfg, prover)
            .await
            .map(|_| ())
            .expect_err("not attached");
        assert!(format!("{err:?}").starts_with(want), "{err:?}");
        let seen = ex.await.expect("exchange");
        assert!(
            !seen.iter().any(|m| matches!(m, Message::Atp { .. })),
            "{seen:?}"
        );
    }
}

#[tokio::test]
async fn tls_link_with_the_pinned_key_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let ours = tls::ServerIdentity::load_or_create(&dir.path().join("a"), None, None, &names)
        .expect("identity");
    let other = tls::ServerIdentity::load_or_create(&dir.path().join("b"), None, None, &names)
        .expect("identity");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&ours).expect("config"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ex = tokio::spawn(async move {
        // First connection: the line pins our key.
        let (tcp, _) = listener.accept().await.expect("accept");
        let stream = acceptor.accept(tcp).await.expect("handshake");
        let seen = challenging_exchange(
            stream,
            pstn::msg::ATTACH_BRANCH,
            Message::Ata { law: Law::Pcma },
        )
        .await;
        // Second: the line pins another key; the handshake fails on its side.
        let (tcp, _) = listener.accept().await.expect("accept");
        let _ = acceptor.accept(tcp).await;
        // Third: plain TCP where TLS is expected.
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 512];
        let _ = timeout(WAIT, tcp.read(&mut buf)).await;
        let _ = tcp
            .write_all(&pstn::codec::encode_to_vec(&Message::Ata { law: Law::Pcma }).expect("x"))
            .await;
        seen
    });
    let cfg = LineConfig::new(
        addr.to_string(),
        LineTransport::Tls(ours.fingerprint),
        num("+4930123456"),
    );
    let (line, mut events) = Line::attach(cfg, Some(Box::new(EchoProver)))
        .await
        .expect("attaches over TLS");
    assert!(matches!(
        next(&mut events).await,
        LineEvent::Attached {
            tls: true,
            proved: true,
            ..
        }
    ));
    line.shutdown().await;
    let cfg = LineConfig::new(
        addr.to_string(),
        LineTransport::Tls(other.fingerprint),
        num("+4930123456"),
    );
    let err = Line::attach(cfg, Some(Box::new(EchoProver)))
        .await
        .map(|_| ())
        .expect_err("a key other than the pinned one");
    assert!(
        matches!(&err, LineError::Tls { reason, .. } if reason.contains("not the pinned one")),
        "{err}"
    );
    let cfg = LineConfig::new(
        addr.to_string(),
        LineTransport::Tls(ours.fingerprint),
        num("+4930123456"),
    );
    let err = Line::attach(cfg, Some(Box::new(EchoProver)))
        .await
        .map(|_| ())
        .expect_err("no TLS");
    assert!(matches!(err, LineError::Tls { .. }), "{err}");
    let seen = ex.await.expect("exchange");
    assert!(matches!(seen[1], Message::Atp { .. }), "{seen:?}");
}
