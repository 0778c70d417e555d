//! gRPC framing over one h2 stream, shared by the server and the client.
//!
//! Each message on the wire (gRPC over HTTP/2 spec, "Length-Prefixed-Message"):
//! ```text
//!   byte 0      compressed flag (0 = plain; Basalt supports no compression)
//!   bytes 1..5  message length, u32 big-endian
//!   bytes 5..   the protobuf message, `length` bytes
//! ```
//! A message may span many DATA frames and a DATA frame may hold many messages.
//! A call ends with trailers `grpc-status` (decimal code) and `grpc-message` (percent-encoded),
//! or, when nothing was sent yet, with a single HEADERS frame that carries them
//! ("trailers-only").

use crate::status::{percent_decode, percent_encode, Code, Status};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue};
use std::collections::VecDeque;
use std::future::poll_fn;

pub(crate) const PREFIX_BYTES: usize = 5;
pub(crate) const CONTENT_TYPE: &str = "application/grpc";

/// The largest message sent, as etcd configures grpc-go (`MaxSendMsgSize(math.MaxInt32)`).
pub(crate) const SEND_MESSAGE_BYTES_MAX: usize = i32::MAX as usize;

/// Frames one protobuf message: the prefix and the body in one contiguous buffer, so it goes
/// out as one DATA frame when the window allows.
pub(crate) fn encode<M: prost::Message>(message: &M) -> Result<Bytes, Status> {
    let body_bytes = message.encoded_len();
    if body_bytes > SEND_MESSAGE_BYTES_MAX {
        return Err(Status::new(
            Code::ResourceExhausted,
            format!(
                "grpc: trying to send message larger than max ({body_bytes} vs. {SEND_MESSAGE_BYTES_MAX})"
            ),
        ));
    }
    let mut out = BytesMut::with_capacity(PREFIX_BYTES + body_bytes);
    out.put_u8(0);
    out.put_u32(body_bytes as u32);
    message
        .encode(&mut out)
        .expect("the buffer was sized by encoded_len");
    debug_assert_eq!(out.len(), PREFIX_BYTES + body_bytes);
    Ok(out.freeze())
}

/// Decodes one message body into `M`, with grpc-go's status for a body that does not parse.
pub(crate) fn decode<M: prost::Message + Default>(body: Bytes, what: &str) -> Result<M, Status> {
    M::decode(body).map_err(|e| Status::internal(format!("grpc: error unmarshalling {what}: {e}")))
}

/// grpc-go's refusal of a received message over the limit.
pub(crate) fn too_large(body_bytes: usize, message_bytes_max: usize) -> Status {
    Status::new(
        Code::ResourceExhausted,
        format!("grpc: received message larger than max ({body_bytes} vs. {message_bytes_max})"),
    )
}

/// Reassembles length-prefixed messages from DATA chunks of any size: the framing logic of
/// [`MessageReader`], apart from I/O so it can be tested byte by byte.
pub(crate) struct FrameBuffer {
    chunks: VecDeque<Bytes>,
    buffered_bytes: usize,
    pub(crate) message_bytes_max: usize,
}

