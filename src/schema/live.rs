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
    query_schema_over(&mut stream)
}

/// Greeting, negotiation and `query-qmp-schema` over a connected monitor.
fn query_schema_over(stream: &mut Box<dyn ReadWrite>) -> Result<Value, String> {
    let mut conn = Conn {
        decoder: Decoder::new(),
        frames: Vec::new(),
        buf: vec![0; 1 << 16],
    };
    // A QEMU that is still starting can send an event (its vCPUs' RESUME) on a connection
    // it has accepted but not yet greeted, so events before the greeting are skipped.
    let greeting = conn.next_non_event(stream)?;
    if greeting.get("QMP").is_none() {
        return Err("the peer did not greet as a QMP monitor".into());
    }
    let negotiated = conn.call(stream, br#"{"execute": "qmp_capabilities"}"#)?;
    if negotiated.get("return").is_none() {
        return Err(format!("qmp_capabilities failed: {negotiated}"));
    }
    let reply = conn.call(stream, br#"{"execute": "query-qmp-schema"}"#)?;
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

    /// The next message that is not an event.
    fn next_non_event(&mut self, stream: &mut Box<dyn ReadWrite>) -> Result<Value, String> {
        loop {
            let v = self.next(stream)?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }

    /// Sends a command and returns its reply, skipping events.
    fn call(&mut self, stream: &mut Box<dyn ReadWrite>, command: &[u8]) -> Result<Value, String> {
        stream.write_all(command).map_err(|e| e.to_string())?;
        self.next_non_event(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixStream;

    /// A QEMU that is still starting can send an event before its greeting.
    #[test]
    fn events_before_the_greeting_are_skipped() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let qemu = std::thread::spawn(move || {
            let mut w = theirs.try_clone().unwrap();
            w.write_all(b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"RESUME\"}\r\n")
                .unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            // Each command the client sends is one object with no nested braces.
            let mut commands = std::io::BufReader::new(theirs).split(b'}');
            commands.next().unwrap().unwrap();
            w.write_all(b"{\"return\": {}}\r\n").unwrap();
            commands.next().unwrap().unwrap();
            w.write_all(b"{\"return\": [{\"name\": \"query-status\"}]}\r\n")
                .unwrap();
        });
        let mut stream: Box<dyn ReadWrite> = Box::new(ours);
        let reply = query_schema_over(&mut stream).unwrap();
        assert_eq!(reply["return"][0]["name"], "query-status");
        qemu.join().unwrap();
    }

    #[test]
    fn a_peer_that_does_not_greet_is_refused() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"{\"return\": {}}").unwrap();
        let mut stream: Box<dyn ReadWrite> = Box::new(ours);
        assert_eq!(
            query_schema_over(&mut stream).unwrap_err(),
            "the peer did not greet as a QMP monitor"
        );
    }
}
