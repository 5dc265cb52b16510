//! A [`DeliverySource`] over newline-delimited messages (JSON lines) from a file or stdin.
//!
//! Each line is one delivery. Reading is bounded: a line longer than the limit is never held whole
//! in memory; it is delivered as [`Payload::TooLarge`] with its first bytes, and the rest of it is
//! skipped. A file has no broker behind it, so acknowledging a line only counts it: running the same
//! input again redelivers every line, and the handler answers with duplicates.
//!
//! A `next` dropped half-way (the consumer stopping) may leave the reader in the middle of a line;
//! the consumer never reads on after that, and a file is read again from its start next time.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use payments_ports::{Delivery, DeliverySource, Payload, Receipt, SourceError};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The default longest line, in bytes (without its newline).
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// How many bytes of an oversized line are kept for its dead letter.
const HEAD_BYTES: usize = 1024;

/// How much is read from the input at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Opens the input the command line names: the file at `input`, or stdin for `-`, read in lines of
/// at most `max_line` bytes.
///
/// # Errors
///
/// When the file cannot be opened.
pub async fn open(input: &str, max_line: usize) -> std::io::Result<Box<dyn DeliverySource>> {
    Ok(if input == "-" {
        Box::new(LinesSource::new(tokio::io::stdin(), "stdin", max_line))
    } else {
        Box::new(LinesSource::new(tokio::fs::File::open(input).await?, input, max_line))
    })
}

/// Deliveries from newline-delimited input.
#[derive(Debug)]
pub struct LinesSource<R> {
    reader: R,
    name: String,
    buffer: BytesMut,
    max_line: usize,
    line: u64,
    eof: bool,
}

impl<R: AsyncRead + Unpin + Send> LinesSource<R> {
    /// Reads lines from `reader`, called `name` in origins (a path, or `stdin`), with lines of at
    /// most `max_line` bytes.
    pub fn new(reader: R, name: impl Into<String>, max_line: usize) -> Self {
        Self { reader, name: name.into(), buffer: BytesMut::new(), max_line, line: 0, eof: false }
    }

    /// Reads more input into the buffer; false at the end of the input.
    async fn fill(&mut self) -> Result<bool, SourceError> {
        if self.eof {
            return Ok(false);
        }
        self.buffer.reserve(READ_CHUNK);
        let read = self
            .reader
            .read_buf(&mut self.buffer)
            .await
            .map_err(|err| SourceError::failed_because(format!("cannot read {}", self.name), err))?;
        self.eof = read == 0;
        Ok(!self.eof)
    }

    fn delivery(&mut self, payload: Payload) -> Delivery {
        self.line += 1;
        Delivery { payload, attempt: 1, receipt: Box::new(LineReceipt { line: self.line }) }
    }

    /// Skips the rest of an oversized line whose first `seen` bytes were already dropped from the
    /// buffer; returns its whole length.
    async fn skip_rest_of_line(&mut self, mut seen: u64) -> Result<u64, SourceError> {
        loop {
            if let Some(end) = memchr::memchr(b'\n', &self.buffer) {
                let _ = self.buffer.split_to(end + 1);
                return Ok(seen + end as u64);
            }
            seen += self.buffer.len() as u64;
            self.buffer.clear();
            if !self.fill().await? {
                return Ok(seen);
            }
        }
    }
}

#[async_trait]
impl<R: AsyncRead + Unpin + Send> DeliverySource for LinesSource<R> {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        // Where the search for a newline resumes, so that a long line is scanned once.
        let mut scanned = 0;
        loop {
            if let Some(offset) = memchr::memchr(b'\n', &self.buffer[scanned..]) {
                let end = scanned + offset;
                if end <= self.max_line {
                    let line = self.buffer.split_to(end + 1).freeze();
                    return Ok(Some(self.delivery(Payload::Complete(line.slice(..end)))));
                }
            }
            scanned = self.buffer.len();
            if self.buffer.len() > self.max_line {
                // Over the limit with no newline in sight: keep the head, skip the rest unread.
                let head = Bytes::copy_from_slice(&self.buffer[..HEAD_BYTES.min(self.max_line)]);
                let len = self.skip_rest_of_line(0).await?;
                let limit = self.max_line;
                return Ok(Some(self.delivery(Payload::TooLarge { len, limit, head })));
            }
            if !self.fill().await? {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                // The last line has no newline.
                let line = self.buffer.split().freeze();
                return Ok(Some(self.delivery(Payload::Complete(line))));
            }
        }
    }
}

