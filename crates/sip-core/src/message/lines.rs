//! The header section as lines: one pass that finds line ends (CRLF, or a bare LF), refuses
//! bare CRs, joins folded lines to their header field, and stops at the empty line.
//! Shared by [`super::parse`] and [`super::frame_stream`], so both agree on where a message
//! ends.

use std::ops::Range;

/// The index of the first CR or LF in `hay`, eight bytes at a time.
fn find_eol(hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const CR: u64 = LO * b'\r' as u64;
    const LF: u64 = LO * b'\n' as u64;
    let mut chunks = hay.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let (a, b) = (w ^ CR, w ^ LF);
        if (a.wrapping_sub(LO) & !a | b.wrapping_sub(LO) & !b) & HI != 0 {
            break;
        }
        offset += 8;
    }
    hay.get(offset..)?
        .iter()
        .position(|&c| c == b'\r' || c == b'\n')
        .map(|i| offset + i)
}

/// The line starting at `from`: its end (line ending excluded) and where the next line
/// starts; `Err` at a CR not followed by LF, with where to resume. A last line without
/// line ending ends at the end of `buf`.
pub(crate) fn next_line(buf: &[u8], from: usize) -> Result<(usize, usize), usize> {
    let rest = buf.get(from..).unwrap_or_default();
    match find_eol(rest) {
        None => Ok((buf.len(), buf.len())),
        Some(i) => {
            let e = from + i;
            match (buf[e], buf.get(e + 1)) {
                (b'\n', _) => Ok((e, e + 1)),
                (_, Some(b'\n')) => Ok((e, e + 2)),
                _ => Err(e + 1),
            }
        }
    }
}

/// One header field: its name (trailing LWS removed) and its raw value (folded lines
/// included, final line ending excluded), as ranges of the buffer.
pub(crate) struct Field {
    pub(crate) name: Range<usize>,
    pub(crate) value: Range<usize>,
    /// Whether the value continues on folded lines (then it holds line endings).
    pub(crate) folded: bool,
}

/// How the header section ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadEnd {
    /// Not reached yet.
    Open,
    /// At the empty line; the body starts here.
    Body(usize),
    /// The buffer ended right after a complete line, without the empty line.
    Eof,
    /// The buffer ended inside a line.
    Truncated,
}

/// Iterates over the header fields after the start line, up to the empty line.
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Where the header section ended (final once the iterator returned `None`).
    pub(crate) end: HeadEnd,
}

impl<'a> Fields<'a> {
    /// Fields of `buf` from `pos`, the start of the line after the start line.
    pub(crate) fn new(buf: &'a [u8], pos: usize) -> Self {
        Self {
            buf,
            pos,
            end: HeadEnd::Open,
        }
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<Field, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.end != HeadEnd::Open {
            return None;
        }
        let buf = self.buf;
        let start = self.pos;
        let first = match buf.get(start..) {
            None | Some([]) => {
                self.end = HeadEnd::Eof;
                return None;
            }
            Some([b'\n', ..]) => {
                self.end = HeadEnd::Body(start + 1);
                return None;
            }
            Some([b'\r', b'\n', ..]) => {
                self.end = HeadEnd::Body(start + 2);
                return None;
            }
            Some([c, ..]) => *c,
        };
        let (first_end, mut next) = match next_line(buf, start) {
            Ok(line) => line,
            Err(resume) => {
                self.pos = resume;
                return Some(Err("bare CR in header section"));
            }
        };
        let mut end = first_end;
        while matches!(buf.get(next), Some(b' ' | b'\t')) {
            match next_line(buf, next) {
                Ok((e, n)) => (end, next) = (e, n),
                Err(resume) => {
                    self.pos = resume;
                    return Some(Err("bare CR in header section"));
                }
            }
        }
        self.pos = next;
        if next == buf.len() && end == next {
            self.end = HeadEnd::Truncated;
        }
        if first == b' ' || first == b'\t' {
            return Some(Err("continuation before first header"));
        }
        let Some(colon) = buf[start..first_end].iter().position(|&c| c == b':') else {
            return Some(Err("header line without colon"));
        };
        let colon = start + colon;
        let mut name_end = colon;
        while name_end > start && matches!(buf[name_end - 1], b' ' | b'\t') {
            name_end -= 1;
        }
        Some(Ok(Field {
            name: start..name_end,
            value: colon + 1..end,
            folded: end != first_end,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field as (name, raw value, folded), or the line's error.
    type Seen = Result<(String, String, bool), &'static str>;

    fn fields(buf: &[u8]) -> (Vec<Seen>, HeadEnd) {
        let mut it = Fields::new(buf, 0);
        let out = it
            .by_ref()
            .map(|f| {
                f.map(|f| {
                    let s = |r: Range<usize>| String::from_utf8_lossy(&buf[r]).into_owned();
                    (s(f.name), s(f.value), f.folded)
                })
            })
            .collect();
        (out, it.end)
    }

    #[test]
    fn splits_fields() {
        let (f, end) = fields(b"A : 1\r\nB:2\r\n 3\n\tx\r\n\r\nbody\r\n\r\n");
        assert_eq!(
            f,
            vec![
                Ok(("A".into(), " 1".into(), false)),
                Ok(("B".into(), "2\r\n 3\n\tx".into(), true)),
            ]
        );
        assert_eq!(end, HeadEnd::Body(21));
    }

    #[test]
    fn ends_and_errors() {
        assert_eq!(fields(b"A: 1\r\n").1, HeadEnd::Eof);
        assert_eq!(fields(b"A: 1\r\nB: 2").1, HeadEnd::Truncated);
        let (f, end) = fields(b"A: 1\rB: 2\r\nC\r\n\r\n");
        assert_eq!(f[0], Err("bare CR in header section"));
        assert_eq!(f[1], Ok(("B".into(), " 2".into(), false)));
        assert_eq!(f[2], Err("header line without colon"));
        assert_eq!(end, HeadEnd::Body(16));
        assert_eq!(
            fields(b" x: 1\r\n\r\n").0[0],
            Err("continuation before first header")
        );
    }

    #[test]
    fn eol_search() {
        assert_eq!(find_eol(b"0123456789abcdef\n"), Some(16));
        assert_eq!(find_eol(b"0123456\r"), Some(7));
        assert_eq!(find_eol(b"0123456789"), None);
        assert_eq!(next_line(b"ab\r\ncd", 0), Ok((2, 4)));
        assert_eq!(next_line(b"ab\rcd", 0), Err(3));
        assert_eq!(next_line(b"ab", 0), Ok((2, 2)));
    }
}
