//! PostgreSQL's binary `COPY` format, read as a stream of chunks cut anywhere: a header,
//! tuples of length-prefixed fields, a trailer. A split table's chunks arrive as several
//! such streams one after another, so a header may follow a trailer.

/// The signature every binary `COPY` starts with.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Why the stream cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not the binary `COPY` format.
    #[error("the COPY stream is not PostgreSQL's binary format ({0})")]
    Malformed(&'static str),
    /// A tuple with another number of fields than the table's columns.
    #[error("a COPY tuple has {got} fields where {want} columns were expected")]
    Fields {
        /// Fields in the tuple.
        got: i16,
        /// Columns expected.
        want: usize,
    },
    /// The stream ended inside a tuple or without its trailer.
    #[error("the COPY stream ended early")]
    Truncated,
}

/// Where the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Tuples,
}

/// Reads tuples out of the chunks it is given. A chunk is parsed where it lies; only the
/// piece of a tuple cut at its end is copied, to be completed by the next chunk.
pub struct Reader {
    /// The start of a tuple (or header) the last chunk ended inside.
    buffer: Vec<u8>,
    cursor: Cursor,
    spans: Vec<Span>,
}

/// Where the reader is in the stream.
struct Cursor {
    state: State,
    columns: usize,
    /// Bytes the piece being read needs at least before it is worth parsing again.
    need: usize,
    /// Set when a trailer has been read and nothing followed yet.
    ended: bool,
}

/// Where a field lies in the buffer (`None` for NULL).
type Span = Option<(usize, usize)>;

/// One tuple's fields, borrowed from the chunk or the reader's buffer.
pub struct Tuple<'a> {
    buf: &'a [u8],
    spans: &'a [Span],
}

impl<'a> Tuple<'a> {
    /// Field `i`: its bytes, or `None` for NULL.
    pub fn field(&self, i: usize) -> Option<&'a [u8]> {
        self.spans
            .get(i)
            .copied()
            .flatten()
            .map(|(start, end)| &self.buf[start..end])
    }
}

/// What is called with each tuple.
type Each<'e> = dyn FnMut(&Tuple<'_>) -> Result<(), super::EncodeError> + 'e;

impl Reader {
    /// A reader for tuples of `columns` fields.
    pub fn new(columns: usize) -> Reader {
        Reader {
            buffer: Vec::new(),
            cursor: Cursor {
                state: State::Header,
                columns,
                need: 0,
                ended: false,
            },
            spans: Vec::with_capacity(columns),
        }
    }

    /// Read the next chunk of the stream, calling `each` for every tuple it completes.
    pub fn feed(&mut self, chunk: &[u8], each: &mut Each<'_>) -> Result<(), super::EncodeError> {
        let mut rest = chunk;
        // First complete the piece the last chunk ended inside, taking only what it needs.
        while !self.buffer.is_empty() {
            let want = self.cursor.need.max(self.buffer.len() + 1) - self.buffer.len();
            let take = want.min(rest.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            let used = self.cursor.parse(&self.buffer, &mut self.spans, each)?;
            self.buffer.drain(..used);
            self.release();
            if rest.is_empty() {
                return Ok(());
            }
        }
        let used = self.cursor.parse(rest, &mut self.spans, each)?;
        self.buffer.extend_from_slice(&rest[used..]);
        Ok(())
    }

    /// Give back what a large tuple made the buffer hold, once it is read: otherwise a
    /// table's largest row stays resident until the table ends.
    fn release(&mut self) {
        const KEEP: usize = 1 << 20;
        if self.buffer.capacity() > KEEP && self.buffer.len() < KEEP {
            self.buffer.shrink_to(self.buffer.len().max(KEEP / 4));
        }
    }

    /// Check the stream ended at a trailer with nothing after it.
    pub fn finish(&self) -> Result<(), FormatError> {
        match self.cursor.ended && self.buffer.is_empty() {
            true => Ok(()),
            false => Err(FormatError::Truncated),
        }
    }
}

impl Cursor {
    /// Read every complete tuple at the start of `buf`; how many bytes they took (the rest
    /// is the start of a piece needing at least `self.need` bytes).
    fn parse(
        &mut self,
        buf: &[u8],
        spans: &mut Vec<Span>,
        each: &mut Each<'_>,
    ) -> Result<usize, super::EncodeError> {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            if rest.len() < self.need {
                return Ok(at);
            }
            if self.state == State::Header {
                match header_len(rest)? {
                    Some(len) => {
                        at += len;
                        self.state = State::Tuples;
                        self.ended = false;
                        self.need = 0;
                        continue;
                    }
                    None => {
                        self.need = rest.len() + 1;
                        return Ok(at);
                    }
                }
            }
            spans.clear();
            match tuple(rest, self.columns, spans)? {
                Scan::Tuple(len) => {
                    each(&Tuple { buf: rest, spans })?;
                    at += len;
                    self.need = 0;
                }
                Scan::Trailer => {
                    at += 2;
                    self.state = State::Header;
                    self.ended = true;
                    self.need = 0;
                }
                Scan::Need(len) => {
                    self.need = len;
                    return Ok(at);
                }
            }
        }
    }
}

