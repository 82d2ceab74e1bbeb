//! Mono WAV (RIFF) files: 16-bit PCM and 8-bit G.711.
//!
//! Tests and tools need audio on disk: prompts for SIPp's `rtp_stream` action (which plays
//! 8 kHz G.711 WAV files, format tag 7 for μ-law and 6 for A-law), and recordings of what
//! crossed the gateway. Reading accepts PCM16 and G.711 files (also in the
//! `WAVE_FORMAT_EXTENSIBLE` wrapper), skips unknown chunks and bounds the data it loads.

use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::g711::{self, Law};

/// `WAVE_FORMAT_PCM`.
const FORMAT_PCM: u16 = 1;
/// `WAVE_FORMAT_ALAW`.
const FORMAT_ALAW: u16 = 6;
/// `WAVE_FORMAT_MULAW`.
const FORMAT_MULAW: u16 = 7;
/// `WAVE_FORMAT_EXTENSIBLE`: the real tag is the first two bytes of the sub-format GUID.
const FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// The data size a streaming writer leaves until [`PcmWavWriter::finish`] patches it; a reader
/// takes it to mean "up to the end of the file".
const UNKNOWN_SIZE: u32 = u32::MAX;

/// The most sample data [`read`] loads: 64 MiB, over an hour of 8 kHz PCM16.
pub const MAX_DATA_BYTES: u64 = 64 << 20;

/// The largest `fmt ` chunk accepted (the extensible form is 40 bytes).
const MAX_FMT_BYTES: u32 = 1024;

/// Why a WAV file cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WavError {
    /// Reading failed.
    #[error("cannot read the WAV file: {0}")]
    Io(#[from] io::Error),
    /// No `RIFF`…`WAVE` header.
    #[error("not a RIFF WAVE file")]
    NotWav,
    /// The file ends inside a chunk.
    #[error("the WAV file is truncated")]
    Truncated,
    /// The `fmt ` chunk is too short or too long, or says 0 Hz.
    #[error("malformed fmt chunk")]
    BadFormat,
    /// A format this crate does not decode (only mono PCM16, μ-law and A-law are).
    #[error("unsupported WAV format: tag {format_tag}, {channels} channel(s), {bits} bits")]
    Unsupported {
        /// The format tag (1 PCM, 6 A-law, 7 μ-law …).
        format_tag: u16,
        /// The channel count.
        channels: u16,
        /// Bits per sample.
        bits: u16,
    },
    /// A `data` chunk before any `fmt ` chunk.
    #[error("data chunk before the fmt chunk")]
    MissingFormat,
    /// No `data` chunk.
    #[error("no data chunk")]
    MissingData,
    /// More sample data than the limit.
    #[error("the WAV data exceeds {0} bytes")]
    TooLarge(u64),
}

/// How the samples of a file were stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WavFormat {
    /// 16-bit little-endian linear PCM.
    Pcm16,
    /// 8-bit G.711 codes.
    G711(Law),
}

/// A decoded mono WAV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wav {
    /// The sampling rate in Hz.
    pub rate: u32,
    /// The samples, decoded to linear 16-bit.
    pub samples: Vec<i16>,
    /// How the file stored them.
    pub format: WavFormat,
}

/// Writes a mono 16-bit PCM WAV file.
pub fn write_pcm16<W: Write>(mut w: W, rate: u32, samples: &[i16]) -> io::Result<()> {
    let data_len = data_len(samples.len(), 2)?;
    w.write_all(&header(FORMAT_PCM, rate, 16, data_len))?;
    w.write_all(&pcm_bytes(samples))
}

/// Writes a mono 8 kHz G.711 WAV file (format tag 7 for μ-law, 6 for A-law), as SIPp's
/// `rtp_stream` and `sox` expect: an 18-byte `fmt ` chunk, a `fact` chunk, then the codes.
pub fn write_g711<W: Write>(mut w: W, law: Law, codes: &[u8]) -> io::Result<()> {
    let tag = match law {
        Law::Pcmu => FORMAT_MULAW,
        Law::Pcma => FORMAT_ALAW,
    };
    let data_len = data_len(codes.len(), 1)?;
    w.write_all(&header(tag, g711::SAMPLE_RATE, 8, data_len))?;
    w.write_all(codes)?;
    if data_len % 2 == 1 {
        // RIFF chunks are padded to an even length.
        w.write_all(&[0])?;
    }
    Ok(())
}

