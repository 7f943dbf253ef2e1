//! Ogg Opus streams (RFC 7845), as extension 12 carries them: one logical
//! stream per utterance, mono. Pure Rust, no libopus: the dispatcher
//! validates and measures a stream with [`inspect`] without decoding it, and
//! [`mux`] frames packets from an encoder (the `opus` module, the browser's
//! WebCodecs encoder does the same in JS).
//!
//! **Why by hand, not the `ogg` crate.** `ogg`'s reader is built for players:
//! it resynchronises past garbage and treats a stream that stops mid-page as
//! ended, which is right for playback and wrong here, where a truncated or
//! spliced stream must be refused *naming why*. The page format is small (a
//! 27-byte header, a lacing table, a CRC), so a strict reader is ~150 lines;
//! `ogg` stays a dev-dependency that cross-checks [`mux`]'s output.
//!
//! Everything is bounded: at most [`MAX_PACKETS`] audio packets,
//! [`MAX_DURATION_MS`] of audio, [`MAX_PACKET_BYTES`] per packet; the
//! reader never allocates more than the packet list of its input.

use std::borrow::Cow;

use crate::ProtocolError;

/// Most audio packets one utterance may hold (a 20 ms packet each: 10 min).
pub const MAX_PACKETS: usize = 30_000;
/// Longest utterance accepted, in milliseconds.
pub const MAX_DURATION_MS: u64 = 10 * 60 * 1000;
/// Largest packet accepted: RFC 6716 caps a frame at 1275 bytes and a
/// packet at 120 ms (six 20 ms frames) plus framing.
pub const MAX_PACKET_BYTES: usize = 8 * 1024;
/// Largest OpusTags packet accepted (it is skipped, never used).
pub const MAX_TAGS_BYTES: usize = 64 * 1024;
/// Opus timestamps (granule positions, pre-skip) count 48 kHz samples.
pub const GRANULE_RATE: u32 = 48_000;

const HEADER_LEN: usize = 27;
const FLAG_CONTINUED: u8 = 0x01;
const FLAG_BOS: u8 = 0x02;
const FLAG_EOS: u8 = 0x04;
/// Fixed serial of the streams [`mux`] writes: each utterance is a stream of
/// its own, never chained or multiplexed, so no two ever meet.
const SERIAL: u32 = 0x546f_6c6b; // "Tolk"

/// The identification header (`OpusHead`) of a mono stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusHead {
    /// 48 kHz samples the decoder discards at the start.
    pub pre_skip: u16,
    /// The rate the audio was captured at (informational; Opus decodes at
    /// 8, 12, 16, 24 or 48 kHz).
    pub input_sample_rate: u32,
    /// Q7.8 dB gain the decoder applies (0 from our encoders).
    pub output_gain: i16,
}

/// A valid stream: its header and its audio packets (borrowed from the input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OggOpus<'a> {
    pub head: OpusHead,
    /// Audio packets, borrowed from the input unless one spans pages.
    pub packets: Vec<Cow<'a, [u8]>>,
    /// Granule position of the last page: pre-skip plus the samples to play.
    pub final_granule: u64,
}

impl OggOpus<'_> {
    /// 48 kHz samples to play (after pre-skip, end trimming applied).
    pub fn samples_48k(&self) -> u64 {
        self.final_granule.saturating_sub(u64::from(self.head.pre_skip))
    }

    /// Length of the audio in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.samples_48k() * 1000 / u64::from(GRANULE_RATE)
    }
}

fn bad(why: impl Into<String>) -> ProtocolError {
    ProtocolError::invalid_field("audio", format!("invalid Ogg Opus audio: {}", why.into()))
}

/// The CRC of Ogg pages: polynomial 0x04c11db7, not reflected, initial 0.
fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 { (r << 1) ^ 0x04c1_1db7 } else { r << 1 };
            }
            *slot = r;
        }
        t
    });
    data.iter().fold(0u32, |crc, &b| (crc << 8) ^ table[((crc >> 24) as u8 ^ b) as usize])
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// 48 kHz samples in one Opus packet, from its TOC byte (RFC 6716 §3.1).
pub fn packet_samples_48k(packet: &[u8]) -> Result<u32, ProtocolError> {
    let Some(&toc) = packet.first() else { return Err(bad("an audio packet is empty")) };
    let config = toc >> 3;
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => match packet.get(1) {
            Some(&b) if b & 0x3f > 0 => u32::from(b & 0x3f),
            _ => return Err(bad("an audio packet has a bad frame count")),
        },
    };
    let samples = frame * frames;
    if samples > 5760 {
        return Err(bad("an audio packet is longer than 120 ms"));
    }
    Ok(samples)
}

