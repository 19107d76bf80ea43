//! A synchronous NBD server: fixed newstyle, `NBD_OPT_GO`/`INFO`/`LIST`, structured
//! replies and the `base:allocation` meta context, one thread per connection.
//!
//! What is served is behind the [`Export`] trait: a recovery point (read-only) for
//! `lifeboat export`, a protected disk (read-write, with FLUSH and FUA) later. The server
//! knows nothing of repositories or images.
//!
//! Requests are answered in order. qemu's client pipelines requests; answering in order is
//! allowed and keeps each connection's state trivial.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Instant;

use crate::buffer::{Buffer, BufferPool};
use crate::connections::{Activity, Connections, Deadlined, Limits, Place, Socket};
use crate::protocol::*;

/// An error to send back to the client: an errno and a message for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (errno {errno})")]
pub struct ExportError {
    /// One of the protocol's error numbers (`EIO`, `EPERM`, …).
    pub errno: u32,
    /// What happened, for the client's log and ours.
    pub message: String,
}

impl ExportError {
    /// An I/O error with a message.
    pub fn io(message: impl Into<String>) -> ExportError {
        ExportError {
            errno: EIO,
            message: message.into(),
        }
    }
}

/// Something that can be served as an NBD export.
pub trait Export: Send + Sync {
    /// Size of the export in bytes.
    fn size_bytes(&self) -> u64;

    /// Fills `buffer` with the bytes at `offset` (always within the export).
    fn read(&self, offset: u64, buffer: &mut [u8]) -> Result<(), ExportError>;

    /// `base:allocation` status of `[offset, offset + length)`: runs of
    /// (length, `STATE_HOLE | STATE_ZERO` flags) covering the range from its start.
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<(u64, u32)>, ExportError>;

    /// True when writes are accepted.
    fn is_writable(&self) -> bool {
        false
    }

    /// Writes `data` at `offset`; with `fua`, durable before returning. The bytes are the
    /// export's to keep (a journal holds them without a copy).
    fn write(&self, _offset: u64, _data: Buffer, _fua: bool) -> Result<(), ExportError> {
        Err(ExportError {
            errno: EPERM,
            message: "the export is read-only".to_string(),
        })
    }

    /// Zeroes `[offset, offset + length)`.
    fn write_zeroes(&self, _offset: u64, _length: u64, _fua: bool) -> Result<(), ExportError> {
        Err(ExportError {
            errno: EPERM,
            message: "the export is read-only".to_string(),
        })
    }

    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), ExportError> {
        Ok(())
    }
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("client broke the protocol: {0}")]
    Protocol(String),
}

