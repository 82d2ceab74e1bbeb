//! Header checks done at parse time, so that the transaction layer and the proxy can read
//! Via, From, To, Call-ID, CSeq, Contact, Route, Max-Forwards, Expires and Date without
//! further error handling; and the headers an error response copies.

use super::parse::ParseError;
use super::raw::has_raw_bytes;
use super::scan::{NameAddrRef, ViaRef, is_digits, is_sip_date, parse_decimal, scan_cseq};
use super::{HeaderName, Headers, Method};

/// Checks the headers of a message (`method` is the request's, `None` for a response) in
/// one pass, without allocating.
pub(crate) fn check_headers(h: &Headers, method: Option<&Method>) -> Result<(), ParseError> {
    fn once(seen: &mut bool, duplicate: &'static str) -> Result<(), ParseError> {
        if std::mem::replace(seen, true) {
            // RFC 4475 multi01
            return Err(ParseError::new(duplicate));
        }
        Ok(())
    }
    let (mut call_id, mut from, mut to, mut via, mut max_forwards) =
        (false, false, false, false, false);
    let mut cseq_method: Option<&str> = None;
    for x in &h.0 {
        let v = x.value.as_str();
        match x.name {
            HeaderName::CallId => {
                once(&mut call_id, "duplicate Call-ID")?;
                // Bytes that were not UTF-8 are no part of a Call-ID (RFC 3261 §25.1 `word`).
                if v.is_empty() || v.bytes().any(|c| c <= b' ' || c == 0x7f) || has_raw_bytes(v) {
                    return Err(ParseError::new("bad Call-ID"));
                }
            }
            HeaderName::CSeq => {
                if cseq_method.is_some() {
                    return Err(ParseError::new("duplicate CSeq"));
                }
                let (num, m) = scan_cseq(v).map_err(ParseError::new)?;
                // RFC 3261 §8.1.1.5: below 2**31 (RFC 4475 scalar02, scalarlg)
                parse_decimal(num, (1 << 31) - 1)
                    .ok_or(ParseError::new("CSeq number too large"))?;
                cseq_method = Some(m);
            }
            HeaderName::From => {
                once(&mut from, "duplicate From")?;
                NameAddrRef::scan(v).map_err(|_| ParseError::new("bad From"))?;
            }
            HeaderName::To => {
                once(&mut to, "duplicate To")?;
                NameAddrRef::scan(v).map_err(|_| ParseError::new("bad To"))?;
            }
            HeaderName::Via => {
                via = true;
                ViaRef::scan(v, true).map_err(|_| ParseError::new("bad Via"))?;
            }
            HeaderName::MaxForwards => {
                once(&mut max_forwards, "duplicate Max-Forwards")?;
                parse_decimal(v, 255).ok_or(ParseError::new("bad Max-Forwards"))?;
            }
            HeaderName::Expires if !is_digits(v) => {
                return Err(ParseError::new("bad Expires"));
            }
            HeaderName::Date if !is_sip_date(v) => {
                return Err(ParseError::new("bad Date")); // RFC 4475 baddate
            }
            HeaderName::Route | HeaderName::RecordRoute
                if !NameAddrRef::scan(v).is_ok_and(|r| r.angle) =>
            {
                return Err(ParseError::new("bad Route/Record-Route"));
            }
            HeaderName::Contact if v != "*" => {
                NameAddrRef::scan(v).map_err(|_| ParseError::new("bad Contact"))?;
            }
            _ => {}
        }
    }
    // RFC 3261 §8.1.1: the minimum header set (RFC 4475 insuf).
    for (seen, what) in [
        (call_id, "missing Call-ID"),
        (cseq_method.is_some(), "missing CSeq"),
        (from, "missing From"),
        (to, "missing To"),
        (via, "missing Via"),
    ] {
        if !seen {
            return Err(ParseError::new(what));
        }
    }
    if let (Some(method), Some(cseq_method)) = (method, cseq_method)
        && method.as_str() != cseq_method
    {
        // RFC 4475 mismatch01, mismatch02
        return Err(ParseError::new("CSeq method does not match Request-Line"));
    }
    Ok(())
}

/// The headers an error response copies (RFC 3261 §8.2.6.2): every Via, and the first
/// From, To, Call-ID and CSeq. `None` only when no response can be addressed: no top Via with
/// a usable sent-by, or no From, To or Call-ID (RFC 4475 insuf). Values are copied as
/// received, even malformed ones (a 400 to RFC 4475 badinv01, baddn or scalar02 must echo
/// them), the CSeq too: a `CSeq: -1 INVITE` is echoed, and matching the answer to its
/// transaction is the client's business. Without any CSeq, `0 method` with the
/// Request-Line's `method` (a client matches by branch and CSeq method, RFC 3261 §17.1.3).
pub(crate) fn reply_headers(h: &Headers, method: &str) -> Option<Headers> {
    ViaRef::scan(h.get(&HeaderName::Via)?, false).ok()?;
    let from = h.get(&HeaderName::From)?;
    let to = h.get(&HeaderName::To)?;
    let call_id = h.get(&HeaderName::CallId).filter(|c| !c.is_empty())?;
    let mut out = Headers(Vec::with_capacity(8));
    for v in h.get_all(&HeaderName::Via) {
        out.push(HeaderName::Via, v);
    }
    out.push(HeaderName::From, from);
    out.push(HeaderName::To, to);
    out.push(HeaderName::CallId, call_id);
    match h.get(&HeaderName::CSeq) {
        Some(cseq) => out.push(HeaderName::CSeq, cseq),
        None => out.push(HeaderName::CSeq, format!("0 {method}")),
    }
    Some(out)
}
