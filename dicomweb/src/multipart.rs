//! `multipart/related` (RFC 2046 / RFC 2387) as DICOMweb uses it: an incremental splitter for
//! WADO-RS answers (bytes in, part events out, never more than one chunk plus a delimiter held)
//! and the encoder of STOW-RS bodies.

use memchr::memmem;

/// Longest header block of one part accepted.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest preamble (bytes before the first delimiter) accepted.
const MAX_PREAMBLE_BYTES: usize = 64 * 1024;

/// The boundary of a `multipart/related` Content-Type, or why there is none.
pub fn boundary_of(content_type: &str) -> Result<String, String> {
    let mut parts = content_type.split(';');
    let mime = parts.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/related") {
        return Err(format!(
            "Content-Type {content_type:?} is not multipart/related"
        ));
    }
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            if k.trim().eq_ignore_ascii_case("boundary") {
                let b = v.trim().trim_matches('"');
                if b.is_empty() || b.len() > 200 {
                    return Err(format!("bad boundary {b:?}"));
                }
                return Ok(b.to_string());
            }
        }
    }
    Err(format!("Content-Type {content_type:?} has no boundary"))
}

/// What the splitter found in the bytes fed so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A part begins; its `Content-Type` header (lower-cased), if any.
    Start(Option<String>),
    /// Bytes of the current part's body.
    Data(Vec<u8>),
    /// The current part ends.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preamble,
    AfterDelimiter,
    Headers,
    Body,
    Done,
}

/// Incremental `multipart/related` splitter.
#[derive(Debug)]
pub struct Splitter {
    delimiter: Vec<u8>,
    buf: Vec<u8>,
    state: State,
    seen: usize,
}

impl Splitter {
    /// A splitter for parts separated by `boundary`.
    pub fn new(boundary: &str) -> Splitter {
        Splitter {
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            // the first delimiter may open the body without a preceding CRLF
            buf: b"\r\n".to_vec(),
            state: State::Preamble,
            seen: 0,
        }
    }

    /// Whether the closing delimiter has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the next bytes of the body and returns the events they complete.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, String> {
        let mut out = Vec::new();
        if self.state == State::Done {
            return Ok(out); // epilogue
        }
        self.buf.extend_from_slice(chunk);
        loop {
            match self.state {
                State::Preamble => match memmem::find(&self.buf, &self.delimiter) {
                    Some(p) => {
                        self.buf.drain(..p + self.delimiter.len());
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        if self.buf.len() > MAX_PREAMBLE_BYTES {
                            return Err("no multipart delimiter in the first 64 KiB".into());
                        }
                        return Ok(out);
                    }
                },
                State::AfterDelimiter => {
                    if self.buf.len() < 2 {
                        return Ok(out);
                    }
                    if self.buf.starts_with(b"--") {
                        self.state = State::Done;
                        self.buf.clear();
                        return Ok(out);
                    }
                    // transport padding, then CRLF
                    let Some(eol) = memmem::find(&self.buf, b"\r\n") else {
                        if self.buf.len() > 256 {
                            return Err("garbage after a multipart delimiter".into());
                        }
                        return Ok(out);
                    };
                    if self.buf[..eol].iter().any(|b| !matches!(b, b' ' | b'\t')) {
                        return Err("garbage after a multipart delimiter".into());
                    }
                    self.buf.drain(..eol + 2);
                    self.state = State::Headers;
                }
                State::Headers => {
                    let end = if self.buf.starts_with(b"\r\n") {
                        Some((0, 2))
                    } else {
                        memmem::find(&self.buf, b"\r\n\r\n").map(|p| (p, p + 4))
                    };
                    let Some((head_end, body_start)) = end else {
                        if self.buf.len() > MAX_HEADER_BYTES {
                            return Err("a part's headers exceed 16 KiB".into());
                        }
                        return Ok(out);
                    };
                    let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
                    let content_type = head.split("\r\n").find_map(|line| {
                        let (k, v) = line.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case("content-type")
                            .then(|| v.trim().to_ascii_lowercase())
                    });
                    self.buf.drain(..body_start);
                    self.seen += 1;
                    out.push(Event::Start(content_type));
                    self.state = State::Body;
                }
                State::Body => match memmem::find(&self.buf, &self.delimiter) {
                    Some(p) => {
                        if p > 0 {
                            out.push(Event::Data(self.buf[..p].to_vec()));
                        }
                        out.push(Event::End);
                        self.buf.drain(..p + self.delimiter.len());
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        // keep what could be the start of a delimiter
                        let keep = self.delimiter.len() - 1;
                        if self.buf.len() > keep {
                            let n = self.buf.len() - keep;
                            out.push(Event::Data(self.buf[..n].to_vec()));
                            self.buf.drain(..n);
                        }
                        return Ok(out);
                    }
                },
                State::Done => return Ok(out),
            }
        }
    }

    /// Checks that the body ended with the closing delimiter.
    pub fn finish(&self) -> Result<(), String> {
        match self.state {
            State::Done => Ok(()),
            State::Preamble if self.seen == 0 => Err("no multipart delimiter in the answer".into()),
            _ => Err("the multipart answer is truncated (no closing delimiter)".into()),
        }
    }
}

