//! Capturing an action's stdout and stderr: size caps, truncation markers and live log chunks.
//!
//! Both streams are read concurrently by one task that also numbers the live chunks, so `seq`
//! is ordered across streams. Pending output is flushed as an [`AgentEvent::Log`] every
//! [`FLUSH_INTERVAL`] or every [`CHUNK_BYTES`], whichever comes first. Output beyond the limit
//! is read and dropped, so the process never blocks on a full pipe. Chunks and reports carry the
//! bytes as output text (`attune_protocol::output`): NUL, escapes and invalid UTF-8 survive.

use crate::mask::Masker;
use crate::EventSender;
use attune_protocol::output::bytes_into_text;
use attune_protocol::{AgentEvent, ExecutionId, OutputStream};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Longest time output waits before it is sent as a live chunk.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Largest live chunk.
pub const CHUNK_BYTES: usize = 16 * 1024;
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// The marker appended to a stream that went over its limit.
pub fn truncation_marker(limit: u64) -> String {
    format!("\n[attune: output truncated after {limit} bytes]\n")
}

/// Where live chunks go and how much output to keep.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    pub agent_id: String,
    pub execution_id: ExecutionId,
    /// Cap on each stream's kept bytes.
    pub limit_bytes: u64,
    /// Send live chunks; when false, output is only kept for the report.
    pub stream_logs: bool,
    pub events: EventSender,
    /// Secret parameter values, masked in both streams before they are kept or sent.
    pub secrets: Vec<Vec<u8>>,
}

/// Everything kept from both streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Live chunks sent.
    pub chunks_sent: u64,
}

/// A running capture; [`CaptureHandle::finish`] collects it.
#[derive(Debug)]
pub struct CaptureHandle {
    task: JoinHandle<CapturedOutput>,
    stop: Option<oneshot::Sender<()>>,
}

impl CaptureHandle {
    /// Waits up to `drain` for both streams to close (a process that escaped the group may hold
    /// them open), then stops reading and returns what was captured.
    pub async fn finish(mut self, drain: Duration) -> CapturedOutput {
        match tokio::time::timeout(drain, &mut self.task).await {
            Ok(joined) => joined.unwrap_or_default(),
            Err(_) => {
                if let Some(stop) = self.stop.take() {
                    let _ = stop.send(());
                }
                (&mut self.task).await.unwrap_or_default()
            }
        }
    }
}

/// One stream's kept bytes and pending live output.
#[derive(Debug)]
struct StreamState {
    stream: OutputStream,
    kept: Vec<u8>,
    truncated: bool,
    pending: Vec<u8>,
    masker: Masker,
}

impl StreamState {
    fn new(stream: OutputStream, secrets: Vec<Vec<u8>>) -> Self {
        Self {
            stream,
            kept: Vec::new(),
            truncated: false,
            pending: Vec::new(),
            masker: Masker::new(secrets),
        }
    }

    /// Takes bytes as read (`at_end`: the stream closed), masking secrets first.
    fn read(&mut self, data: &[u8], at_end: bool, limit_bytes: u64, stream_logs: bool) {
        let mut masked = self.masker.push(data);
        if at_end {
            masked.extend(self.masker.finish());
        }
        self.accept(&masked, limit_bytes, stream_logs);
    }

    fn accept(&mut self, data: &[u8], limit_bytes: u64, stream_logs: bool) {
        if self.truncated || data.is_empty() {
            return;
        }
        let room = usize::try_from(limit_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.kept.len());
        let taken = &data[..data.len().min(room)];
        self.kept.extend_from_slice(taken);
        if stream_logs {
            self.pending.extend_from_slice(taken);
        }
        if data.len() > room {
            self.truncated = true;
            let marker = truncation_marker(limit_bytes);
            self.kept.extend_from_slice(marker.as_bytes());
            if stream_logs {
                self.pending.extend_from_slice(marker.as_bytes());
            }
        }
    }
}

/// Length of the longest prefix of `bytes` that does not end inside a UTF-8 character.
fn complete_utf8_prefix(bytes: &[u8]) -> usize {
    let tail_start = bytes.len().saturating_sub(3);
    for index in (tail_start..bytes.len()).rev() {
        let byte = bytes[index];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let width = match byte {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 1,
        };
        return if bytes.len() - index < width {
            index
        } else {
            bytes.len()
        };
    }
    bytes.len()
}

struct Collector {
    settings: CaptureSettings,
    stdout: StreamState,
    stderr: StreamState,
    next_seq: u64,
}