/// A set of named exports.
pub struct Server {
    exports: BTreeMap<String, Arc<dyn Export>>,
    /// Every open connection, within the server's [`Limits`].
    connections: Connections,
    /// Memory for write payloads.
    payloads: Arc<BufferPool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("exports", &self.exports.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

/// The export a connection negotiated and its place among the serving connections.
type Negotiated = (Arc<dyn Export>, Activity);

/// Negotiated state of one connection.
struct Session {
    structured_replies: bool,
    base_allocation_id: Option<u32>,
    no_zeroes: bool,
}

const BASE_ALLOCATION_CONTEXT_ID: u32 = 1;

const REQUEST_HEADER_BYTES: usize = 28;

/// The read buffer: a request header and a small write in one read, while most of a large
/// write's payload is read past it, straight into its own memory (a larger buffer would
/// take the payloads of the requests queued behind and copy them twice).
const INPUT_BUFFER_BYTES: usize = 8 * 1024;

/// How often payload memory no write used is given back.
const PAYLOAD_TRIM_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Payload memory kept for reuse unless [`Server::keep_payload_memory`] says otherwise.
const DEFAULT_KEPT_PAYLOAD_BYTES: usize = 64 << 20;

impl Server {
    /// A server with no exports, within the default [`Limits`].
    pub fn new() -> Server {
        Server::with_limits(Limits::default())
    }

    /// A server with no exports, within `limits`.
    pub fn with_limits(limits: Limits) -> Server {
        Server {
            exports: BTreeMap::new(),
            connections: Connections::new(limits),
            payloads: BufferPool::new(DEFAULT_KEPT_PAYLOAD_BYTES),
        }
    }

    /// Keeps up to `bytes` of the memory of dropped write payloads for the next writes
    /// (an export that holds payloads, like a journal, can use as much as it may hold).
    pub fn keep_payload_memory(&mut self, bytes: usize) {
        self.payloads = BufferPool::new(bytes);
    }

    /// Gives back payload memory an idle period did not use (call it now and then; it acts
    /// at most once per [`PAYLOAD_TRIM_PERIOD`]).
    pub fn trim_payload_memory(&self) {
        self.payloads.trim_unused(PAYLOAD_TRIM_PERIOD);
    }

    /// Adds an export under `name`.
    pub fn add_export(&mut self, name: impl Into<String>, export: Arc<dyn Export>) {
        self.exports.insert(name.into(), export);
    }

    /// The names of all exports.
    pub fn export_names(&self) -> Vec<String> {
        self.exports.keys().cloned().collect()
    }

    /// Finds an export; the empty name means the only export when there is exactly one.
    fn find(&self, name: &str) -> Option<Arc<dyn Export>> {
        if let Some(export) = self.exports.get(name) {
            return Some(Arc::clone(export));
        }
        if name.is_empty() && self.exports.len() == 1 {
            return self.exports.values().next().cloned();
        }
        None
    }

    /// Accepts TCP connections forever, one thread each.
    pub fn serve_tcp(self: &Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        for stream in listener.incoming() {
            let stream = stream?;
            let _ = stream.set_nodelay(true);
            self.spawn(Socket::Tcp(stream));
        }
        Ok(())
    }

    /// Accepts Unix socket connections forever, one thread each.
    pub fn serve_unix(self: &Arc<Self>, listener: UnixListener) -> std::io::Result<()> {
        for stream in listener.incoming() {
            let stream = stream?;
            self.spawn(Socket::Unix(stream));
        }
        Ok(())
    }

    fn spawn(self: &Arc<Self>, socket: Socket) {
        let server = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("nbd-connection".to_string())
            .stack_size(256 * 1024)
            .spawn(move || {
                if let Err(error) = server.handle(socket) {
                    tracing::info!(%error, "NBD connection ended");
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "refusing an NBD connection: no thread for it");
        }
    }

    /// Serves one connection until the client disconnects, within the server's limits.
    fn handle(&self, socket: Socket) -> Result<(), ServerError> {
        let place = self.connections.admit(socket.try_clone()?);
        let deadline = Instant::now() + self.connections.limits().handshake_timeout;
        let reader = Deadlined::new(Polling(socket.try_clone()?), socket.try_clone()?, deadline);
        let writer = Deadlined::new(socket.try_clone()?, socket, deadline);
        let mut input = BufReader::with_capacity(INPUT_BUFFER_BYTES, reader);
        // Small while negotiating: a connection that never gets further costs little.
        let mut output = BufWriter::with_capacity(4096, writer);
        output.write_all(&INIT_MAGIC.to_be_bytes())?;
        output.write_all(&OPTION_MAGIC.to_be_bytes())?;
        output.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
        output.flush()?;
        let client_flags = read_u32(&mut input)?;
        if client_flags & FLAG_C_FIXED_NEWSTYLE == 0 {
            return Err(ServerError::Protocol(
                "client does not speak fixed newstyle".to_string(),
            ));
        }
        let mut session = Session {
            structured_replies: false,
            base_allocation_id: None,
            no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
        };
        let Some((export, activity)) =
            self.negotiate(&mut input, &mut output, &mut session, &place)?
        else {
            return Ok(());
        };
        input.get_mut().lift()?;
        let mut writer = output.into_inner().map_err(|e| e.into_error())?;
        writer.lift()?;
        let mut output = BufWriter::with_capacity(256 * 1024, writer);
        transmit(
            export.as_ref(),
            &mut input,
            &mut output,
            &session,
            &self.payloads,
            &activity,
        )
    }

    /// Runs the option haggling phase; returns the chosen export and the connection's
    /// serving place, or `None` on abort.
    fn negotiate<R: Read, W: Write>(
        &self,
        input: &mut R,
        output: &mut W,
        session: &mut Session,
        place: &Place<'_>,
    ) -> Result<Option<Negotiated>, ServerError> {
        loop {
            let magic = read_u64(input)?;
            if magic != OPTION_MAGIC {
                return Err(ServerError::Protocol("bad option magic".to_string()));
            }
            let option = read_u32(input)?;
            let length = read_u32(input)?;
            if length > MAXIMUM_OPTION_BYTES {
                // Discarding an oversized option would let a client stream without limit.
                send_option_reply(output, option, REP_ERR_TOO_BIG, b"option too large")?;
                return Err(ServerError::Protocol(format!("option of {length} bytes")));
            }
            let mut data = vec![0u8; length as usize];
            input.read_exact(&mut data)?;
            match option {
                OPT_EXPORT_NAME => {
                    let name = String::from_utf8_lossy(&data).into_owned();
                    let Some(export) = self.find(&name) else {
                        return Err(ServerError::Protocol(format!("unknown export '{name}'")));
                    };
                    let Some(activity) = self.connections.serve(place) else {
                        return Err(ServerError::Protocol(FULL.to_string()));
                    };
                    output.write_all(&export.size_bytes().to_be_bytes())?;
                    output.write_all(&transmission_flags(export.as_ref()).to_be_bytes())?;
                    if !session.no_zeroes {
                        output.write_all(&[0u8; 124])?;
                    }
                    output.flush()?;
                    return Ok(Some((export, activity)));
                }
                OPT_ABORT => {
                    send_option_reply(output, option, REP_ACK, &[])?;
                    return Ok(None);
                }
                OPT_LIST => {
                    for name in self.exports.keys() {
                        let mut payload = Vec::new();
                        payload.extend_from_slice(&(name.len() as u32).to_be_bytes());
                        payload.extend_from_slice(name.as_bytes());
                        send_option_reply(output, option, REP_SERVER, &payload)?;
                    }
                    send_option_reply(output, option, REP_ACK, &[])?;
                }
                OPT_STRUCTURED_REPLY => {
                    if !data.is_empty() {
                        send_option_reply(output, option, REP_ERR_INVALID, b"no payload expected")?;
                        continue;
                    }
                    session.structured_replies = true;
                    send_option_reply(output, option, REP_ACK, &[])?;
                }
                OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                    self.meta_context(output, option, &data, session)?;
                }
                OPT_INFO | OPT_GO => {
                    let Some((name, requests)) = parse_info_request(&data) else {
                        send_option_reply(output, option, REP_ERR_INVALID, b"malformed request")?;
                        continue;
                    };
                    let Some(export) = self.find(&name) else {
                        let message = format!("no export named '{name}'");
                        send_option_reply(output, option, REP_ERR_UNKNOWN, message.as_bytes())?;
                        continue;
                    };
                    let activity = if option == OPT_GO {
                        let Some(activity) = self.connections.serve(place) else {
                            send_option_reply(output, option, REP_ERR_POLICY, FULL.as_bytes())?;
                            return Err(ServerError::Protocol(FULL.to_string()));
                        };
                        Some(activity)
                    } else {
                        None
                    };
                    let mut info = Vec::with_capacity(12);
                    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                    info.extend_from_slice(&export.size_bytes().to_be_bytes());
                    info.extend_from_slice(&transmission_flags(export.as_ref()).to_be_bytes());
                    send_option_reply(output, option, REP_INFO, &info)?;
                    if requests.contains(&INFO_BLOCK_SIZE) {
                        let mut block = Vec::with_capacity(14);
                        block.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                        block.extend_from_slice(&1u32.to_be_bytes());
                        block.extend_from_slice(&4096u32.to_be_bytes());
                        block.extend_from_slice(&MAXIMUM_REQUEST_BYTES.to_be_bytes());
                        send_option_reply(output, option, REP_INFO, &block)?;
                    }
                    if requests.contains(&INFO_NAME) {
                        let mut named = INFO_NAME.to_be_bytes().to_vec();
                        named.extend_from_slice(name.as_bytes());
                        send_option_reply(output, option, REP_INFO, &named)?;
                    }
                    send_option_reply(output, option, REP_ACK, &[])?;
                    if let Some(activity) = activity {
                        return Ok(Some((export, activity)));
                    }
                }
                _ => {
                    send_option_reply(output, option, REP_ERR_UNSUP, b"option not supported")?;
                }
            }
        }
    }

    fn meta_context<W: Write>(
        &self,
        output: &mut W,
        option: u32,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), ServerError> {
        let Some((export_name, queries)) = parse_meta_context_request(data) else {
            send_option_reply(output, option, REP_ERR_INVALID, b"malformed request")?;
            return Ok(());
        };
        if option == OPT_SET_META_CONTEXT && !session.structured_replies {
            send_option_reply(output, option, REP_ERR_INVALID, b"structured replies first")?;
            return Ok(());
        }
        if self.find(&export_name).is_none() {
            send_option_reply(output, option, REP_ERR_UNKNOWN, b"no such export")?;
            return Ok(());
        }
        let wants_allocation = if option == OPT_LIST_META_CONTEXT && queries.is_empty() {
            true
        } else {
            queries
                .iter()
                .any(|q| q == CONTEXT_BASE_ALLOCATION || q == "base:")
        };
        if option == OPT_SET_META_CONTEXT {
            session.base_allocation_id = None;
        }
        if wants_allocation {
            let mut payload = BASE_ALLOCATION_CONTEXT_ID.to_be_bytes().to_vec();
            payload.extend_from_slice(CONTEXT_BASE_ALLOCATION.as_bytes());
            send_option_reply(output, option, REP_META_CONTEXT, &payload)?;
            if option == OPT_SET_META_CONTEXT {
                session.base_allocation_id = Some(BASE_ALLOCATION_CONTEXT_ID);
            }
        }
        send_option_reply(output, option, REP_ACK, &[])?;
        Ok(())
    }
}

fn transmission_flags(export: &dyn Export) -> u16 {
    let mut flags = FLAG_HAS_FLAGS | FLAG_SEND_DF;
    if export.is_writable() {
        flags |= FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_WRITE_ZEROES;
    } else {
        flags |= FLAG_READ_ONLY | FLAG_CAN_MULTI_CONN;
    }
    flags
}

fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let name_length = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = String::from_utf8(data.get(4..4 + name_length)?.to_vec()).ok()?;
    let mut at = 4 + name_length;
    let count = u16::from_be_bytes(data.get(at..at + 2)?.try_into().ok()?) as usize;
    at += 2;
    let mut requests = Vec::with_capacity(count);
    for _ in 0..count {
        requests.push(u16::from_be_bytes(data.get(at..at + 2)?.try_into().ok()?));
        at += 2;
    }
    (at == data.len()).then_some((name, requests))
}

fn parse_meta_context_request(data: &[u8]) -> Option<(String, Vec<String>)> {
    let name_length = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = String::from_utf8(data.get(4..4 + name_length)?.to_vec()).ok()?;
    let mut at = 4 + name_length;
    let count = u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
    at += 4;
    let mut queries = Vec::new();
    for _ in 0..count {
        let length = u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        queries.push(String::from_utf8(data.get(at..at + length)?.to_vec()).ok()?);
        at += length;
    }
    (at == data.len()).then_some((name, queries))
}

fn send_option_reply<W: Write>(
    output: &mut W,
    option: u32,
    reply: u32,
    payload: &[u8],
) -> std::io::Result<()> {
    output.write_all(&OPTION_REPLY_MAGIC.to_be_bytes())?;
    output.write_all(&option.to_be_bytes())?;
    output.write_all(&reply.to_be_bytes())?;
    output.write_all(&(payload.len() as u32).to_be_bytes())?;
    output.write_all(payload)?;
    output.flush()
}

fn read_u32<R: Read>(input: &mut R) -> std::io::Result<u32> {
    let mut bytes = [0u8; 4];
    input.read_exact(&mut bytes)?;
    Ok(u32::from_be_bytes(bytes))
}

fn read_u64<R: Read>(input: &mut R) -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    input.read_exact(&mut bytes)?;
    Ok(u64::from_be_bytes(bytes))
}

