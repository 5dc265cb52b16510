//! [`DeadLetterSink`]s as JSON lines: a file synced before each acknowledgement
//! ([`FileDeadLetters`]), or stderr ([`StderrDeadLetters`]).
//!
//! One JSON object per letter, lossless for any payload (base64), readable when the payload is text:
//!
//! ```json
//! {"kind":"invalid","reason":"invalid amount -5: is out of range, ...","origin":"line 7","attempt":1,
//!  "recorded_at_unix_ms":1795770000000,"payload_len":55,"payload_truncated":false,
//!  "payload":"{\"payment_id\":\"p\",\"amount\":-5,\"currency\":\"EUR\"}","payload_base64":"eyJwYXlt..."}
//! ```
//!
//! A conflict adds `stored` and `incoming`, both in the event schema.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use payments_ports::domain::Payment;
use payments_ports::{DeadLetter, DeadLetterError, DeadLetterSink, Payload};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

#[derive(Serialize)]
struct Line<'a> {
    kind: &'static str,
    reason: &'a str,
    origin: &'a str,
    attempt: u32,
    recorded_at_unix_ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<&'a Payment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    incoming: Option<&'a Payment>,
    payload_len: u64,
    payload_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    payload_base64: String,
}

/// Encodes `letter` as one JSON line, newline included.
pub fn encode(letter: &DeadLetter) -> Vec<u8> {
    let (bytes, len, truncated) = match &letter.payload {
        Payload::Complete(body) | Payload::Unreadable { raw: body, .. } => {
            (&body[..], body.len() as u64, false)
        }
        Payload::TooLarge { len, head, .. } => (&head[..], *len, true),
    };
    let line = Line {
        kind: letter.kind.name(),
        reason: &letter.reason,
        origin: &letter.origin,
        attempt: letter.attempt,
        recorded_at_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()),
        stored: letter.conflict.as_ref().map(|c| &c.stored),
        incoming: letter.conflict.as_ref().map(|c| &c.incoming),
        payload_len: len,
        payload_truncated: truncated,
        payload: std::str::from_utf8(bytes).ok(),
        payload_base64: BASE64.encode(bytes),
    };
    let mut out = serde_json::to_vec(&line).expect("a dead letter is plain strings and integers");
    out.push(b'\n');
    out
}

/// Dead letters appended to a JSON-lines file, each synced to disk before `put` returns.
///
/// A write that fails (a full disk) is cut off again, so that the file never holds half a letter,
/// and is worth retrying. A sync that fails is not: the kernel may already have dropped the pages
/// it could not write ("fsyncgate"), so the sink refuses every later letter and the consumer stops.
#[derive(Debug)]
pub struct FileDeadLetters {
    path: PathBuf,
    file: Mutex<Appender>,
}

#[derive(Debug)]
struct Appender {
    file: tokio::fs::File,
    /// The length of what is written and synced: where a failed write is cut back to.
    len: u64,
    /// Set when a sync failed.
    poisoned: bool,
}

impl FileDeadLetters {
    /// Opens (or creates, with permissions 0600 and its directory) the dead-letter file at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened for appending.
    pub async fn open(path: &Path) -> std::io::Result<Self> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let existed = tokio::fs::try_exists(path).await?;
        tokio::fs::create_dir_all(dir).await?;
        let mut options = tokio::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        options.mode(0o600);
        let file = options.open(path).await?;
        if !existed {
            // A new file's name must be durable too, or a crash could take it, letters and all.
            tokio::fs::File::open(dir).await?.sync_all().await?;
        }
        let len = file.metadata().await?.len();
        Ok(Self { path: path.to_owned(), file: Mutex::new(Appender { file, len, poisoned: false }) })
    }

    /// Where the letters go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn target(&self) -> String {
        self.path.display().to_string()
    }
}