struct Page<'a> {
    flags: u8,
    granule: u64,
    serial: u32,
    seq: u32,
    lacing: &'a [u8],
    body: &'a [u8],
}

/// Reads the page at the start of `b`; returns it and its length.
fn read_page(b: &[u8], index: usize) -> Result<(Page<'_>, usize), ProtocolError> {
    if b.len() < 4 || &b[..4] != b"OggS" {
        return Err(if index == 0 {
            bad("not an Ogg stream (no \"OggS\" capture pattern at its start)")
        } else {
            bad(format!("page {index} does not start with the \"OggS\" capture pattern"))
        });
    }
    if b.len() < HEADER_LEN {
        return Err(bad(format!("truncated: page {index}'s header is cut off")));
    }
    if b[4] != 0 {
        return Err(bad(format!("page {index} has Ogg version {}, not 0", b[4])));
    }
    let segments = usize::from(b[26]);
    let header_len = HEADER_LEN + segments;
    if b.len() < header_len {
        return Err(bad(format!("truncated: page {index}'s lacing table is cut off")));
    }
    let lacing = &b[HEADER_LEN..header_len];
    let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
    let page_len = header_len + body_len;
    if b.len() < page_len {
        return Err(bad(format!("truncated: page {index} needs {page_len} bytes, {} are left", b.len())));
    }
    let stored = le_u32(b, 22);
    let mut check = b[..page_len].to_vec();
    check[22..26].fill(0);
    if crc32(&check) != stored {
        return Err(bad(format!("page {index} fails its CRC check (corrupt)")));
    }
    let granule = u64::from_le_bytes([b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13]]);
    let page = Page { flags: b[5], granule, serial: le_u32(b, 14), seq: le_u32(b, 18), lacing, body: &b[header_len..page_len] };
    Ok((page, page_len))
}

