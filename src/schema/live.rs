//! Asking a running monitor for its schema (`--schema live:ADDR`).

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::addr::Addr;
use crate::wire::{Decoder, Frame};

/// How long to wait for each answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Connects, negotiates, and returns the `query-qmp-schema` reply.
pub fn query_schema(addr: &Addr) -> Result<Value, String> {
    let mut stream: Box<dyn ReadWrite> = match addr {
        Addr::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(TIMEOUT))
                .map_err(|e| e.to_string())?;
            Box::new(s)
        }
        Addr::Tcp { host, port } => {
            let s =
                std::net::TcpStream::connect((host.as_str(), *port)).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(TIMEOUT))
                .map_err(|e| e.to_string())?;
            Box::new(s)
        }
        Addr::Fd(_) => return Err(addr.not_connectable().to_string()),
    };
    let mut conn = Conn {
        decoder: Decoder::new(),
        frames: Vec::new(),
        buf: vec![0; 1 << 16],
    };
    let greeting = conn.next(&mut stream)?;
    if greeting.get("QMP").is_none() {
        return Err("the peer did not greet as a QMP monitor".into());
    }
    let negotiated = conn.call(&mut stream, br#"{"execute": "qmp_capabilities"}"#)?;
    if negotiated.get("return").is_none() {
        return Err(format!("qmp_capabilities failed: {negotiated}"));
    }
    let reply = conn.call(&mut stream, br#"{"execute": "query-qmp-schema"}"#)?;
    if reply.get("return").is_none() {
        return Err(format!("query-qmp-schema failed: {reply}"));
    }
    Ok(reply)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

struct Conn {
    decoder: Decoder,
    frames: Vec<Frame>,
    buf: Vec<u8>,
}

impl Conn {
    fn next(&mut self, stream: &mut Box<dyn ReadWrite>) -> Result<Value, String> {
        loop {
            if !self.frames.is_empty() {
                let frame = self.frames.remove(0);
                return serde_json::from_slice(&frame.bytes)
                    .map_err(|e| format!("the monitor sent something that is not JSON: {e}"));
            }
            let n = stream.read(&mut self.buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the monitor closed the connection".into());
            }
            self.decoder.feed(&self.buf[..n], &mut self.frames);
        }
    }

    /// Sends a command and returns its reply, skipping events.
    fn call(&mut self, stream: &mut Box<dyn ReadWrite>, command: &[u8]) -> Result<Value, String> {
        stream.write_all(command).map_err(|e| e.to_string())?;
        loop {
            let v = self.next(stream)?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }
}