impl Collector {
    fn state(&mut self, stream: OutputStream) -> &mut StreamState {
        match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        }
    }

    fn accept(&mut self, stream: OutputStream, data: &[u8]) {
        let (limit_bytes, stream_logs) = (self.settings.limit_bytes, self.settings.stream_logs);
        self.state(stream)
            .read(data, false, limit_bytes, stream_logs);
    }

    /// The stream ended: what its masker held back.
    fn close(&mut self, stream: OutputStream) {
        let (limit_bytes, stream_logs) = (self.settings.limit_bytes, self.settings.stream_logs);
        self.state(stream).read(&[], true, limit_bytes, stream_logs);
    }

    fn has_pending(&self) -> bool {
        !self.stdout.pending.is_empty() || !self.stderr.pending.is_empty()
    }

    fn pending_is_large(&self) -> bool {
        self.stdout.pending.len() >= CHUNK_BYTES || self.stderr.pending.len() >= CHUNK_BYTES
    }

    /// Sends pending output of both streams as chunks of at most [`CHUNK_BYTES`]; unless
    /// `final_flush`, a character split across reads waits for its remaining bytes.
    fn flush(&mut self, final_flush: bool) {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            loop {
                let pending = &self.state(stream).pending;
                if pending.is_empty() {
                    break;
                }
                let window = &pending[..pending.len().min(CHUNK_BYTES)];
                let length = if final_flush && window.len() == pending.len() {
                    window.len()
                } else {
                    match complete_utf8_prefix(window) {
                        0 if window.len() == pending.len() => break,
                        0 => window.len(),
                        length => length,
                    }
                };
                let bytes: Vec<u8> = self.state(stream).pending.drain(..length).collect();
                let state_stream = self.state(stream).stream;
                let event = AgentEvent::Log {
                    agent_id: self.settings.agent_id.clone(),
                    execution_id: self.settings.execution_id,
                    seq: self.next_seq,
                    stream: state_stream,
                    data: bytes_into_text(bytes),
                };
                self.next_seq += 1;
                let _ = self.settings.events.send(event);
            }
        }
    }

    fn into_output(self) -> CapturedOutput {
        CapturedOutput {
            stdout: self.stdout.kept,
            stderr: self.stderr.kept,
            stdout_truncated: self.stdout.truncated,
            stderr_truncated: self.stderr.truncated,
            chunks_sent: self.next_seq,
        }
    }
}

/// Starts reading both streams in a task.
pub fn start_capture<Out, Err>(stdout: Out, stderr: Err, settings: CaptureSettings) -> CaptureHandle
where
    Out: AsyncRead + Unpin + Send + 'static,
    Err: AsyncRead + Unpin + Send + 'static,
{
    let (stop_sender, stop_receiver) = oneshot::channel();
    let task = tokio::spawn(capture(stdout, stderr, settings, stop_receiver));
    CaptureHandle {
        task,
        stop: Some(stop_sender),
    }
}