/// A fresh boundary for a STOW-RS body.
pub fn new_boundary() -> String {
    format!("ferrolabel-{}", uuid::Uuid::new_v4().simple())
}

/// Encodes DICOM instances as a `multipart/related; type="application/dicom"` body.
pub fn encode_related(boundary: &str, parts: &[&[u8]]) -> Vec<u8> {
    let total: usize = parts.iter().map(|p| p.len() + 100).sum();
    let mut body = Vec::with_capacity(total + 64);
    for p in parts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(p);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part: its content type and bytes.
    type Part = (Option<String>, Vec<u8>);

    /// Splits `body` fed in chunks of `n` bytes into parts.
    fn split(body: &[u8], boundary: &str, n: usize) -> Result<Vec<Part>, String> {
        let mut s = Splitter::new(boundary);
        let mut parts = Vec::new();
        for chunk in body.chunks(n.max(1)) {
            for e in s.feed(chunk)? {
                match e {
                    Event::Start(ct) => parts.push((ct, Vec::new())),
                    Event::Data(d) => parts.last_mut().unwrap().1.extend(d),
                    Event::End => {}
                }
            }
        }
        s.finish()?;
        Ok(parts)
    }

    #[test]
    fn round_trip_in_any_chunking() {
        let a: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        // a body that contains the delimiter without its CRLF, and CRLFs
        let b = b"--xyz not a delimiter\r\n\r\n--xy".to_vec();
        let body = encode_related("xyz", &[&a, &b, b""]);
        for n in [1, 2, 3, 7, 64, 4096, body.len()] {
            let parts = split(&body, "xyz", n).unwrap();
            assert_eq!(parts.len(), 3, "chunk {n}");
            assert_eq!(parts[0].1, a);
            assert_eq!(parts[1].1, b);
            assert!(parts[2].1.is_empty());
            assert_eq!(parts[0].0.as_deref(), Some("application/dicom"));
        }
    }

    #[test]
    fn preamble_padding_and_missing_headers() {
        let body = b"preamble\r\n--b  \r\n\r\nDATA\r\n--b--\r\nepilogue";
        let parts = split(body, "b", 3).unwrap();
        assert_eq!(parts, vec![(None, b"DATA".to_vec())]);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(split(b"<html>not multipart</html>", "b", 5).is_err());
        let truncated = &encode_related("b", &[b"abcdef"])[..20];
        assert!(split(truncated, "b", 4).is_err());
        assert!(split(b"--bXX\r\n\r\nx\r\n--b--", "b", 4).is_err());
        let mut huge_head = b"--b\r\n".to_vec();
        huge_head.extend(std::iter::repeat_n(b'h', 20_000));
        assert!(split(&huge_head, "b", 1000).is_err());
    }

    #[test]
    fn boundaries() {
        assert_eq!(
            boundary_of(r#"multipart/related; type="application/dicom"; boundary="a b""#).unwrap(),
            "a b"
        );
        assert_eq!(boundary_of("Multipart/Related;boundary=x").unwrap(), "x");
        assert!(boundary_of("application/json").is_err());
        assert!(boundary_of("multipart/related; type=x").is_err());
    }
}