/// Reads a mono PCM16 or G.711 WAV file, loading at most [`MAX_DATA_BYTES`] of samples.
pub fn read<R: Read>(r: R) -> Result<Wav, WavError> {
    read_with_limit(r, MAX_DATA_BYTES)
}

/// As [`read`], with a caller-chosen bound on the sample data.
pub fn read_with_limit<R: Read>(mut r: R, max_data_bytes: u64) -> Result<Wav, WavError> {
    let mut riff = [0u8; 12];
    read_exact(&mut r, &mut riff).map_err(|e| match e {
        WavError::Truncated => WavError::NotWav,
        other => other,
    })?;
    if &riff[0..4] != b"RIFF" || &riff[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    let mut format = None;
    loop {
        let mut chunk = [0u8; 8];
        match r.read(&mut chunk[..1])? {
            0 => return Err(WavError::MissingData),
            _ => read_exact(&mut r, &mut chunk[1..])?,
        }
        let size = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        match &chunk[0..4] {
            b"fmt " => {
                if !(16..=MAX_FMT_BYTES).contains(&size) {
                    return Err(WavError::BadFormat);
                }
                let mut fmt = vec![0u8; size as usize + (size as usize & 1)];
                read_exact(&mut r, &mut fmt)?;
                format = Some(parse_fmt(&fmt)?);
            }
            b"data" => {
                let (rate, format) = format.ok_or(WavError::MissingFormat)?;
                let mut data = Vec::new();
                if size == UNKNOWN_SIZE {
                    r.take(max_data_bytes + 1).read_to_end(&mut data)?;
                    if data.len() as u64 > max_data_bytes {
                        return Err(WavError::TooLarge(max_data_bytes));
                    }
                } else {
                    if u64::from(size) > max_data_bytes {
                        return Err(WavError::TooLarge(max_data_bytes));
                    }
                    r.take(u64::from(size)).read_to_end(&mut data)?;
                    if data.len() as u64 != u64::from(size) {
                        return Err(WavError::Truncated);
                    }
                }
                let samples = match format {
                    WavFormat::Pcm16 => data
                        .chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]]))
                        .collect(),
                    WavFormat::G711(law) => {
                        let mut samples = Vec::with_capacity(data.len());
                        g711::decode_frame(law, &data, &mut samples);
                        samples
                    }
                };
                return Ok(Wav {
                    rate,
                    samples,
                    format,
                });
            }
            _ => {
                let skip = u64::from(size) + u64::from(size & 1);
                let skipped = io::copy(&mut (&mut r).take(skip), &mut io::sink())?;
                if skipped != skip {
                    return Err(WavError::Truncated);
                }
            }
        }
    }
}

/// A WAV writer for a recorder that appends frames as they arrive: the header is written
/// first with placeholder sizes, which [`PcmWavWriter::finish`] patches.
///
/// A file left unfinished (the process died) still reads back with [`read`]: the
/// placeholder data size means "to the end of the file".
#[derive(Debug)]
pub struct PcmWavWriter<W: Write + Seek> {
    inner: W,
    /// Where the header starts in `inner`.
    start: u64,
    data_len: u32,
    buf: Vec<u8>,
}

impl<W: Write + Seek> PcmWavWriter<W> {
    /// Writes the header at the current position (normally a new file's start).
    pub fn create(mut inner: W, rate: u32) -> io::Result<Self> {
        let start = inner.stream_position()?;
        let mut head = header(FORMAT_PCM, rate, 16, 0);
        // Placeholders until finish(): RIFF size and data size.
        head[4..8].copy_from_slice(&UNKNOWN_SIZE.to_le_bytes());
        head[40..44].copy_from_slice(&UNKNOWN_SIZE.to_le_bytes());
        inner.write_all(&head)?;
        Ok(Self {
            inner,
            start,
            data_len: 0,
            buf: Vec::new(),
        })
    }