impl FrameBuffer {
    pub(crate) fn new(message_bytes_max: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            buffered_bytes: 0,
            message_bytes_max,
        }
    }

    pub(crate) fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.buffered_bytes += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    pub(crate) fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// The next whole message body if it has arrived. Rejects a message as soon as its prefix
    /// shows it can never be accepted, before its body is buffered.
    pub(crate) fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        let mut prefix = [0u8; PREFIX_BYTES];
        if !self.peek(&mut prefix) {
            return Ok(None);
        }
        if prefix[0] != 0 {
            // Callers refuse any grpc-encoding but identity up front, so a compressed
            // message can only be a peer error.
            return Err(Status::internal(
                "grpc: compressed flag set with identity or empty encoding",
            ));
        }
        let body_bytes = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if body_bytes > self.message_bytes_max {
            return Err(too_large(body_bytes, self.message_bytes_max));
        }
        if self.buffered_bytes < PREFIX_BYTES + body_bytes {
            return Ok(None);
        }
        self.skip(PREFIX_BYTES);
        Ok(Some(self.take(body_bytes)))
    }

    fn peek(&self, out: &mut [u8]) -> bool {
        if self.buffered_bytes < out.len() {
            return false;
        }
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = chunk.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == out.len() {
                break;
            }
        }
        true
    }

    /// Removes `body_bytes` from the front. A body that sits in one DATA frame (the usual
    /// case) is returned without copying.
    fn take(&mut self, body_bytes: usize) -> Bytes {
        assert!(self.buffered_bytes >= body_bytes);
        if body_bytes == 0 {
            return Bytes::new();
        }
        self.buffered_bytes -= body_bytes;
        let chunk = self.chunks.front_mut().expect("buffered_bytes counted it");
        if chunk.len() >= body_bytes {
            let body = chunk.split_to(body_bytes);
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
            return body;
        }
        let mut body = BytesMut::with_capacity(body_bytes);
        while body.len() < body_bytes {
            let chunk = self.chunks.front_mut().expect("buffered_bytes counted it");
            let n = chunk.len().min(body_bytes - body.len());
            body.put_slice(&chunk[..n]);
            chunk.advance(n);
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
        }
        body.freeze()
    }

    fn skip(&mut self, mut n: usize) {
        assert!(self.buffered_bytes >= n);
        self.buffered_bytes -= n;
        while n > 0 {
            let chunk = self.chunks.front_mut().expect("buffered_bytes counted it");
            let k = chunk.len().min(n);
            chunk.advance(k);
            n -= k;
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
        }
    }
}

/// Reads length-prefixed messages from one h2 stream.
///
/// Flow-control capacity is released as soon as a DATA frame is taken off the stream: the
/// bytes then count against `message_bytes_max`, which bounds what one stream can buffer.
pub(crate) struct MessageReader {
    body: RequestBody,
    frames: FrameBuffer,
}

enum RequestBody {
    H2(RecvStream),
    /// A call made in-process by the JSON gateway: messages arrive whole, unframed.
    Local(crate::gateway::LocalRequests),
}

impl MessageReader {
    pub(crate) fn new(body: RecvStream, message_bytes_max: usize) -> Self {
        Self {
            body: RequestBody::H2(body),
            frames: FrameBuffer::new(message_bytes_max),
        }
    }

    pub(crate) fn local(requests: crate::gateway::LocalRequests, message_bytes_max: usize) -> Self {
        Self {
            body: RequestBody::Local(requests),
            frames: FrameBuffer::new(message_bytes_max),
        }
    }

    /// The next whole message body, `None` once the peer ended the stream cleanly between
    /// messages.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        let body = match &mut self.body {
            RequestBody::H2(body) => body,
            RequestBody::Local(requests) => {
                return requests.next(self.frames.message_bytes_max).await;
            }
        };
        loop {
            if let Some(body) = self.frames.next_message()? {
                return Ok(Some(body));
            }
            match body.data().await {
                Some(Ok(chunk)) => {
                    // Releasing at once is safe because buffering is capped per message by
                    // `next_message`; holding capacity back would only stall the peer.
                    body.flow_control()
                        .release_capacity(chunk.len())
                        .map_err(stream_error)?;
                    self.frames.push(chunk);
                }
                Some(Err(e)) => return Err(stream_error(e)),
                None if self.frames.buffered_bytes() == 0 => return Ok(None),
                None => {
                    return Err(Status::internal(format!(
                        "grpc: stream ended inside a message ({} bytes of a frame received)",
                        self.frames.buffered_bytes()
                    )))
                }
            }
        }
    }

    /// The trailers that ended the stream (client side).
    pub(crate) async fn trailers(&mut self) -> Result<Option<HeaderMap>, Status> {
        match &mut self.body {
            RequestBody::H2(body) => body.trailers().await.map_err(stream_error),
            RequestBody::Local(_) => Ok(None),
        }
    }
}

/// Sends messages on one h2 stream, waiting for flow-control capacity so a slow reader
/// holds back its sender instead of growing our buffers.
pub(crate) struct MessageWriter {
    body: SendStream<Bytes>,
}

impl MessageWriter {
    pub(crate) fn new(body: SendStream<Bytes>) -> Self {
        Self { body }
    }