#[async_trait]
impl DeadLetterSink for FileDeadLetters {
    async fn put(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let line = encode(letter);
        let mut appender = self.file.lock().await;
        if appender.poisoned {
            return Err(DeadLetterError::Failed {
                target: self.target(),
                source: Some("an earlier sync failed".into()),
            });
        }
        let Appender { file, len, .. } = &mut *appender;
        let written = async {
            file.write_all(&line).await?;
            // tokio's write_all only hands the bytes to a background task; flush waits for it and
            // returns its error (a full disk), which sync_data alone would not.
            file.flush().await
        };
        if let Err(err) = written.await {
            // Whatever part of the line reached the file goes, or a retry would follow half a letter.
            if let Err(cut) = file.set_len(*len).await {
                appender.poisoned = true;
                return Err(DeadLetterError::Failed {
                    target: self.target(),
                    source: Some(format!("{err}; cutting the partial letter off failed too: {cut}").into()),
                });
            }
            return Err(DeadLetterError::from_io(self.target(), err));
        }
        if let Err(err) = file.sync_data().await {
            appender.poisoned = true;
            return Err(DeadLetterError::failed_because(self.target(), err));
        }
        *len += line.len() as u64;
        Ok(())
    }
}

/// Dead letters written to stderr, one JSON line each: for the memory store, where nothing else
/// outlives the process either.
#[derive(Debug, Default)]
pub struct StderrDeadLetters {
    lock: Mutex<()>,
}

#[async_trait]
impl DeadLetterSink for StderrDeadLetters {
    async fn put(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let line = encode(letter);
        let _one_at_a_time = self.lock.lock().await;
        let mut stderr = tokio::io::stderr();
        let written = async {
            stderr.write_all(&line).await?;
            stderr.flush().await
        };
        written.await.map_err(|err| DeadLetterError::from_io("stderr", err))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use payments_ports::DeadLetterKind;
    use payments_ports::domain::Conflict;

    use super::*;

    fn letter(payload: Payload) -> DeadLetter {
        DeadLetter {
            kind: DeadLetterKind::Invalid,
            reason: "bad".to_owned(),
            origin: "line 9".to_owned(),
            attempt: 2,
            payload,
            conflict: None,
        }
    }

    fn decode(line: &[u8]) -> serde_json::Value {
        assert_eq!(line.last(), Some(&b'\n'), "a dead letter is one line");
        serde_json::from_slice(line).expect("a dead letter is JSON")
    }

    #[test]
    fn a_binary_payload_survives_in_base64() {
        let raw = b"\xff\x00{\"payment_id\"".to_vec();
        let value = decode(&encode(&letter(Payload::Complete(Bytes::from(raw.clone())))));
        assert_eq!(value["payload"], serde_json::Value::Null, "no text form for bytes that are not UTF-8");
        let back = BASE64.decode(value["payload_base64"].as_str().expect("string")).expect("base64");
        assert_eq!(back, raw);
        assert_eq!(value["payload_len"], 15);
        assert_eq!(value["origin"], "line 9");
        assert_eq!(value["attempt"], 2);
    }

    #[test]
    fn a_too_large_payload_keeps_its_head_and_true_length() {
        let head = Bytes::from_static(b"{\"payment_id\":");
        let value = decode(&encode(&letter(Payload::TooLarge { len: 1 << 20, limit: 65536, head })));
        assert_eq!(value["payload_len"], 1 << 20);
        assert_eq!(value["payload_truncated"], true);
        assert_eq!(value["payload"], "{\"payment_id\":");
    }

    #[test]
    fn a_conflict_carries_both_versions() {
        let stored = Payment::parse("p", 1, "EUR").expect("valid");
        let incoming = Payment::parse("p", 2, "EUR").expect("valid");
        let mut letter = letter(Payload::Complete(Bytes::new()));
        letter.kind = DeadLetterKind::Conflict;
        letter.conflict = Some(Conflict { stored, incoming });
        let value = decode(&encode(&letter));
        assert_eq!(value["kind"], "conflict");
        assert_eq!(value["stored"], serde_json::json!({"payment_id": "p", "amount": 1, "currency": "EUR"}));
        assert_eq!(value["incoming"]["amount"], 2);
    }

    #[tokio::test]
    async fn the_file_sink_appends_whole_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested").join("dead.jsonl");
        let sink = FileDeadLetters::open(&path).await.expect("open");
        sink.put(&letter(Payload::Complete(Bytes::from_static(b"one")))).await.expect("put");
        sink.put(&letter(Payload::Complete(Bytes::from_static(b"two")))).await.expect("put");
        let text = std::fs::read_to_string(&path).expect("read");
        let payloads: Vec<String> =
            text.lines().map(|l| decode(format!("{l}\n").as_bytes())["payload"].to_string()).collect();
        assert_eq!(payloads, ["\"one\"", "\"two\""]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "dead letters hold payment data");
        }
    }
}
