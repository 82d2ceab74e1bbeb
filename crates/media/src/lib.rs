//! Voice media for trustring's IP→PSTN gateway and phone agent.
//!
//! The gateway terminates the media of a call's PSTN leg: it answers the IP side's SDP offer
//! with a G.711 law (and, for an `RTP/SAVP` offer, its own SDES key), relays RTP or SRTP, and
//! transcodes μ-law ↔ A-law when the two sides disagree.
//! The phone agent and the end-to-end tests need the same pieces to send and check audio.
//! This crate holds them, as plain functions over byte slices with no sockets, clocks or
//! threads, so that every piece is unit-tested and fuzzed in isolation:
//!
//! - [`g711`]: ITU-T G.711 μ-law/A-law coding and law-to-law transcoding tables.
//! - [`rtp`]: the RFC 3550 fixed header, parsed and written; a sender's sequence/timestamp.
//! - [`srtp`]: RFC 3711 SRTP (AES_CM_128_HMAC_SHA1_80/32) keyed by RFC 4568 SDES.
//! - [`sdp`]: the audio stream of an RFC 4566 offer, and the RFC 3264 answer choice.
//! - [`wav`]: mono PCM16 and G.711 WAV files (the only IO, over `std::io::Read`/`Write`).
//! - [`tone`]: sine generation and Goertzel detection, to prove audio crossed a call.
//!
//! What it does not do: no jitter buffer (packets are relayed or decoded in arrival order),
//! no packet-loss concealment (a lost frame is silence or simply missing), no RTCP beyond
//! recognising it (so no SRTCP), no codecs other than G.711, no resampling, no echo cancellation,
//! and no DTMF event decoding (only the `telephone-event` payload type is negotiated).

pub mod g711;
pub mod rtp;
pub mod sdp;
pub mod srtp;
pub mod tone;
pub mod wav;

pub use g711::Law;
