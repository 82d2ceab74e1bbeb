//! The phone's error type.

/// Why a phone operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhoneError {
    /// The configuration cannot work (bad user name, domain, device id, expiry …).
    #[error("invalid phone configuration: {0}")]
    Config(String),
    /// The sockets (SIP and media) could not be set up.
    #[error("cannot set up the phone's socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The TLS connection to the server could not be made (refused, or the server's key or
    /// certificate is not the one trusted).
    #[error("cannot connect to the server over TLS: {0}")]
    Tls(String),
    /// No call with this Call-ID is in a state where the operation applies (answer: ringing;
    /// hangup: ringing, answered or connected).
    #[error("no such call in a suitable state: {0}")]
    UnknownCall(String),
    /// The agent task has stopped (after a shutdown, or it failed).
    #[error("the phone agent has stopped")]
    Stopped,
}
