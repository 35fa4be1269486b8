//! Server-to-client WebSocket frames, encoded once. A server does not mask its frames
//! (RFC 6455 §5.1), so a frame's bytes are the same for every member of a room: the
//! dispatcher builds one [`OutFrame`] per event and every member's writer sends those same
//! bytes, without copying the payload per delivery.

use bytes::{BufMut, Bytes, BytesMut};

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A complete, encoded frame (header and payload) and where its payload starts.
#[derive(Clone, Debug)]
pub struct OutFrame {
    bytes: Bytes,
    header: u8,
}

impl OutFrame {
    /// A text frame of already-serialized JSON (the caller guarantees UTF-8).
    pub fn text(payload: &[u8]) -> Self {
        Self::encode(TEXT, payload)
    }

    pub fn ping(payload: &[u8]) -> Self {
        Self::encode(PING, &payload[..payload.len().min(125)])
    }

    pub fn pong(payload: &[u8]) -> Self {
        Self::encode(PONG, &payload[..payload.len().min(125)])
    }

    /// A close frame with `code` and a reason (cut to fit a control frame).
    pub fn close(code: u16, reason: &str) -> Self {
        let mut p = Vec::with_capacity(2 + reason.len());
        p.extend_from_slice(&code.to_be_bytes());
        let mut r = reason.len().min(123);
        while !reason.is_char_boundary(r) {
            r -= 1;
        }
        p.extend_from_slice(&reason.as_bytes()[..r]);
        Self::encode(CLOSE, &p)
    }

    fn encode(opcode: u8, payload: &[u8]) -> Self {
        let n = payload.len();
        let mut b = BytesMut::with_capacity(10 + n);
        b.put_u8(FIN | opcode);
        match n {
            0..=125 => b.put_u8(n as u8),
            126..=0xFFFF => {
                b.put_u8(126);
                b.put_u16(n as u16);
            }
            _ => {
                b.put_u8(127);
                b.put_u64(n as u64);
            }
        }
        let header = b.len() as u8;
        b.put_slice(payload);
        Self {
            bytes: b.freeze(),
            header,
        }
    }

    /// What goes on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The frame's payload (the JSON of a text frame).
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.header as usize..]
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    use super::*;

    /// A WebSocket client (tungstenite) reads exactly what was encoded, at every length
    /// encoding, and the close code.
    #[tokio::test]
    async fn a_client_reads_every_length_and_the_close_code() {
        let (server, client) = tokio::io::duplex(1 << 20);
        let lens = [0usize, 1, 125, 126, 127, 65_535, 65_536, 100_000];
        let writer = tokio::spawn(async move {
            let mut server = server;
            for n in lens {
                let body = "x".repeat(n);
                server
                    .write_all(OutFrame::text(body.as_bytes()).as_bytes())
                    .await
                    .unwrap();
            }
            server
                .write_all(OutFrame::ping(b"12345678").as_bytes())
                .await
                .unwrap();
            server
                .write_all(OutFrame::close(4008, "slow consumer").as_bytes())
                .await
                .unwrap();
            server
        });
        let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        for n in lens {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(t) => assert_eq!(t.len(), n),
                m => panic!("expected text of {n}, got {m:?}"),
            }
        }
        match ws.next().await.unwrap().unwrap() {
            Message::Ping(p) => assert_eq!(&p[..], b"12345678"),
            m => panic!("expected ping, got {m:?}"),
        }
        match ws.next().await.unwrap().unwrap() {
            Message::Close(Some(c)) => {
                assert_eq!(u16::from(c.code), 4008);
                assert_eq!(c.reason.as_str(), "slow consumer");
            }
            m => panic!("expected close, got {m:?}"),
        }
        drop(writer.await.unwrap());
    }

    #[test]
    fn payload_is_the_json_and_reasons_are_cut_on_char_boundaries() {
        let f = OutFrame::text(br#"{"type":"x"}"#);
        assert_eq!(f.payload(), br#"{"type":"x"}"#);
        let long = "é".repeat(100);
        let c = OutFrame::close(1000, &long);
        assert!(c.payload().len() <= 125);
        assert!(std::str::from_utf8(&c.payload()[2..]).is_ok());
    }
}