/// The transmission phase: requests until `NBD_CMD_DISC` or end of stream.
fn transmit<R: Read, W: Write>(
    export: &dyn Export,
    input: &mut BufReader<R>,
    output: &mut W,
    session: &Session,
    payloads: &Arc<BufferPool>,
    activity: &Activity,
) -> Result<(), ServerError> {
    let mut header = [0u8; REQUEST_HEADER_BYTES];
    let mut buffer = Vec::new();
    loop {
        match input.read_exact(&mut header) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error.into()),
        }
        activity.touch();
        let magic = u32::from_be_bytes(header[..4].try_into().expect("4"));
        if magic != REQUEST_MAGIC {
            return Err(ServerError::Protocol(format!(
                "bad request magic {magic:#x}"
            )));
        }
        let flags = u16::from_be_bytes(header[4..6].try_into().expect("2"));
        let command = u16::from_be_bytes(header[6..8].try_into().expect("2"));
        let cookie = u64::from_be_bytes(header[8..16].try_into().expect("8"));
        let offset = u64::from_be_bytes(header[16..24].try_into().expect("8"));
        let length = u32::from_be_bytes(header[24..28].try_into().expect("4"));
        let fua = flags & CMD_FLAG_FUA != 0;
        let in_bounds = offset
            .checked_add(length as u64)
            .is_some_and(|end| end <= export.size_bytes());
        match command {
            CMD_DISC => {
                output.flush()?;
                return Ok(());
            }
            CMD_READ => {
                let result = if !in_bounds {
                    Err(invalid("read beyond the end of the export"))
                } else if length > MAXIMUM_REQUEST_BYTES {
                    Err(ExportError {
                        errno: EOVERFLOW,
                        message: "read too large".to_string(),
                    })
                } else {
                    buffer.resize(length as usize, 0);
                    export.read(offset, &mut buffer)
                };
                match result {
                    Ok(()) if session.structured_replies => {
                        send_read_chunks(output, cookie, offset, &buffer)?;
                    }
                    Ok(()) => {
                        send_simple_reply(output, cookie, 0)?;
                        output.write_all(&buffer)?;
                    }
                    Err(error) => send_error(output, session, cookie, &error)?,
                }
            }
            CMD_WRITE => {
                if length > MAXIMUM_REQUEST_BYTES {
                    return Err(ServerError::Protocol(format!("write of {length} bytes")));
                }
                let data = read_payload(input, payloads.take(length as usize))?;
                let result = if !export.is_writable() {
                    Err(read_only())
                } else if !in_bounds {
                    Err(invalid("write beyond the end of the export"))
                } else {
                    export.write(offset, data, fua)
                };
                reply_status(output, session, cookie, result)?;
            }
            CMD_WRITE_ZEROES => {
                let result = if !export.is_writable() {
                    Err(read_only())
                } else if !in_bounds {
                    Err(invalid("write beyond the end of the export"))
                } else {
                    export.write_zeroes(offset, length as u64, fua)
                };
                reply_status(output, session, cookie, result)?;
            }
            CMD_FLUSH => {
                let result = export.flush();
                reply_status(output, session, cookie, result)?;
            }
            CMD_TRIM | CMD_CACHE => {
                // Trim is advisory and cache a hint: accepting both without action is correct.
                let result = if in_bounds {
                    Ok(())
                } else {
                    Err(invalid("beyond the end of the export"))
                };
                reply_status(output, session, cookie, result)?;
            }
            CMD_BLOCK_STATUS => {
                let result = match session.base_allocation_id {
                    None => Err(invalid("no meta context was negotiated")),
                    Some(_) if !in_bounds || length == 0 => {
                        Err(invalid("status beyond the end of the export"))
                    }
                    Some(_) => export.allocation(offset, length as u64),
                };
                match result {
                    Ok(extents) => {
                        let only_one = flags & CMD_FLAG_REQ_ONE != 0;
                        send_block_status(output, cookie, length as u64, &extents, only_one)?;
                    }
                    Err(error) => send_error(output, session, cookie, &error)?,
                }
            }
            _ => {
                let error = ExportError {
                    errno: EINVAL,
                    message: format!("unknown command {command}"),
                };
                send_error(output, session, cookie, &error)?;
            }
        }
        output.flush()?;
    }
}

