//! The driver's way to the server: a UDP socket, or one TLS connection (RFC 3261 §26) framed
//! as a stream (§18.3, `sip_core::message::frame_stream`).
//!
//! Over TLS everything goes over the one connection, whatever address the agent names: the
//! server is the phone's outbound proxy, and it reaches a contact registered over TLS only
//! over the connection the REGISTER came on.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use sip_core::message::{Frame, frame_stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::{PhoneError, TlsClient};

/// Largest datagram read, and the size of one read from the stream.
pub(crate) const MAX_READ: usize = 65_535;
/// How long connecting and the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one message may take to be written to the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A UDP socket or a TLS connection.
pub(crate) enum Link {
    /// Datagrams to and from anyone.
    Udp(UdpSocket),
    /// The connection to the server.
    Tls(Box<TlsLink>),
}

/// A TLS connection to the server and what has been read from it but not yet framed.
pub(crate) struct TlsLink {
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
    local: SocketAddr,
    pending: Vec<u8>,
}

/// What one read brought.
#[derive(Default)]
pub(crate) struct Received {
    /// Whole messages (possibly none yet), each with whom it came from.
    pub(crate) messages: Vec<(SocketAddr, Vec<u8>)>,
    /// Set when the connection is gone (after `messages`): why.
    pub(crate) closed: Option<String>,
}

impl Received {
    fn closed(reason: String) -> Self {
        Self {
            messages: Vec::new(),
            closed: Some(reason),
        }
    }
}

impl TlsLink {
    /// Connects to `server` from `local` (an unspecified IP: whatever the host picks) and
    /// runs the TLS handshake, verifying the server as `client` says.
    pub(crate) async fn connect(
        local: SocketAddr,
        server: SocketAddr,
        client: &TlsClient,
    ) -> Result<Self, PhoneError> {
        let name = match &client.server_name {
            Some(n) => tls::pki_types::ServerName::try_from(n.clone())
                .map_err(|e| PhoneError::Config(format!("TLS server name: {e}")))?,
            None => tls::pki_types::ServerName::from(server.ip()),
        };
        let connect = async {
            let socket = if server.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(PhoneError::Socket)?;
            if !local.ip().is_unspecified() || local.port() != 0 {
                socket.bind(local).map_err(PhoneError::Socket)?;
            }
            let tcp = socket
                .connect(server)
                .await
                .map_err(|e| PhoneError::Tls(format!("connecting to {server}: {e}")))?;
            tcp.set_nodelay(true).map_err(PhoneError::Socket)?;
            let local = tcp.local_addr().map_err(PhoneError::Socket)?;
            let stream = TlsConnector::from(client.config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| PhoneError::Tls(format!("handshake with {server}: {e}")))?;
            Ok(Self {
                stream,
                peer: server,
                local,
                pending: Vec::new(),
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| PhoneError::Tls(format!("{server} did not answer in time")))?
    }

    /// The connection's local address: what Via and Contact name.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Link {
    /// Waits for the next read. Cancel-safe: the only await is the read itself, and what it
    /// read is framed before returning.
    pub(crate) async fn recv(&mut self, buf: &mut [u8]) -> Received {
        match self {
            Self::Udp(socket) => match socket.recv_from(buf).await {
                Ok((n, from)) => Received {
                    messages: vec![(from, buf[..n].to_vec())],
                    closed: None,
                },
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    Received::default()
                }
            },
            Self::Tls(link) => match link.stream.read(buf).await {
                Ok(0) => Received::closed("the server closed the connection".to_owned()),
                Ok(n) => {
                    link.pending.extend_from_slice(&buf[..n]);
                    take_frames(&mut link.pending, link.peer)
                }
                Err(e) => Received::closed(format!("reading from the server: {e}")),
            },
        }
    }

    /// Sends `bytes` to `to` (over TLS: to the server, whatever `to` says).
    pub(crate) async fn send(&mut self, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Udp(socket) => socket.send_to(bytes, to).await.map(|_| ()),
            Self::Tls(link) => {
                let write = async {
                    link.stream.write_all(bytes).await?;
                    link.stream.flush().await
                };
                // A server that stops reading must not stall the agent's timers for ever.
                tokio::time::timeout(WRITE_TIMEOUT, write)
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "the server stopped reading")
                    })?
            }
        }
    }

    /// A keep-alive ping over TLS (RFC 5626 §3.5.1, CRLF CRLF): the server answers with a
    /// CRLF, and a dead connection shows itself. Nothing over UDP.
    pub(crate) async fn ping(&mut self) -> io::Result<()> {
        match self {
            Self::Udp(_) => Ok(()),
            Self::Tls(_) => {
                self.send(SocketAddr::from(([0, 0, 0, 0], 0)), b"\r\n\r\n")
                    .await
            }
        }
    }

    /// Ends the connection cleanly (TLS close_notify, then FIN), giving up after a second
    /// on a peer that does not read.
    pub(crate) async fn close(&mut self) {
        if let Self::Tls(link) = self {
            let _ = tokio::time::timeout(Duration::from_secs(1), link.stream.shutdown()).await;
        }
    }

    /// Whether this is a connection, which must be kept alive.
    pub(crate) fn is_stream(&self) -> bool {
        matches!(self, Self::Tls(_))
    }
}

/// Takes every whole message off the front of `pending` (bytes read from `peer`'s stream);
/// keep-alive CRLFs are skipped. A framing error (no Content-Length, too large) cannot be
/// recovered from on a stream: the connection is given up.
fn take_frames(pending: &mut Vec<u8>, peer: SocketAddr) -> Received {
    let mut out = Received::default();
    loop {
        match frame_stream(pending) {
            Ok(Frame::Incomplete) => return out,
            Ok(Frame::KeepAlive(n)) => {
                pending.drain(..n.min(pending.len()));
            }
            Ok(Frame::Message(n)) => {
                let rest = pending.split_off(n.min(pending.len()));
                out.messages.push((peer, std::mem::replace(pending, rest)));
            }
            Err(e) => {
                pending.clear();
                out.closed = Some(format!("the server sent unframeable bytes: {e}"));
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &str = "OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKx\r\n\
From: <sip:s@x>;tag=1\r\nTo: <sip:a@x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 4\r\n\r\nbody";

    #[test]
    fn frames_split_and_joined_messages_and_skips_pongs() {
        let peer: SocketAddr = "127.0.0.1:5061".parse().expect("addr");
        let wire = format!("\r\n{OPTIONS}\r\n\r\n{OPTIONS}");
        let (a, b) = wire.as_bytes().split_at(wire.len() / 2 + 7);
        let mut pending = a.to_vec();
        let first = take_frames(&mut pending, peer);
        assert_eq!(first.messages.len(), 1);
        assert_eq!(first.messages[0].1, OPTIONS.as_bytes());
        assert!(first.closed.is_none());
        pending.extend_from_slice(b);
        let second = take_frames(&mut pending, peer);
        assert_eq!(second.messages.len(), 1);
        assert_eq!(second.messages[0], (peer, OPTIONS.as_bytes().to_vec()));
        assert!(pending.is_empty());
    }

    #[test]
    fn a_message_without_content_length_closes_the_stream() {
        let peer: SocketAddr = "127.0.0.1:5061".parse().expect("addr");
        let bad = OPTIONS.replace("Content-Length: 4\r\n", "");
        let mut pending = format!("{OPTIONS}{bad}").into_bytes();
        let got = take_frames(&mut pending, peer);
        assert_eq!(got.messages.len(), 1);
        assert!(got.closed.is_some_and(|r| r.contains("unframeable")));
    }
}