/// Validates `bytes` as one complete mono Ogg Opus stream and returns its
/// header and packets; the error names what is wrong (`field` = `audio`).
///
/// Checked: every page (capture pattern, version, CRC, one serial,
/// consecutive sequence numbers, beginning and end of stream, nothing after
/// the end), the `OpusHead` (version, **one channel**, mapping family 0),
/// the `OpusTags`, each audio packet's TOC, and that the final granule
/// position lies within the audio the packets hold. Not checked: the
/// packets' inner bitstream (only a decoder can).
pub fn inspect(bytes: &[u8]) -> Result<OggOpus<'_>, ProtocolError> {
    let mut at = 0;
    let mut index = 0usize;
    let mut serial = 0;
    let mut packets: Vec<Cow<'_, [u8]>> = Vec::new();
    // The packet being assembled: where it started (contiguous so far) or,
    // once it spans pages, its bytes.
    let mut open: Option<Cow<'_, [u8]>> = None;
    let mut final_granule = None;
    let mut eos = false;
    while at < bytes.len() {
        if eos {
            return Err(bad(format!("{} bytes follow the end-of-stream page", bytes.len() - at)));
        }
        let (page, len) = read_page(&bytes[at..], index)?;
        if index == 0 {
            if page.flags & FLAG_BOS == 0 {
                return Err(bad("the first page is not marked beginning-of-stream"));
            }
            serial = page.serial;
        } else {
            if page.flags & FLAG_BOS != 0 {
                return Err(bad(format!("page {index} begins a second stream (chained or multiplexed streams are not accepted)")));
            }
            if page.serial != serial {
                return Err(bad(format!("page {index} belongs to another stream (serial {:#x})", page.serial)));
            }
        }
        if page.seq as usize != index {
            return Err(bad(format!("page {index} has sequence number {}: a page is missing", page.seq)));
        }
        if (page.flags & FLAG_CONTINUED != 0) != open.is_some() {
            return Err(bad(format!("page {index}'s continuation flag does not match the packet before it")));
        }
        let mut offset = 0;
        for &lace in page.lacing {
            let seg_end = offset + usize::from(lace);
            open = Some(match open.take() {
                None => Cow::Borrowed(&page.body[offset..seg_end]),
                // Still within this page: widen the borrowed slice.
                Some(Cow::Borrowed(p)) if p.as_ptr_range().end == page.body[offset..].as_ptr() => {
                    let start = p.as_ptr() as usize - page.body.as_ptr() as usize;
                    Cow::Borrowed(&page.body[start..seg_end])
                }
                // Continued from an earlier page: copy (bounded below).
                Some(p) => {
                    let mut owned = p.into_owned();
                    owned.extend_from_slice(&page.body[offset..seg_end]);
                    Cow::Owned(owned)
                }
            });
            offset = seg_end;
            if open.as_ref().is_some_and(|p| p.len() > MAX_TAGS_BYTES) {
                return Err(bad("a packet is too large"));
            }
            if lace < 255
                && let Some(p) = open.take()
            {
                if packets.len() >= MAX_PACKETS + 2 {
                    return Err(bad(format!("more than {MAX_PACKETS} audio packets")));
                }
                packets.push(p);
            }
        }
        if page.granule != u64::MAX {
            final_granule = Some(page.granule);
        }
        eos = page.flags & FLAG_EOS != 0;
        at += len;
        index += 1;
    }
    if index == 0 {
        return Err(bad("the stream is empty"));
    }
    if !eos {
        return Err(bad("truncated: the stream has no end-of-stream page"));
    }
    if open.is_some() {
        return Err(bad("truncated: the last packet is unfinished"));
    }
    let mut iter = packets.into_iter();
    let first = iter.next().ok_or_else(|| bad("no OpusHead packet"))?;
    if first.len() < 19 || &first[..8] != b"OpusHead" {
        return Err(bad("the first packet is not an OpusHead header (not an Opus stream)"));
    }
    if first[8] >> 4 != 0 {
        return Err(bad(format!("OpusHead version {} is not supported", first[8])));
    }
    let channels = first[9];
    if channels != 1 {
        return Err(bad(format!("wrong channel count: {channels} channels; mono (1) is required")));
    }
    if first[18] != 0 {
        return Err(bad(format!("channel mapping family {} is not accepted for mono (0 is)", first[18])));
    }
    let head = OpusHead { pre_skip: le_u16(&first, 10), input_sample_rate: le_u32(&first, 12), output_gain: le_u16(&first, 16) as i16 };
    let tags = iter.next().ok_or_else(|| bad("truncated: no OpusTags header"))?;
    if tags.len() < 8 || &tags[..8] != b"OpusTags" {
        return Err(bad("the second packet is not an OpusTags header"));
    }
    let packets: Vec<Cow<'_, [u8]>> = iter.collect();
    let mut total_48k: u64 = 0;
    for p in &packets {
        if p.len() > MAX_PACKET_BYTES {
            return Err(bad(format!("an audio packet of {} bytes exceeds {MAX_PACKET_BYTES}", p.len())));
        }
        total_48k += u64::from(packet_samples_48k(p)?);
    }
    if packets.is_empty() {
        return Err(bad("the stream holds no audio packet"));
    }
    let final_granule = final_granule.ok_or_else(|| bad("no page carries a granule position"))?;
    if final_granule < u64::from(head.pre_skip) {
        return Err(bad("the final granule position is before the pre-skip"));
    }
    if final_granule > total_48k {
        return Err(bad(format!(
            "the final granule position ({final_granule}) is past the audio the packets hold ({total_48k} samples at 48 kHz): truncated"
        )));
    }
    let out = OggOpus { head, packets, final_granule };
    if out.duration_ms() > MAX_DURATION_MS {
        return Err(bad(format!("{} ms of audio exceeds the limit of {MAX_DURATION_MS} ms", out.duration_ms())));
    }
    Ok(out)
}

/// The 19-byte `OpusHead` of a mono stream (version 1, mapping family 0).
fn head_packet(head: &OpusHead) -> Vec<u8> {
    let mut p = Vec::with_capacity(19);
    p.extend_from_slice(b"OpusHead");
    p.push(1);
    p.push(1);
    p.extend_from_slice(&head.pre_skip.to_le_bytes());
    p.extend_from_slice(&head.input_sample_rate.to_le_bytes());
    p.extend_from_slice(&head.output_gain.to_le_bytes());
    p.push(0);
    p
}

fn tags_packet() -> Vec<u8> {
    let vendor = b"tolk";
    let mut p = Vec::with_capacity(8 + 4 + vendor.len() + 4);
    p.extend_from_slice(b"OpusTags");
    p.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    p.extend_from_slice(vendor);
    p.extend_from_slice(&0u32.to_le_bytes());
    p
}