    /// Queues one framed message after the peer's window has room for it.
    pub(crate) async fn send(&mut self, mut framed: Bytes) -> Result<(), Status> {
        while !framed.is_empty() {
            self.body.reserve_capacity(framed.len());
            // h2 assigns window synchronously when the connection has some, so the common
            // case sends without a trip through the scheduler.
            let mut granted = self.body.capacity();
            if granted == 0 {
                granted = poll_fn(|cx| self.body.poll_capacity(cx))
                    .await
                    .ok_or_else(|| Status::new(Code::Unavailable, "stream closed by peer"))?
                    .map_err(stream_error)?;
            }
            if granted > 0 {
                let chunk = framed.split_to(granted.min(framed.len()));
                self.body.send_data(chunk, false).map_err(stream_error)?;
            }
        }
        Ok(())
    }

    /// Ends the stream with `status` as trailers (server side).
    fn finish(mut self, status: &Status) -> Result<(), Status> {
        self.body
            .send_trailers(status_headers(status))
            .map_err(stream_error)
    }

    /// Queues the stream's last message and its end without waiting for window; h2 holds the
    /// bytes until the peer's window lets them out. For a request already whole in memory.
    pub(crate) fn send_last(&mut self, framed: Bytes) -> Result<(), Status> {
        self.body.send_data(framed, true).map_err(stream_error)
    }

    /// Ends the request stream (client side).
    pub(crate) fn close(&mut self) -> Result<(), Status> {
        self.body
            .send_data(Bytes::new(), true)
            .map_err(stream_error)
    }

    pub(crate) fn reset(&mut self) {
        self.body.send_reset(h2::Reason::CANCEL);
    }
}

/// The server's side of a call's responses, for every shape: no message or one (unary), or
/// any number sent as they come (Watch, LeaseKeepAlive). Response headers go out with the first
/// message; a call that ends before any is answered trailers-only.
pub(crate) struct ResponseSink {
    state: SinkState,
}

enum SinkState {
    Idle(SendResponse<Bytes>),
    Streaming(MessageWriter),
    /// The JSON gateway's end of an in-process call.
    Local(crate::gateway::LocalResponses),
}

impl ResponseSink {
    pub(crate) fn new(respond: SendResponse<Bytes>) -> Self {
        Self {
            state: SinkState::Idle(respond),
        }
    }

    pub(crate) fn local(responses: crate::gateway::LocalResponses) -> Self {
        Self {
            state: SinkState::Local(responses),
        }
    }

    /// Sends framed response messages (one, or several back to back, each framed by
    /// [`encode`]), waiting for the client's window. An error means the client is gone.
    pub(crate) async fn send(&mut self, framed: Bytes) -> Result<(), Status> {
        if let SinkState::Local(responses) = &mut self.state {
            // The gateway takes messages one by one; `framed` may hold several.
            let mut framed = framed;
            while framed.len() >= PREFIX_BYTES {
                let len = u32::from_be_bytes(framed[1..PREFIX_BYTES].try_into().expect("4 bytes"));
                let mut message = framed.split_to((PREFIX_BYTES + len as usize).min(framed.len()));
                responses.send(message.split_off(PREFIX_BYTES)).await?;
            }
            return Ok(());
        }
        if let SinkState::Idle(respond) = &mut self.state {
            let body = respond
                .send_response(grpc_response_head(), false)
                .map_err(stream_error)?;
            self.state = SinkState::Streaming(MessageWriter::new(body));
        }
        let SinkState::Streaming(writer) = &mut self.state else {
            unreachable!("the head was sent just above");
        };
        writer.send(framed).await
    }

    /// Ends the call with `status`. A failure means the client is gone and no one is left to
    /// tell, so there is nothing to return.
    pub(crate) fn finish(self, status: &Status) {
        match self.state {
            SinkState::Idle(mut respond) => {
                let mut head = grpc_response_head();
                head.headers_mut().extend(status_headers(status));
                let _ = respond.send_response(head, true);
            }
            SinkState::Streaming(writer) => {
                let _ = writer.finish(status);
            }
            SinkState::Local(responses) => responses.finish(status),
        }
    }