async fn capture<Out, Err>(
    mut stdout: Out,
    mut stderr: Err,
    settings: CaptureSettings,
    mut stop: oneshot::Receiver<()>,
) -> CapturedOutput
where
    Out: AsyncRead + Unpin,
    Err: AsyncRead + Unpin,
{
    let mut collector = Collector {
        stdout: StreamState::new(OutputStream::Stdout, settings.secrets.clone()),
        stderr: StreamState::new(OutputStream::Stderr, settings.secrets.clone()),
        settings,
        next_seq: 0,
    };
    let mut stdout_buffer = vec![0_u8; READ_BUFFER_BYTES];
    let mut stderr_buffer = vec![0_u8; READ_BUFFER_BYTES];
    let (mut stdout_open, mut stderr_open) = (true, true);
    let mut flush_at: Option<Instant> = None;
    while stdout_open || stderr_open {
        let flush_deadline = flush_at.unwrap_or_else(Instant::now);
        tokio::select! {
            read = stdout.read(&mut stdout_buffer), if stdout_open => match read {
                Ok(0) | Err(_) => stdout_open = false,
                Ok(length) => collector.accept(OutputStream::Stdout, &stdout_buffer[..length]),
            },
            read = stderr.read(&mut stderr_buffer), if stderr_open => match read {
                Ok(0) | Err(_) => stderr_open = false,
                Ok(length) => collector.accept(OutputStream::Stderr, &stderr_buffer[..length]),
            },
            _ = tokio::time::sleep_until(flush_deadline), if flush_at.is_some() => {
                collector.flush(false);
                flush_at = None;
            },
            _ = &mut stop => break,
        }
        if collector.pending_is_large() {
            collector.flush(false);
        }
        if collector.has_pending() && flush_at.is_none() {
            flush_at = Some(Instant::now() + FLUSH_INTERVAL);
        } else if !collector.has_pending() {
            flush_at = None;
        }
    }
    collector.close(OutputStream::Stdout);
    collector.close(OutputStream::Stderr);
    collector.flush(true);
    collector.into_output()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::sync::mpsc;

    fn settings(limit_bytes: u64) -> (CaptureSettings, mpsc::UnboundedReceiver<AgentEvent>) {
        let (events, receiver) = mpsc::unbounded_channel();
        (
            CaptureSettings {
                agent_id: "agent-test".to_string(),
                execution_id: 11,
                limit_bytes,
                stream_logs: true,
                events,
                secrets: Vec::new(),
            },
            receiver,
        )
    }

    #[tokio::test]
    async fn a_secret_split_across_writes_is_masked_in_chunks_and_kept_output() {
        let (mut settings, mut receiver) = settings(1024);
        settings.secrets = vec![b"hunter2-secret".to_vec()];
        let (mut out_writer, out_reader) = tokio::io::duplex(64);
        let (err_writer, err_reader) = tokio::io::duplex(64);
        drop(err_writer);
        let capture = start_capture(out_reader, err_reader, settings);
        out_writer.write_all(b"password: hunter2").await.unwrap();
        out_writer.flush().await.unwrap();
        tokio::task::yield_now().await;
        out_writer
            .write_all(b"-secret and hunter2\n")
            .await
            .unwrap();
        drop(out_writer);
        let output = capture.finish(Duration::from_secs(5)).await;
        assert_eq!(output.stdout, b"password: ******** and hunter2\n");
        let mut sent = String::new();
        while let Ok(event) = receiver.try_recv() {
            if let AgentEvent::Log { data, .. } = event {
                sent.push_str(&data);
            }
        }
        assert_eq!(sent, "password: ******** and hunter2\n");
    }

    fn chunks(
        receiver: &mut mpsc::UnboundedReceiver<AgentEvent>,
    ) -> Vec<(u64, OutputStream, String)> {
        let mut chunks = Vec::new();
        while let Ok(event) = receiver.try_recv() {
            match event {
                AgentEvent::Log {
                    seq, stream, data, ..
                } => chunks.push((seq, stream, data)),
                other => panic!("unexpected event {other:?}"),
            }
        }
        chunks
    }

    #[test]
    fn utf8_prefix_never_splits_a_character() {
        let text = "aé€😀".as_bytes();
        assert_eq!(complete_utf8_prefix(text), text.len());
        assert_eq!(
            complete_utf8_prefix(&text[..text.len() - 1]),
            text.len() - 4
        );
        assert_eq!(complete_utf8_prefix(&text[..2]), 1);
        assert_eq!(complete_utf8_prefix(b""), 0);
        assert_eq!(complete_utf8_prefix(b"abc"), 3);
    }

    #[tokio::test]
    async fn both_streams_are_kept_and_chunks_are_numbered_in_order() {
        let (mut stdout_writer, stdout_reader) = tokio::io::duplex(64);
        let (mut stderr_writer, stderr_reader) = tokio::io::duplex(64);
        let (settings, mut receiver) = settings(1024);
        let handle = start_capture(stdout_reader, stderr_reader, settings);
        stdout_writer.write_all(b"out one\n").await.unwrap();
        stderr_writer.write_all("err é\n".as_bytes()).await.unwrap();
        stdout_writer.write_all(b"out two\n").await.unwrap();
        drop(stdout_writer);
        drop(stderr_writer);
        let output = handle.finish(Duration::from_secs(5)).await;
        assert_eq!(output.stdout, b"out one\nout two\n");
        assert_eq!(output.stderr, "err é\n".as_bytes());
        assert!(!output.stdout_truncated && !output.stderr_truncated);
        let chunks = chunks(&mut receiver);
        let seqs: Vec<u64> = chunks.iter().map(|(seq, _, _)| *seq).collect();
        assert_eq!(seqs, (0..chunks.len() as u64).collect::<Vec<_>>());
        assert_eq!(output.chunks_sent, chunks.len() as u64);
        let stdout_text: String = chunks
            .iter()
            .filter(|(_, stream, _)| *stream == OutputStream::Stdout)
            .map(|(_, _, data)| data.as_str())
            .collect();
        assert_eq!(stdout_text, "out one\nout two\n");
    }

    #[tokio::test]
    async fn output_over_the_limit_is_dropped_with_one_marker() {
        let (mut stdout_writer, stdout_reader) = tokio::io::duplex(1024);
        let (stderr_writer, stderr_reader) = tokio::io::duplex(64);
        let (settings, mut receiver) = settings(10);
        let handle = start_capture(stdout_reader, stderr_reader, settings);
        for _ in 0..100 {
            stdout_writer.write_all(b"0123456789abcdef").await.unwrap();
        }
        drop(stdout_writer);
        drop(stderr_writer);
        let output = handle.finish(Duration::from_secs(5)).await;
        let expected = format!("0123456789{}", truncation_marker(10));
        assert_eq!(String::from_utf8(output.stdout).unwrap(), expected);
        assert!(output.stdout_truncated);
        assert!(!output.stderr_truncated);
        let streamed: String = chunks(&mut receiver)
            .into_iter()
            .map(|(_, _, data)| data)
            .collect();
        assert_eq!(streamed, expected);
    }

    #[tokio::test]
    async fn large_output_is_sent_in_bounded_chunks() {
        let (mut stdout_writer, stdout_reader) = tokio::io::duplex(64 * 1024);
        let (stderr_writer, stderr_reader) = tokio::io::duplex(64);
        let (settings, mut receiver) = settings(1024 * 1024);
        let handle = start_capture(stdout_reader, stderr_reader, settings);
        let line = "é".repeat(1000) + "\n";
        for _ in 0..50 {
            stdout_writer.write_all(line.as_bytes()).await.unwrap();
        }
        drop(stdout_writer);
        drop(stderr_writer);
        let output = handle.finish(Duration::from_secs(5)).await;
        assert_eq!(output.stdout.len(), line.len() * 50);
        let chunks = chunks(&mut receiver);
        assert!(
            chunks.len() >= 2,
            "expected several chunks, got {}",
            chunks.len()
        );
        for (_, _, data) in &chunks {
            assert!(data.len() <= CHUNK_BYTES, "chunk of {} bytes", data.len());
            assert!(!data.contains('\u{fffd}'), "a character was split");
        }
        let streamed: String = chunks.into_iter().map(|(_, _, data)| data).collect();
        assert_eq!(streamed, line.repeat(50));
    }

    #[tokio::test]
    async fn any_bytes_survive_in_chunks_and_kept_output() {
        let (mut stdout_writer, stdout_reader) = tokio::io::duplex(64);
        let (stderr_writer, stderr_reader) = tokio::io::duplex(64);
        let (settings, mut receiver) = settings(1024 * 1024);
        let handle = start_capture(stdout_reader, stderr_reader, settings);
        let mut written = Vec::new();
        for round in 0..300_u32 {
            // NUL, an escape, invalid bytes and a character split across writes.
            let piece: &[u8] = match round % 4 {
                0 => b"a\x00b\x1b[31m",
                1 => b"\xff\xfe\xe2\x82",
                2 => b"\xac\xf4\x8f\xbf\xbf",
                _ => "é\u{10ff80}".as_bytes(),
            };
            stdout_writer.write_all(piece).await.unwrap();
            written.extend_from_slice(piece);
        }
        drop(stdout_writer);
        drop(stderr_writer);
        let output = handle.finish(Duration::from_secs(5)).await;
        assert_eq!(output.stdout, written);
        let streamed: Vec<u8> = chunks(&mut receiver)
            .into_iter()
            .flat_map(|(_, _, data)| attune_protocol::output::text_to_bytes(&data))
            .collect();
        assert_eq!(streamed, written, "chunks carry the exact bytes");
    }

    #[tokio::test]
    async fn finish_stops_reading_a_stream_that_stays_open() {
        let (mut stdout_writer, stdout_reader) = tokio::io::duplex(64);
        let (_stderr_writer, stderr_reader) = tokio::io::duplex(64);
        let (settings, _receiver) = settings(1024);
        let handle = start_capture(stdout_reader, stderr_reader, settings);
        stdout_writer.write_all(b"partial").await.unwrap();
        let output = handle.finish(Duration::from_millis(300)).await;
        assert_eq!(output.stdout, b"partial");
    }
}