fn write_page(out: &mut Vec<u8>, flags: u8, granule: u64, seq: u32, packets: &[&[u8]]) {
    let start = out.len();
    out.extend_from_slice(b"OggS");
    out.push(0);
    out.push(flags);
    out.extend_from_slice(&granule.to_le_bytes());
    out.extend_from_slice(&SERIAL.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let lacing: Vec<u8> =
        packets.iter().flat_map(|p| std::iter::repeat_n(255u8, p.len() / 255).chain(std::iter::once((p.len() % 255) as u8))).collect();
    out.push(lacing.len() as u8);
    out.extend_from_slice(&lacing);
    for p in packets {
        out.extend_from_slice(p);
    }
    let crc = crc32(&out[start..]);
    out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
}

/// Lacing values a packet takes.
fn laces(p: &[u8]) -> usize {
    p.len() / 255 + 1
}

/// Frames Opus `packets` as one Ogg Opus stream: `OpusHead` and `OpusTags`
/// on pages of their own, then the audio, each page ending at a packet
/// boundary (at most 255 lacing values, about a second of 20 ms packets per
/// page), the last marked end-of-stream with granule `pre_skip + samples_48k`
/// so a decoder trims the encoder's padding.
///
/// Packets must each be shorter than [`MAX_PACKET_BYTES`] (an Opus encoder's are).
pub fn mux(head: &OpusHead, packets: &[Vec<u8>], samples_48k: u64) -> Vec<u8> {
    let total: usize = packets.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total + 64 + packets.len() + 32 * (packets.len() / 50 + 3));
    write_page(&mut out, FLAG_BOS, 0, 0, &[&head_packet(head)]);
    write_page(&mut out, 0, 0, 1, &[&tags_packet()]);
    let end_granule = u64::from(head.pre_skip) + samples_48k;
    let mut seq = 2;
    let mut granule = 0u64;
    let mut page: Vec<&[u8]> = Vec::new();
    let mut lacing = 0;
    for (i, p) in packets.iter().enumerate() {
        if lacing + laces(p) > 255 || page.len() == 50 {
            write_page(&mut out, 0, granule.min(end_granule), seq, &page);
            seq += 1;
            page.clear();
            lacing = 0;
        }
        granule += u64::from(packet_samples_48k(p).unwrap_or(0));
        page.push(p);
        lacing += laces(p);
        if i + 1 == packets.len() {
            write_page(&mut out, FLAG_EOS, end_granule, seq, &page);
        }
    }
    if packets.is_empty() {
        write_page(&mut out, FLAG_EOS, end_granule, seq, &[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CELT 20 ms mono packet TOC (config 31, code 0) and a few bytes.
    fn packet(n: u8) -> Vec<u8> {
        vec![31 << 3, n, n, n]
    }

    fn head() -> OpusHead {
        OpusHead { pre_skip: 312, input_sample_rate: 16_000, output_gain: 0 }
    }

    fn stream(n: usize) -> Vec<u8> {
        let packets: Vec<Vec<u8>> = (0..n).map(|i| packet(i as u8)).collect();
        mux(&head(), &packets, n as u64 * 960 - 500)
    }

    fn why(bytes: &[u8]) -> String {
        match inspect(bytes) {
            Ok(_) => "ok".into(),
            Err(e) => {
                assert_eq!(e.field.as_deref(), Some("audio"));
                e.message
            }
        }
    }

    #[test]
    fn round_trip_measures_length() {
        let bytes = stream(120);
        let s = inspect(&bytes).unwrap();
        assert_eq!(s.head, head());
        assert_eq!(s.packets.len(), 120);
        assert_eq!(&s.packets[7][..], &packet(7)[..]);
        assert_eq!(s.samples_48k(), 120 * 960 - 500);
        assert_eq!(s.duration_ms(), (120 * 960 - 500) * 1000 / 48_000);
    }

    #[test]
    fn the_ogg_crate_reads_what_we_write() {
        let bytes = stream(130);
        let mut r = ogg::PacketReader::new(std::io::Cursor::new(&bytes));
        let mut got = Vec::new();
        let mut last = None;
        while let Some(p) = r.read_packet().unwrap() {
            last = Some((p.absgp_page(), p.last_in_stream()));
            got.push(p.data);
        }
        assert_eq!(got.len(), 132);
        assert_eq!(&got[0][..8], b"OpusHead");
        assert_eq!(&got[1][..8], b"OpusTags");
        assert_eq!(got[2], packet(0));
        assert_eq!(last, Some((312 + 130 * 960 - 500, true)));
    }

    #[test]
    fn bad_streams_are_refused_naming_why() {
        let good = stream(60);
        assert_eq!(why(&good), "ok");
        assert!(why(b"RIFF....WAVEfmt ").contains("not an Ogg stream"), "{}", why(b"RIFF"));
        assert!(why(&[]).contains("empty"));
        for cut in [10, 40, good.len() / 2, good.len() - 1] {
            assert!(why(&good[..cut]).contains("truncated"), "cut at {cut}: {}", why(&good[..cut]));
        }
        // Only whole pages, but the last one is missing.
        let pages = page_offsets(&good);
        let without_last = &good[..*pages.last().unwrap()];
        assert!(why(without_last).contains("truncated"), "{}", why(without_last));
        let mut flipped = good.clone();
        let n = flipped.len();
        flipped[n - 3] ^= 0x40;
        assert!(why(&flipped).contains("CRC"));
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"junk");
        assert!(why(&trailing).contains("follow the end-of-stream"));
        let mut stereo_head = head_packet(&head());
        stereo_head[9] = 2;
        let mut stereo = Vec::new();
        write_page(&mut stereo, FLAG_BOS, 0, 0, &[&stereo_head]);
        write_page(&mut stereo, 0, 0, 1, &[&tags_packet()]);
        write_page(&mut stereo, FLAG_EOS, 960, 2, &[&packet(1)]);
        assert!(why(&stereo).contains("wrong channel count: 2"), "{}", why(&stereo));
        let mut vorbis = Vec::new();
        write_page(&mut vorbis, FLAG_BOS, 0, 0, &[b"\x01vorbis\0\0\0\0\x01"]);
        write_page(&mut vorbis, FLAG_EOS, 0, 1, &[&tags_packet()]);
        assert!(why(&vorbis).contains("not an OpusHead"));
        // A granule past the audio: the packets were cut at a page boundary
        // and the end page re-stamped, or a lying length.
        let mut long = Vec::new();
        write_page(&mut long, FLAG_BOS, 0, 0, &[&head_packet(&head())]);
        write_page(&mut long, 0, 0, 1, &[&tags_packet()]);
        write_page(&mut long, FLAG_EOS, 48_000 * 60, 2, &[&packet(1)]);
        assert!(why(&long).contains("past the audio"), "{}", why(&long));
        let mut empty_packet = Vec::new();
        write_page(&mut empty_packet, FLAG_BOS, 0, 0, &[&head_packet(&head())]);
        write_page(&mut empty_packet, 0, 0, 1, &[&tags_packet()]);
        write_page(&mut empty_packet, FLAG_EOS, 0, 2, &[&[]]);
        assert!(why(&empty_packet).contains("empty"), "{}", why(&empty_packet));
    }

    #[test]
    fn limits_hold() {
        let over: Vec<Vec<u8>> = (0..MAX_PACKETS + 1).map(|_| packet(0)).collect();
        let bytes = mux(&head(), &over, 960);
        assert!(why(&bytes).contains("more than"), "{}", why(&bytes));
    }

    #[test]
    fn toc_durations() {
        assert_eq!(packet_samples_48k(&[31 << 3]).unwrap(), 960);
        assert_eq!(packet_samples_48k(&[(1 << 3) | 1]).unwrap(), 1920);
        assert_eq!(packet_samples_48k(&[(16 << 3) | 3, 3]).unwrap(), 360);
        assert!(packet_samples_48k(&[(3 << 3) | 3, 3]).is_err(), "3 × 60 ms is over 120 ms");
        assert!(packet_samples_48k(&[(16 << 3) | 3]).is_err());
    }

    fn page_offsets(b: &[u8]) -> Vec<usize> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < b.len() {
            out.push(at);
            let segs = usize::from(b[at + 26]);
            let body: usize = b[at + 27..at + 27 + segs].iter().map(|&l| usize::from(l)).sum();
            at += 27 + segs + body;
        }
        out
    }

    proptest::proptest! {
        /// Nothing a peer sends panics the reader.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600), cut in 0usize..2000, flip in 0usize..2000) {
            let _ = inspect(&bytes);
            let mut good = stream(20);
            let _ = inspect(&good[..cut.min(good.len())]);
            let i = flip % good.len();
            good[i] ^= 0x5a;
            let _ = inspect(&good);
        }
    }
}