    /// Resolves once the client is gone (it reset the stream or closed the connection), for
    /// a stream that has nothing to read and may have nothing to send for a long time.
    pub(crate) async fn closed(&mut self) {
        match &mut self.state {
            SinkState::Idle(respond) => {
                let _ = poll_fn(|cx| respond.poll_reset(cx)).await;
            }
            SinkState::Streaming(writer) => {
                let _ = poll_fn(|cx| writer.body.poll_reset(cx)).await;
            }
            SinkState::Local(responses) => responses.closed().await,
        }
    }
}

fn grpc_response_head() -> http::Response<()> {
    let mut head = http::Response::new(());
    head.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    head
}

/// The headers that carry a status, as trailers or in a trailers-only response.
pub(crate) fn status_headers(status: &Status) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(status.code.as_wire())),
    );
    if !status.message.is_empty() {
        let encoded = percent_encode(&status.message);
        let value =
            HeaderValue::from_str(&encoded).expect("percent-encoding leaves only visible ASCII");
        headers.insert("grpc-message", value);
    }
    headers
}

/// The status carried by `headers`, if they carry one.
pub(crate) fn status_from_headers(headers: &HeaderMap) -> Option<Status> {
    let code = headers.get("grpc-status")?;
    let code = std::str::from_utf8(code.as_bytes())
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .map(Code::from_wire)
        .unwrap_or(Code::Unknown);
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some(Status::new(code, message))
}

/// The status for an h2 failure on one stream: the peer reset it or the connection broke.
pub(crate) fn stream_error(err: h2::Error) -> Status {
    if err.reason() == Some(h2::Reason::CANCEL) {
        Status::new(Code::Cancelled, "stream cancelled by peer")
    } else {
        Status::new(Code::Unavailable, format!("transport: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_headers_round_trip() {
        for status in [
            Status::ok(),
            Status::new(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            Status::new(Code::Internal, "bad: 100% ✗"),
        ] {
            assert_eq!(status_from_headers(&status_headers(&status)), Some(status));
        }
    }

    /// Feeds `wire` in chunks of `chunk_bytes` and collects every message that completes.
    fn reassemble(wire: &[u8], chunk_bytes: usize, max: usize) -> Result<Vec<Bytes>, Status> {
        let mut frames = FrameBuffer::new(max);
        let mut messages = Vec::new();
        for chunk in wire.chunks(chunk_bytes) {
            frames.push(Bytes::copy_from_slice(chunk));
            while let Some(body) = frames.next_message()? {
                messages.push(body);
            }
        }
        assert_eq!(frames.buffered_bytes(), 0, "nothing left over");
        Ok(messages)
    }

    #[test]
    fn messages_reassemble_from_chunks_split_at_every_boundary() {
        let bodies: [&[u8]; 4] = [b"", b"a", b"hello, world", &[7u8; 300]];
        let mut wire = Vec::new();
        for body in bodies {
            wire.push(0);
            wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
            wire.extend_from_slice(body);
        }
        for chunk_bytes in 1..=wire.len() {
            let got = reassemble(&wire, chunk_bytes, 1024).unwrap();
            assert_eq!(got, bodies.to_vec(), "chunks of {chunk_bytes} bytes");
        }
    }

    #[test]
    fn unacceptable_prefixes_are_refused_before_the_body_arrives() {
        let cases: [(&[u8], Code, &str); 2] = [
            (
                &[1, 0, 0, 0, 1],
                Code::Internal,
                "grpc: compressed flag set with identity or empty encoding",
            ),
            (
                &[0, 0, 0, 0, 11],
                Code::ResourceExhausted,
                "grpc: received message larger than max (11 vs. 10)",
            ),
        ];
        for (prefix, code, message) in cases {
            let mut frames = FrameBuffer::new(10);
            frames.push(Bytes::copy_from_slice(prefix));
            assert_eq!(frames.next_message(), Err(Status::new(code, message)));
        }
    }

    #[test]
    fn framing_prefix_is_flag_then_big_endian_length() {
        let framed = encode(&Bytes::from_static(b"abc").to_vec()).unwrap();
        // A Vec<u8> encodes as a bytes field 1: tag 0x0a, length 3, then the bytes.
        assert_eq!(&framed[..], &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'b', b'c']);
    }
}
