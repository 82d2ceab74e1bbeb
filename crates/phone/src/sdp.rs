//! The minimal SDP this phone speaks (RFC 4566 / RFC 3264): one audio stream, PCMU only.
//!
//! The phone's agent does not carry media itself: the answer names a UDP port the phone holds
//! open, so the offer/answer exchange is complete and well formed for the caller and the
//! proxy.

use std::net::IpAddr;

use bytes::Bytes;

/// Whether an offer can be answered with PCMU: an `m=audio` line with a non-zero port whose
/// formats include payload type 0, or a dynamic type mapped to `PCMU/8000`.
pub(crate) fn offer_has_pcmu(body: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    // Each m= line with the attribute lines after it, up to the next m= line.
    let media = lines.iter().filter_map(|l| l.strip_prefix("m="));
    let attrs = lines.split(|l| l.starts_with("m=")).skip(1);
    media.zip(attrs).any(|(m, attrs)| {
        let mut f = m.split_ascii_whitespace();
        let (Some("audio"), Some(port), Some(_proto)) = (f.next(), f.next(), f.next()) else {
            return false;
        };
        if port.split('/').next() == Some("0") {
            return false;
        }
        f.any(|pt| {
            pt == "0"
                || attrs.iter().any(|a| {
                    a.strip_prefix("a=rtpmap:")
                        .and_then(|r| r.split_once(' '))
                        .is_some_and(|(n, enc)| {
                            n == pt && enc.to_ascii_uppercase().starts_with("PCMU/8000")
                        })
                })
        })
    })
}

/// The phone's SDP (an answer to a PCMU offer, or the offer in a 200 to an INVITE without
/// one): audio on `ip:port`, PCMU, send and receive.
pub(crate) fn session(ip: IpAddr, port: u16, session_id: u64) -> Bytes {
    let family = if ip.is_ipv6() { "IP6" } else { "IP4" };
    Bytes::from(format!(
        "v=0\r\n\
         o=trustring {session_id} 1 IN {family} {ip}\r\n\
         s=-\r\n\
         c=IN {family} {ip}\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=sendrecv\r\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_pcmu_offers_only() {
        let sipp = b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n\
c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        assert!(offer_has_pcmu(sipp));
        assert!(offer_has_pcmu(
            b"v=0\r\nm=video 5000 RTP/AVP 96\r\nm=audio 5002 RTP/AVP 8 97\r\na=rtpmap:97 pcmu/8000\r\n"
        ));
        assert!(!offer_has_pcmu(b"v=0\r\nm=audio 5000 RTP/AVP 8\r\n"));
        assert!(!offer_has_pcmu(b"v=0\r\nm=audio 0 RTP/AVP 0\r\n"));
        assert!(!offer_has_pcmu(b"v=0\r\nm=video 5000 RTP/AVP 0\r\n"));
        assert!(!offer_has_pcmu(b"m=audio"));
        assert!(!offer_has_pcmu(&[0xff, 0xfe]));
    }

    #[test]
    fn answer_shape() {
        let s = session("127.0.0.1".parse().expect("ip"), 4000, 9);
        let s = std::str::from_utf8(&s).expect("utf8");
        assert!(s.contains("m=audio 4000 RTP/AVP 0\r\n"));
        assert!(s.contains("c=IN IP4 127.0.0.1\r\n"));
        assert!(offer_has_pcmu(s.as_bytes()));
    }
}