/// The header's length, once it is all buffered.
fn header_len(buf: &[u8]) -> Result<Option<usize>, FormatError> {
    if buf.len() < 19 {
        return Ok(None);
    }
    if &buf[..11] != SIGNATURE {
        return Err(FormatError::Malformed("no PGCOPY signature"));
    }
    let flags = u32::from_be_bytes([buf[11], buf[12], buf[13], buf[14]]);
    // Bit 16 says OIDs follow each tuple's field count: never asked for here.
    if flags & (1 << 16) != 0 {
        return Err(FormatError::Malformed("tuples carry OIDs"));
    }
    let extension = u32::from_be_bytes([buf[15], buf[16], buf[17], buf[18]]) as usize;
    let len = 19 + extension;
    Ok((buf.len() >= len).then_some(len))
}

/// What the buffer starts with.
enum Scan {
    /// A complete tuple of this many bytes (its fields pushed).
    Tuple(usize),
    /// The trailer.
    Trailer,
    /// An incomplete tuple needing at least this many bytes.
    Need(usize),
}

fn tuple(buf: &[u8], columns: usize, spans: &mut Vec<Span>) -> Result<Scan, FormatError> {
    if buf.len() < 2 {
        return Ok(Scan::Need(2));
    }
    let count = i16::from_be_bytes([buf[0], buf[1]]);
    if count == -1 {
        return Ok(Scan::Trailer);
    }
    if count < 0 || count as usize != columns {
        return Err(FormatError::Fields {
            got: count,
            want: columns,
        });
    }
    let mut at = 2;
    for _ in 0..columns {
        if buf.len() < at + 4 {
            return Ok(Scan::Need(at + 4));
        }
        let len = i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        at += 4;
        if len < 0 {
            spans.push(None);
            continue;
        }
        let end = at + len as usize;
        if buf.len() < end {
            return Ok(Scan::Need(end));
        }
        spans.push(Some((at, end)));
        at = end;
    }
    Ok(Scan::Tuple(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of `rows`, each a list of fields.
    pub(crate) fn stream(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        out.extend_from_slice(v);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn read_all(
        bytes: &[u8],
        cut: usize,
        columns: usize,
    ) -> Result<Vec<Vec<Option<Vec<u8>>>>, String> {
        let mut reader = Reader::new(columns);
        let mut rows = Vec::new();
        for chunk in bytes.chunks(cut) {
            reader
                .feed(chunk, &mut |t| {
                    rows.push(
                        (0..columns)
                            .map(|i| t.field(i).map(<[u8]>::to_vec))
                            .collect(),
                    );
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
        }
        reader.finish().map_err(|e| e.to_string())?;
        Ok(rows)
    }

    #[test]
    fn tuples_are_read_however_the_stream_is_cut_and_streams_may_follow_each_other() {
        let big = vec![7u8; 3000];
        let rows: Vec<Vec<Option<&[u8]>>> =
            vec![vec![Some(b"a"), None], vec![Some(b""), Some(&big)]];
        let mut two = stream(&rows);
        two.extend(stream(&rows[..1]));
        for cut in [1, 2, 3, 7, 100, 5000] {
            let got = read_all(&two, cut, 2).unwrap();
            assert_eq!(got.len(), 3, "cut {cut}");
            assert_eq!(got[0], vec![Some(b"a".to_vec()), None]);
            assert_eq!(got[1][0], Some(Vec::new()), "an empty value is not NULL");
            assert_eq!(got[1][1].as_deref(), Some(&big[..]));
        }
    }

    #[test]
    fn a_wrong_stream_fails_instead_of_giving_rows() {
        let good = stream(&[vec![Some(b"x")]]);
        assert!(read_all(&good[..good.len() - 2], 5, 1)
            .unwrap_err()
            .contains("ended early"));
        assert!(read_all(&good, 5, 2)
            .unwrap_err()
            .contains("1 fields where 2"));
        assert!(read_all(b"id,name\n1,x\n..................", 4, 1)
            .unwrap_err()
            .contains("not PostgreSQL's binary format"));
    }
}