/// How long a connection waits for its next bytes by polling before it sleeps.
const POLL: std::time::Duration = std::time::Duration::from_micros(50);

/// A socket read that polls for [`POLL`] before sleeping in the kernel. A client at queue
/// depth 1 sends its next request a few microseconds after our reply; waking a thread (and
/// on a virtual machine, an idle vCPU) costs more than that, and was most of the latency
/// of a small write.
struct Polling<S>(S);

impl<S: Read + std::os::fd::AsRawFd> Read for Polling<S> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let deadline = std::time::Instant::now() + POLL;
        loop {
            // SAFETY: `buffer` is valid for `buffer.len()` bytes of writing for the call.
            let received = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if received >= 0 {
                return Ok(received as usize);
            }
            let error = std::io::Error::last_os_error();
            match error.kind() {
                std::io::ErrorKind::WouldBlock if std::time::Instant::now() < deadline => {
                    std::hint::spin_loop()
                }
                std::io::ErrorKind::WouldBlock => return self.0.read(buffer),
                std::io::ErrorKind::Interrupted => {}
                _ => return Err(error),
            }
        }
    }
}

/// Why a negotiated connection is refused.
const FULL: &str = "every place of the server is taken by an active connection; try again later";

/// Reads a write's payload into `data`, memory the export may keep: what is already
/// buffered is copied once and the rest read straight from the socket, not through the
/// buffer (that would copy every byte twice).
fn read_payload<R: Read>(input: &mut BufReader<R>, mut data: Buffer) -> std::io::Result<Buffer> {
    let into = data.get_mut().expect("a buffer just taken is not shared");
    let buffered = input.buffer().len().min(into.len());
    into[..buffered].copy_from_slice(&input.buffer()[..buffered]);
    input.consume(buffered);
    input.get_mut().read_exact(&mut into[buffered..])?;
    Ok(data)
}

