//! Header checks done at parse time, so that the transaction layer and the proxy can read
//! Via, From, To, Call-ID, CSeq, Contact, Route, Max-Forwards, Expires and Date without
//! further error handling; and the headers an error response copies.

use super::parse::ParseError;
use super::scan::{NameAddrRef, ViaRef, is_digits, is_sip_date, parse_decimal, scan_cseq};
use super::{HeaderName, Headers, Method};

/// Checks the headers of a message (`method` is the request's, `None` for a response) in
/// one pass, without allocating.
pub(crate) fn check_headers(h: &Headers, method: Option<&Method>) -> Result<(), ParseError> {
    fn once(seen: &mut bool) -> Result<(), ParseError> {
        if std::mem::replace(seen, true) {
            // RFC 4475 multi01
            return Err(ParseError::new("duplicate single-value header"));
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
                once(&mut call_id)?;
                if v.is_empty() || v.bytes().any(|c| c <= b' ' || c == 0x7f) {
                    return Err(ParseError::new("bad Call-ID"));
                }
            }
            HeaderName::CSeq => {
                if cseq_method.is_some() {
                    return Err(ParseError::new("duplicate single-value header"));
                }
                let (num, m) = scan_cseq(v).map_err(ParseError::new)?;
                // RFC 3261 §8.1.1.5: below 2**31 (RFC 4475 scalar02, scalarlg)
                parse_decimal(num, (1 << 31) - 1)
                    .ok_or(ParseError::new("CSeq number too large"))?;
                cseq_method = Some(m);
            }
            HeaderName::From => {
                once(&mut from)?;
                NameAddrRef::scan(v).map_err(|_| ParseError::new("bad From"))?;
            }
            HeaderName::To => {
                once(&mut to)?;
                NameAddrRef::scan(v).map_err(|_| ParseError::new("bad To"))?;
            }
            HeaderName::Via => {
                via = true;
                ViaRef::scan(v, true).map_err(|_| ParseError::new("bad Via"))?;
            }
            HeaderName::MaxForwards => {
                once(&mut max_forwards)?;
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
/// From, To, Call-ID and CSeq. `None` when they cannot make a response: no top Via with a
/// usable sent-by, no CSeq number and method to match the client transaction, or no
/// From, To or Call-ID (RFC 4475 insuf). Values are copied as received, even malformed
/// ones (a 400 to RFC 4475 badinv01, baddn or scalar02 must echo them).
pub(crate) fn reply_headers(h: &Headers) -> Option<Headers> {
    ViaRef::scan(h.get(&HeaderName::Via)?, false).ok()?;
    let from = h.get(&HeaderName::From)?;
    let to = h.get(&HeaderName::To)?;
    let call_id = h.get(&HeaderName::CallId).filter(|c| !c.is_empty())?;
    let cseq = h.get(&HeaderName::CSeq)?;
    scan_cseq(cseq).ok()?;
    let mut out = Headers(Vec::with_capacity(8));
    for v in h.get_all(&HeaderName::Via) {
        out.push(HeaderName::Via, v);
    }
    out.push(HeaderName::From, from);
    out.push(HeaderName::To, to);
    out.push(HeaderName::CallId, call_id);
    out.push(HeaderName::CSeq, cseq);
    Some(out)
}