/// A line's receipt: a file has no broker to tell, so acknowledging only settles the line.
#[derive(Debug)]
struct LineReceipt {
    line: u64,
}

impl Receipt for LineReceipt {
    fn origin(&self) -> String {
        format!("line {}", self.line)
    }

    fn ack(self: Box<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads every delivery of `input` with lines of at most `max_line` bytes, as
    /// `(origin, payload)`, feeding the input in pieces of `chunk` bytes.
    async fn read_all(input: &[u8], max_line: usize, chunk: usize) -> Vec<(String, Payload)> {
        let mut source = LinesSource::new(ChunkedReader::new(input, chunk), "test", max_line);
        let mut out = Vec::new();
        while let Some(delivery) = source.next().await.expect("reading from memory cannot fail") {
            assert_eq!(delivery.attempt, 1);
            out.push((delivery.receipt.origin(), delivery.payload));
        }
        out
    }

    /// A reader that hands out at most `chunk` bytes per read, to cross every buffer boundary.
    struct ChunkedReader {
        pieces: std::collections::VecDeque<std::io::Result<Bytes>>,
    }

    impl ChunkedReader {
        fn new(input: &[u8], chunk: usize) -> Self {
            Self { pieces: input.chunks(chunk.max(1)).map(|c| Ok(Bytes::copy_from_slice(c))).collect() }
        }
    }

    impl AsyncRead for ChunkedReader {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(piece) = self.pieces.pop_front() {
                let piece = piece?;
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.pieces.push_front(Ok(piece.slice(n..)));
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn complete(text: &str) -> Payload {
        Payload::Complete(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[tokio::test]
    async fn splits_lines_and_numbers_them_whatever_the_read_sizes() {
        let input = b"{\"a\":1}\n\n{\"b\":2}\r\nlast";
        for chunk in [1, 2, 3, 7, 1000] {
            let got = read_all(input, 100, chunk).await;
            let expected = vec![
                ("line 1".to_owned(), complete("{\"a\":1}")),
                ("line 2".to_owned(), complete("")),
                ("line 3".to_owned(), complete("{\"b\":2}\r")),
                ("line 4".to_owned(), complete("last")),
            ];
            assert_eq!(got, expected, "chunk size {chunk}");
        }
    }

    #[tokio::test]
    async fn a_line_at_the_limit_is_complete_and_one_over_is_too_large() {
        let at_limit = "x".repeat(10);
        let over = "y".repeat(11);
        let input = format!("{at_limit}\n{over}\nok\n");
        for chunk in [1, 4, 64] {
            let got = read_all(input.as_bytes(), 10, chunk).await;
            assert_eq!(got[0].1, complete(&at_limit), "chunk {chunk}");
            assert_eq!(
                got[1].1,
                Payload::TooLarge { len: 11, limit: 10, head: Bytes::from(over[..10].to_owned()) }
            );
            assert_eq!(got[2], ("line 3".to_owned(), complete("ok")), "chunk {chunk}");
            assert_eq!(got.len(), 3);
        }
    }

    #[tokio::test]
    async fn a_huge_line_is_skipped_without_being_held_and_the_next_line_survives() {
        let huge = vec![b'z'; 3 * 1024 * 1024 + 5];
        let mut input = huge.clone();
        input.extend_from_slice(b"\nafter\n");
        let got = read_all(&input, DEFAULT_MAX_LINE, READ_CHUNK).await;
        let Payload::TooLarge { len, limit, head } = &got[0].1 else {
            panic!("expected too large: {:?}", got[0].0)
        };
        assert_eq!(*len, huge.len() as u64);
        assert_eq!(*limit, DEFAULT_MAX_LINE);
        assert_eq!(head.len(), HEAD_BYTES);
        assert_eq!(got[1], ("line 2".to_owned(), complete("after")));
    }

    #[tokio::test]
    async fn an_oversized_last_line_without_newline_is_too_large() {
        let got = read_all(b"ok\n0123456789abc", 10, 3).await;
        assert_eq!(got.len(), 2);
        assert!(matches!(got[1].1, Payload::TooLarge { len: 13, .. }), "{:?}", got[1]);
    }
}