fn read_only() -> ExportError {
    ExportError {
        errno: EPERM,
        message: "the export is read-only".to_string(),
    }
}

fn invalid(message: &str) -> ExportError {
    ExportError {
        errno: EINVAL,
        message: message.to_string(),
    }
}

fn reply_status<W: Write>(
    output: &mut W,
    session: &Session,
    cookie: u64,
    result: Result<(), ExportError>,
) -> std::io::Result<()> {
    match result {
        Ok(()) => send_simple_reply(output, cookie, 0),
        Err(error) => send_error(output, session, cookie, &error),
    }
}

fn send_simple_reply<W: Write>(output: &mut W, cookie: u64, errno: u32) -> std::io::Result<()> {
    output.write_all(&SIMPLE_REPLY_MAGIC.to_be_bytes())?;
    output.write_all(&errno.to_be_bytes())?;
    output.write_all(&cookie.to_be_bytes())
}

fn send_chunk_header<W: Write>(
    output: &mut W,
    flags: u16,
    kind: u16,
    cookie: u64,
    length: u32,
) -> std::io::Result<()> {
    output.write_all(&STRUCTURED_REPLY_MAGIC.to_be_bytes())?;
    output.write_all(&flags.to_be_bytes())?;
    output.write_all(&kind.to_be_bytes())?;
    output.write_all(&cookie.to_be_bytes())?;
    output.write_all(&length.to_be_bytes())
}

