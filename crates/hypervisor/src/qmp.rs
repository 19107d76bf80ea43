//! The QEMU Machine Protocol: JSON lines over a Unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{HypervisorError, Result};

/// A QMP session.
pub struct Qmp {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events received while waiting for replies, oldest first.
    events: Vec<Value>,
}

impl Qmp {
    /// Connects to `socket` (retrying until `timeout`) and leaves capabilities negotiation.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(stream) => break stream,
                Err(error) if Instant::now() >= deadline => {
                    return Err(HypervisorError::Qmp {
                        socket: socket.to_path_buf(),
                        detail: format!("cannot connect: {error}"),
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let failed = |detail: String| HypervisorError::Qmp {
            socket: socket.to_path_buf(),
            detail,
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| failed(e.to_string()))?;
        let writer = stream.try_clone().map_err(|e| failed(e.to_string()))?;
        let mut qmp = Qmp {
            socket: socket.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(failed(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn error(&self, detail: String) -> HypervisorError {
        HypervisorError::Qmp {
            socket: self.socket.clone(),
            detail,
        }
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let read = self
            .reader
            .read_line(&mut line)
            .map_err(|e| self.error(format!("read failed: {e}")))?;
        if read == 0 {
            return Err(self.error("the VM closed its QMP socket".to_string()));
        }
        serde_json::from_str(&line).map_err(|e| self.error(format!("not JSON ({e}): {line}")))
    }

    /// Runs `command` with `arguments`; returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let request = json!({ "execute": command, "arguments": arguments });
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| self.error(format!("write failed: {e}")))?;
        loop {
            let message = self.read()?;
            if message.get("event").is_some() {
                self.events.push(message);
                continue;
            }
            if let Some(error) = message.get("error") {
                return Err(self.error(format!(
                    "{command}: {}",
                    error["desc"].as_str().unwrap_or("failed")
                )));
            }
            return Ok(message.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// Waits until the VM closes the socket (it exited); false if it is still open after
    /// `timeout`.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)));
        while Instant::now() < deadline {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// Waits until an event named `name` for which `matches` holds arrives (or has arrived
    /// since the last wait); returns it.
    pub fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(position) = self
                .events
                .iter()
                .position(|e| e["event"] == name && matches(e))
            {
                return Ok(self.events.remove(position));
            }
            if Instant::now() >= deadline {
                return Err(self.error(format!("no {name} event within {timeout:?}")));
            }
            let message = self.read()?;
            if message.get("event").is_some() {
                self.events.push(message);
            }
        }
    }
}