    /// Appends samples (one `write_all` per call).
    pub fn write_samples(&mut self, samples: &[i16]) -> io::Result<()> {
        let added = data_len(samples.len(), 2)?;
        let total = self
            .data_len
            .checked_add(added)
            .filter(|t| *t <= u32::MAX - 36)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "WAV file over 4 GiB"))?;
        self.buf.clear();
        self.buf
            .extend(samples.iter().flat_map(|s| s.to_le_bytes()));
        self.inner.write_all(&self.buf)?;
        self.data_len = total;
        Ok(())
    }

    /// The number of samples written so far.
    pub fn samples_written(&self) -> u32 {
        self.data_len / 2
    }

    /// Patches the RIFF and data sizes, flushes, and returns the inner writer positioned at
    /// the end of the file.
    pub fn finish(mut self) -> io::Result<W> {
        let end = self.inner.stream_position()?;
        self.inner.seek(SeekFrom::Start(self.start + 4))?;
        self.inner.write_all(&(36 + self.data_len).to_le_bytes())?;
        self.inner.seek(SeekFrom::Start(self.start + 40))?;
        self.inner.write_all(&self.data_len.to_le_bytes())?;
        self.inner.seek(SeekFrom::Start(end))?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// The byte length of `count` samples of `width` bytes, if a RIFF file can hold it.
fn data_len(count: usize, width: usize) -> io::Result<u32> {
    count
        .checked_mul(width)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n <= u32::MAX - 60)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "WAV data over 4 GiB"))
}

/// The RIFF header, `fmt ` chunk (and for non-PCM formats a `fact` chunk) and `data` chunk
/// header of a mono file.
fn header(tag: u16, rate: u32, bits: u16, data_len: u32) -> Vec<u8> {
    let pcm = tag == FORMAT_PCM;
    let block_align = bits / 8;
    let fmt_len: u32 = if pcm { 16 } else { 18 };
    let fact_len: u32 = if pcm { 0 } else { 12 };
    let riff_len = 4 + (8 + fmt_len) + fact_len + 8 + data_len + (data_len & 1);
    let mut h = Vec::with_capacity(58);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&riff_len.to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&fmt_len.to_le_bytes());
    h.extend_from_slice(&tag.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * u32::from(block_align)).to_le_bytes());
    h.extend_from_slice(&block_align.to_le_bytes());
    h.extend_from_slice(&bits.to_le_bytes());
    if !pcm {
        h.extend_from_slice(&0u16.to_le_bytes()); // cbSize
        h.extend_from_slice(b"fact");
        h.extend_from_slice(&4u32.to_le_bytes());
        h.extend_from_slice(&(data_len / u32::from(block_align)).to_le_bytes());
    }
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    h
}

fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// The sampling rate and format of a `fmt ` chunk body (at least 16 bytes).
fn parse_fmt(fmt: &[u8]) -> Result<(u32, WavFormat), WavError> {
    let u16_at = |i: usize| fmt.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let (Some(mut format_tag), Some(channels), Some(bits)) = (u16_at(0), u16_at(2), u16_at(14))
    else {
        return Err(WavError::BadFormat);
    };
    let rate = fmt
        .get(4..8)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .filter(|r| *r > 0)
        .ok_or(WavError::BadFormat)?;
    if format_tag == FORMAT_EXTENSIBLE {
        format_tag = u16_at(24).ok_or(WavError::BadFormat)?;
    }
    let format = match (format_tag, channels, bits) {
        (FORMAT_PCM, 1, 16) => WavFormat::Pcm16,
        (FORMAT_MULAW, 1, 8) => WavFormat::G711(Law::Pcmu),
        (FORMAT_ALAW, 1, 8) => WavFormat::G711(Law::Pcma),
        _ => {
            return Err(WavError::Unsupported {
                format_tag,
                channels,
                bits,
            });
        }
    };
    Ok((rate, format))
}