fn send_error<W: Write>(
    output: &mut W,
    session: &Session,
    cookie: u64,
    error: &ExportError,
) -> std::io::Result<()> {
    tracing::debug!(%error, "NBD request failed");
    if !session.structured_replies {
        return send_simple_reply(output, cookie, error.errno);
    }
    let message = &error.message.as_bytes()[..error.message.len().min(1024)];
    send_chunk_header(
        output,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + message.len() as u32,
    )?;
    output.write_all(&error.errno.to_be_bytes())?;
    output.write_all(&(message.len() as u16).to_be_bytes())?;
    output.write_all(message)
}

/// Sends read data as one chunk, or as a hole when it is all zeros.
fn send_read_chunks<W: Write>(
    output: &mut W,
    cookie: u64,
    offset: u64,
    data: &[u8],
) -> std::io::Result<()> {
    if !data.is_empty() && data.iter().all(|&b| b == 0) {
        send_chunk_header(output, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_HOLE, cookie, 12)?;
        output.write_all(&offset.to_be_bytes())?;
        return output.write_all(&(data.len() as u32).to_be_bytes());
    }
    send_chunk_header(
        output,
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        8 + data.len() as u32,
    )?;
    output.write_all(&offset.to_be_bytes())?;
    output.write_all(data)
}

fn send_block_status<W: Write>(
    output: &mut W,
    cookie: u64,
    length: u64,
    extents: &[(u64, u32)],
    only_one: bool,
) -> std::io::Result<()> {
    let mut descriptors = Vec::new();
    let mut covered = 0u64;
    for &(extent_length, flags) in extents {
        if covered >= length || extent_length == 0 {
            break;
        }
        let clipped = extent_length
            .min(length - covered)
            .min(u32::MAX as u64 & !4095);
        descriptors.extend_from_slice(&(clipped as u32).to_be_bytes());
        descriptors.extend_from_slice(&flags.to_be_bytes());
        covered += clipped;
        if only_one || descriptors.len() >= 8 * 4096 {
            break;
        }
    }
    send_chunk_header(
        output,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        4 + descriptors.len() as u32,
    )?;
    output.write_all(&BASE_ALLOCATION_CONTEXT_ID.to_be_bytes())?;
    output.write_all(&descriptors)
}