/// `read_exact` with end of file reported as [`WavError::Truncated`].
fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), WavError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => WavError::Truncated,
        _ => WavError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::tone;

    #[test]
    fn pcm16_round_trip() {
        let samples: Vec<i16> = vec![0, 1, -1, i16::MAX, i16::MIN, 1234];
        let mut file = Vec::new();
        write_pcm16(&mut file, 16000, &samples).expect("write");
        assert_eq!(file.len(), 44 + 12);
        assert_eq!(&file[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes([file[4], file[5], file[6], file[7]]), 48);
        let wav = read(file.as_slice()).expect("read");
        assert_eq!(
            wav,
            Wav {
                rate: 16000,
                samples,
                format: WavFormat::Pcm16
            }
        );
    }

    #[test]
    fn g711_round_trip_decodes() {
        for law in [Law::Pcmu, Law::Pcma] {
            let tone = tone::sine(1000.0, 0.5, 801, 8000);
            let mut codes = Vec::new();
            g711::encode_frame(law, &tone, &mut codes);
            let mut file = Vec::new();
            write_g711(&mut file, law, &codes).expect("write");
            assert_eq!(file.len(), 58 + 801 + 1, "header, odd data, pad byte");
            let tag = u16::from_le_bytes([file[20], file[21]]);
            assert_eq!(tag, if law == Law::Pcmu { 7 } else { 6 });
            let wav = read(file.as_slice()).expect("read");
            assert_eq!(wav.rate, 8000);
            assert_eq!(wav.format, WavFormat::G711(law));
            let mut expected = Vec::new();
            g711::decode_frame(law, &codes, &mut expected);
            assert_eq!(wav.samples, expected);
        }
    }

    #[test]
    fn skips_unknown_chunks_and_reads_extensible() {
        let mut file = b"RIFF\0\0\0\0WAVE".to_vec();
        file.extend_from_slice(b"LIST\x03\0\0\0abc\0"); // odd-sized chunk with pad byte
        file.extend_from_slice(b"fmt \x28\0\0\0");
        let mut fmt = vec![0u8; 40];
        fmt[0..2].copy_from_slice(&FORMAT_EXTENSIBLE.to_le_bytes());
        fmt[2..4].copy_from_slice(&1u16.to_le_bytes());
        fmt[4..8].copy_from_slice(&8000u32.to_le_bytes());
        fmt[14..16].copy_from_slice(&8u16.to_le_bytes());
        fmt[24..26].copy_from_slice(&FORMAT_MULAW.to_le_bytes());
        file.extend_from_slice(&fmt);
        file.extend_from_slice(b"data\x02\0\0\0\xFF\x80");
        let wav = read(file.as_slice()).expect("read");
        assert_eq!(wav.samples, [0, 32124]);
        assert_eq!(wav.format, WavFormat::G711(Law::Pcmu));
    }

    #[test]
    fn streaming_writer_patches_sizes() {
        let mut w = PcmWavWriter::create(Cursor::new(Vec::new()), 8000).expect("create");
        let frame = tone::sine(440.0, 0.3, 160, 8000);
        for _ in 0..3 {
            w.write_samples(&frame).expect("write");
        }
        assert_eq!(w.samples_written(), 480);
        let file = w.finish().expect("finish").into_inner();
        let mut expected = Vec::new();
        write_pcm16(&mut expected, 8000, &frame.repeat(3)).expect("write");
        assert_eq!(file, expected);
    }

    #[test]
    fn unfinished_streaming_file_reads_to_the_end() {
        let mut w = PcmWavWriter::create(Cursor::new(Vec::new()), 8000).expect("create");
        w.write_samples(&[1, 2, 3]).expect("write");
        let file = w.inner.into_inner();
        assert_eq!(read(file.as_slice()).expect("read").samples, [1, 2, 3]);
    }

    #[test]
    fn typed_errors() {
        assert!(matches!(read(&b""[..]), Err(WavError::NotWav)));
        assert!(matches!(
            read(&b"RIFF\0\0\0\0AVI "[..]),
            Err(WavError::NotWav)
        ));
        assert!(matches!(
            read(&b"RIFF\0\0\0\0WAVE"[..]),
            Err(WavError::MissingData)
        ));
        assert!(matches!(
            read(&b"RIFF\0\0\0\0WAVEdata\x02\0\0\0\0\0"[..]),
            Err(WavError::MissingFormat)
        ));
        assert!(matches!(
            read(&b"RIFF\0\0\0\0WAVEfmt \x04\0\0\0"[..]),
            Err(WavError::BadFormat)
        ));
        assert!(matches!(
            read(&b"RIFF\0\0\0\0WAVEjunk\xFF\0\0\0ab"[..]),
            Err(WavError::Truncated)
        ));

        let mut stereo = Vec::new();
        write_pcm16(&mut stereo, 8000, &[0; 4]).expect("write");
        stereo[22] = 2;
        assert!(matches!(
            read(stereo.as_slice()),
            Err(WavError::Unsupported {
                format_tag: 1,
                channels: 2,
                bits: 16
            })
        ));

        let mut file = Vec::new();
        write_pcm16(&mut file, 8000, &[0; 100]).expect("write");
        assert!(matches!(
            read_with_limit(file.as_slice(), 100),
            Err(WavError::TooLarge(100))
        ));
        file.truncate(file.len() - 1);
        assert!(matches!(read(file.as_slice()), Err(WavError::Truncated)));
    }
}