/// Serves `server` on a TCP listener in a background thread; returns the bound address.
pub fn spawn_tcp(
    server: Arc<Server>,
    listener: TcpListener,
) -> std::io::Result<std::net::SocketAddr> {
    let address = listener.local_addr()?;
    std::thread::Builder::new()
        .name("nbd-listener".to_string())
        .spawn(move || {
            if let Err(error) = server.serve_tcp(listener) {
                tracing::error!(%error, "NBD listener stopped");
            }
        })?;
    Ok(address)
}

/// Listens on the Unix socket `path`, replacing a stale one. The socket is bound under a
/// temporary name and renamed into place once it listens, so a client that sees `path`
/// can connect (a plain bind makes the file before `listen`, and a client quick enough is
/// refused).
pub fn listen_unix(path: &std::path::Path) -> std::io::Result<UnixListener> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = std::path::PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)?;
    if let Err(error) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    Ok(listener)
}

/// Serves `server` on a Unix socket listener in a background thread.
pub fn spawn_unix(server: Arc<Server>, listener: UnixListener) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("nbd-listener".to_string())
        .spawn(move || {
            if let Err(error) = server.serve_unix(listener) {
                tracing::error!(%error, "NBD listener stopped");
            }
        })?;
    Ok(())
}

/// Serves one already-connected stream (used by tests and socket activation).
pub fn serve_stream(server: &Server, stream: UnixStream) -> Result<(), ServerError> {
    server.handle(Socket::Unix(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_polling_read_gets_bytes_sent_while_it_polls_after_it_sleeps_and_the_end() {
        let (mut sender, receiver) = UnixStream::pair().unwrap();
        let mut reader = Polling(receiver);
        let writer = std::thread::spawn(move || {
            sender.write_all(b"first").unwrap();
            std::thread::sleep(std::time::Duration::from_micros(20));
            sender.write_all(b"second").unwrap();
            std::thread::sleep(POLL * 20);
            sender.write_all(b"third").unwrap();
        });
        let mut received = Vec::new();
        reader.read_to_end(&mut received).unwrap();
        writer.join().unwrap();
        assert_eq!(received, b"firstsecondthird");
    }

    #[test]
    fn a_payload_takes_the_buffered_bytes_then_the_rest_of_the_stream() {
        let stream: Vec<u8> = (0..=255).collect();
        let mut input = BufReader::with_capacity(16, stream.as_slice());
        let mut header = [0u8; 10];
        input.read_exact(&mut header).unwrap();
        assert_eq!(
            input.buffer().len(),
            6,
            "six bytes of the payload are buffered"
        );
        let pool = BufferPool::new(1 << 20);
        let payload = read_payload(&mut input, pool.take(100)).unwrap();
        assert_eq!(&payload[..], &stream[10..110]);
        let mut next = [0u8; 4];
        input.read_exact(&mut next).unwrap();
        assert_eq!(
            next,
            stream[110..114],
            "the next request follows the payload"
        );
        let short = read_payload(&mut input, pool.take(1000)).unwrap_err();
        assert_eq!(short.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_payload_in_recycled_memory_holds_only_its_own_bytes() {
        let pool = BufferPool::new(1 << 20);
        let mut old = pool.take(65536);
        old.get_mut().expect("not shared").fill(7);
        drop(old);
        let stream: Vec<u8> = (0..2 * 65536).map(|i| (i % 247 + 8) as u8).collect();
        let mut input = BufReader::with_capacity(INPUT_BUFFER_BYTES, stream.as_slice());
        input.fill_buf().unwrap();
        let payload = read_payload(&mut input, pool.take(65536)).unwrap();
        assert_eq!(&payload[..], &stream[..65536]);
        drop(payload);
        let short = &stream[..1000];
        let mut input = BufReader::with_capacity(INPUT_BUFFER_BYTES, short);
        let error = read_payload(&mut input, pool.take(65536)).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(
            pool.kept_bytes(),
            65536,
            "a failed read gives its memory back"
        );
    }

    #[test]
    fn a_unix_socket_replaces_a_stale_file_and_accepts_once_it_is_there() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("exports.sock");
        std::fs::write(&path, b"stale").unwrap();
        let listener = listen_unix(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop((client, accepted));
        let names: Vec<_> = std::fs::read_dir(directory.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["exports.sock"], "no temporary name is left");
    }
}
