//! A synchronous NBD client: fixed newstyle negotiation with `NBD_OPT_GO`, structured
//! replies, meta contexts and block status.
//!
//! Lifeboat uses it to read disk images through `qemu-nbd` (so every format qemu reads is
//! readable, with its allocation map and dirty bitmaps) and to write restored images in
//! formats other than raw. One request is in flight at a time; requests are large
//! (up to 32 MiB), so the round trip is a small part of each.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use crate::socket::Socket;
use std::path::Path;
use std::time::Duration;

use crate::protocol::*;

/// What went wrong talking NBD.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("NBD connection to {peer} failed: {source}")]
    Io {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("NBD server {peer} broke the protocol: {message}")]
    Protocol { peer: String, message: String },
    #[error("NBD server {peer} has no export named '{export}'")]
    UnknownExport { peer: String, export: String },
    #[error("NBD server {peer} refused {what}: {message} (error {code})")]
    Refused {
        peer: String,
        what: String,
        code: u32,
        message: String,
    },
    #[error("NBD server {peer} failed to {what} at offset {offset}: {message} (errno {errno})")]
    Command {
        peer: String,
        what: &'static str,
        offset: u64,
        errno: u32,
        message: String,
    },
}

/// One run of blocks with the same status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Offset of the first byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Context-specific flags (`STATE_HOLE | STATE_ZERO` for `base:allocation`,
    /// `STATE_DIRTY` for dirty bitmaps).
    pub flags: u32,
}

/// A negotiated connection to one export.
pub struct Client {
    stream: Socket,
    peer: String,
    export_size_bytes: u64,
    transmission_flags: u16,
    structured_replies: bool,
    contexts: HashMap<String, u32>,
    maximum_request_bytes: u32,
    next_cookie: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.peer)
            .field("export_size_bytes", &self.export_size_bytes)
            .finish()
    }
}

impl Client {
    /// Connects over a Unix socket and opens `export`, asking for `meta_contexts`.
    pub fn connect_unix(
        socket: &Path,
        export: &str,
        meta_contexts: &[&str],
    ) -> Result<Client, NbdError> {
        let peer = socket.display().to_string();
        let stream = UnixStream::connect(socket).map_err(|source| NbdError::Io {
            peer: peer.clone(),
            source,
        })?;
        Client::negotiate(Socket::Unix(stream), peer, export, meta_contexts)
    }

    /// Opens `export` over a Unix stream already connected (to an abstract socket, say),
    /// asking for `meta_contexts`; `peer` names it in errors.
    pub fn over_unix(
        stream: UnixStream,
        peer: &str,
        export: &str,
        meta_contexts: &[&str],
    ) -> Result<Client, NbdError> {
        Client::negotiate(
            Socket::Unix(stream),
            peer.to_string(),
            export,
            meta_contexts,
        )
    }

    /// Connects over TCP and opens `export`, asking for `meta_contexts`.
    pub fn connect_tcp(
        address: &str,
        export: &str,
        meta_contexts: &[&str],
    ) -> Result<Client, NbdError> {
        let peer = address.to_string();
        let stream = TcpStream::connect(address).map_err(|source| NbdError::Io {
            peer: peer.clone(),
            source,
        })?;
        let _ = stream.set_nodelay(true);
        Client::negotiate(Socket::Tcp(stream), peer, export, meta_contexts)
    }

    /// Size of the export.
    pub fn size_bytes(&self) -> u64 {
        self.export_size_bytes
    }

    /// True when the server refuses writes.
    pub fn is_read_only(&self) -> bool {
        self.transmission_flags & FLAG_READ_ONLY != 0
    }

    /// True when the server agreed to the meta context `name`.
    pub fn has_context(&self, name: &str) -> bool {
        self.contexts.contains_key(name)
    }

    /// The largest request the server accepts.
    pub fn maximum_request_bytes(&self) -> u32 {
        self.maximum_request_bytes
    }

    /// Sets a read timeout, so a hung server becomes an error instead of a hang.
    pub fn set_timeout(&self, timeout: Option<Duration>) {
        let _ = self.stream.set_read_timeout(timeout);
    }

    fn io(&self, source: std::io::Error) -> NbdError {
        NbdError::Io {
            peer: self.peer.clone(),
            source,
        }
    }

    fn protocol(&self, message: impl Into<String>) -> NbdError {
        NbdError::Protocol {
            peer: self.peer.clone(),
            message: message.into(),
        }
    }

    fn negotiate(
        stream: Socket,
        peer: String,
        export: &str,
        meta_contexts: &[&str],
    ) -> Result<Client, NbdError> {
        let mut client = Client {
            stream,
            peer,
            export_size_bytes: 0,
            transmission_flags: 0,
            structured_replies: false,
            contexts: HashMap::new(),
            maximum_request_bytes: MAXIMUM_REQUEST_BYTES,
            next_cookie: 1,
        };
        let init = client.read_u64()?;
        let option = client.read_u64()?;
        if init != INIT_MAGIC || option != OPTION_MAGIC {
            return Err(client.protocol("not a newstyle NBD server"));
        }
        let handshake = client.read_u16()?;
        if handshake & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(client.protocol("server does not speak fixed newstyle"));
        }
        let mut client_flags = FLAG_C_FIXED_NEWSTYLE;
        if handshake & FLAG_NO_ZEROES != 0 {
            client_flags |= FLAG_C_NO_ZEROES;
        }
        client.write_all(&client_flags.to_be_bytes())?;

        client.send_option(OPT_STRUCTURED_REPLY, &[])?;
        let (reply, payload) = client.read_option_reply(OPT_STRUCTURED_REPLY)?;
        client.structured_replies = reply == REP_ACK;
        if reply != REP_ACK && reply & REP_FLAG_ERROR == 0 {
            return Err(client.protocol(format!(
                "unexpected reply {reply} to structured reply ({} bytes)",
                payload.len()
            )));
        }

        if !meta_contexts.is_empty() && client.structured_replies {
            let mut data = Vec::new();
            data.extend_from_slice(&(export.len() as u32).to_be_bytes());
            data.extend_from_slice(export.as_bytes());
            data.extend_from_slice(&(meta_contexts.len() as u32).to_be_bytes());
            for context in meta_contexts {
                data.extend_from_slice(&(context.len() as u32).to_be_bytes());
                data.extend_from_slice(context.as_bytes());
            }
            client.send_option(OPT_SET_META_CONTEXT, &data)?;
            loop {
                let (reply, payload) = client.read_option_reply(OPT_SET_META_CONTEXT)?;
                match reply {
                    REP_ACK => break,
                    REP_META_CONTEXT if payload.len() >= 4 => {
                        let id = u32::from_be_bytes(payload[..4].try_into().expect("4"));
                        let name = String::from_utf8_lossy(&payload[4..]).into_owned();
                        client.contexts.insert(name, id);
                    }
                    REP_ERR_UNKNOWN => {
                        return Err(NbdError::UnknownExport {
                            peer: client.peer.clone(),
                            export: export.to_string(),
                        });
                    }
                    other if other & REP_FLAG_ERROR != 0 => {
                        return Err(client.refused("meta contexts", other, &payload));
                    }
                    other => {
                        return Err(
                            client.protocol(format!("unexpected reply {other} to meta contexts"))
                        );
                    }
                }
            }
        }

        let mut data = Vec::new();
        data.extend_from_slice(&(export.len() as u32).to_be_bytes());
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        client.send_option(OPT_GO, &data)?;
        let mut have_export_info = false;
        loop {
            let (reply, payload) = client.read_option_reply(OPT_GO)?;
            match reply {
                REP_ACK => break,
                REP_INFO if payload.len() >= 2 => {
                    let info = u16::from_be_bytes(payload[..2].try_into().expect("2"));
                    match info {
                        INFO_EXPORT if payload.len() >= 12 => {
                            client.export_size_bytes =
                                u64::from_be_bytes(payload[2..10].try_into().expect("8"));
                            client.transmission_flags =
                                u16::from_be_bytes(payload[10..12].try_into().expect("2"));
                            have_export_info = true;
                        }
                        INFO_BLOCK_SIZE if payload.len() >= 14 => {
                            let maximum =
                                u32::from_be_bytes(payload[10..14].try_into().expect("4"));
                            if maximum > 0 {
                                client.maximum_request_bytes = maximum.min(MAXIMUM_REQUEST_BYTES);
                            }
                        }
                        _ => {}
                    }
                }
                REP_ERR_UNKNOWN => {
                    return Err(NbdError::UnknownExport {
                        peer: client.peer.clone(),
                        export: export.to_string(),
                    });
                }
                other if other & REP_FLAG_ERROR != 0 => {
                    return Err(client.refused("opening the export", other, &payload));
                }
                other => return Err(client.protocol(format!("unexpected reply {other} to GO"))),
            }
        }
        if !have_export_info {
            return Err(client.protocol("GO finished without export information"));
        }
        Ok(client)
    }

    fn refused(&self, what: &str, code: u32, payload: &[u8]) -> NbdError {
        NbdError::Refused {
            peer: self.peer.clone(),
            what: what.to_string(),
            code: code & !REP_FLAG_ERROR,
            message: String::from_utf8_lossy(payload).into_owned(),
        }
    }

    fn send_option(&mut self, option: u32, data: &[u8]) -> Result<(), NbdError> {
        let mut message = Vec::with_capacity(16 + data.len());
        message.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
        message.extend_from_slice(&option.to_be_bytes());
        message.extend_from_slice(&(data.len() as u32).to_be_bytes());
        message.extend_from_slice(data);
        self.write_all(&message)
    }

    fn read_option_reply(&mut self, option: u32) -> Result<(u32, Vec<u8>), NbdError> {
        let magic = self.read_u64()?;
        let replied_option = self.read_u32()?;
        let reply = self.read_u32()?;
        let length = self.read_u32()?;
        if magic != OPTION_REPLY_MAGIC || replied_option != option {
            return Err(self.protocol("bad option reply header"));
        }
        if length > MAXIMUM_OPTION_BYTES {
            return Err(self.protocol(format!("option reply of {length} bytes")));
        }
        let mut payload = vec![0u8; length as usize];
        self.read_exact(&mut payload)?;
        Ok((reply, payload))
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), NbdError> {
        self.stream.write_all(bytes).map_err(|e| self.io(e))
    }

    fn read_exact(&mut self, buffer: &mut [u8]) -> Result<(), NbdError> {
        self.stream.read_exact(buffer).map_err(|e| self.io(e))
    }

    fn read_u16(&mut self) -> Result<u16, NbdError> {
        let mut bytes = [0u8; 2];
        self.read_exact(&mut bytes)?;
        Ok(u16::from_be_bytes(bytes))
    }

    fn read_u32(&mut self) -> Result<u32, NbdError> {
        let mut bytes = [0u8; 4];
        self.read_exact(&mut bytes)?;
        Ok(u32::from_be_bytes(bytes))
    }

    fn read_u64(&mut self) -> Result<u64, NbdError> {
        let mut bytes = [0u8; 8];
        self.read_exact(&mut bytes)?;
        Ok(u64::from_be_bytes(bytes))
    }

    fn send_request(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<u64, NbdError> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut header = [0u8; 28];
        header[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        header[4..6].copy_from_slice(&flags.to_be_bytes());
        header[6..8].copy_from_slice(&command.to_be_bytes());
        header[8..16].copy_from_slice(&cookie.to_be_bytes());
        header[16..24].copy_from_slice(&offset.to_be_bytes());
        header[24..28].copy_from_slice(&length.to_be_bytes());
        self.write_all(&header)?;
        if !payload.is_empty() {
            self.write_all(payload)?;
        }
        Ok(cookie)
    }

    fn command_error(
        &self,
        what: &'static str,
        offset: u64,
        errno: u32,
        message: String,
    ) -> NbdError {
        NbdError::Command {
            peer: self.peer.clone(),
            what,
            offset,
            errno,
            message,
        }
    }

    /// Reads the simple reply of a command without payload.
    fn read_simple_reply(
        &mut self,
        cookie: u64,
        what: &'static str,
        offset: u64,
    ) -> Result<(), NbdError> {
        let magic = self.read_u32()?;
        if magic == STRUCTURED_REPLY_MAGIC {
            // Servers may answer any command with structured chunks once negotiated.
            return self.read_structured_until_done(cookie, what, offset, |_, _, _| Ok(()));
        }
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(self.protocol(format!("bad reply magic {magic:#x}")));
        }
        let errno = self.read_u32()?;
        let replied = self.read_u64()?;
        if replied != cookie {
            return Err(self.protocol("reply for an unknown request"));
        }
        if errno != 0 {
            return Err(self.command_error(what, offset, errno, String::new()));
        }
        Ok(())
    }

    /// Reads structured chunks (the first magic already consumed) until the DONE flag,
    /// handing each non-error chunk's type and payload reader to `on_chunk`.
    fn read_structured_until_done(
        &mut self,
        cookie: u64,
        what: &'static str,
        offset: u64,
        mut on_chunk: impl FnMut(&mut Client, u16, u32) -> Result<(), NbdError>,
    ) -> Result<(), NbdError> {
        let mut first = true;
        let mut failure = None;
        loop {
            if !first {
                let magic = self.read_u32()?;
                if magic != STRUCTURED_REPLY_MAGIC {
                    return Err(self.protocol(format!("bad structured reply magic {magic:#x}")));
                }
            }
            first = false;
            let flags = self.read_u16()?;
            let kind = self.read_u16()?;
            let replied = self.read_u64()?;
            let length = self.read_u32()?;
            if replied != cookie {
                return Err(self.protocol("structured reply for an unknown request"));
            }
            if kind == REPLY_TYPE_ERROR || kind == REPLY_TYPE_ERROR_OFFSET {
                if length > MAXIMUM_OPTION_BYTES {
                    return Err(self.protocol("oversized error chunk"));
                }
                let mut payload = vec![0u8; length as usize];
                self.read_exact(&mut payload)?;
                if payload.len() < 6 {
                    return Err(self.protocol("short error chunk"));
                }
                let errno = u32::from_be_bytes(payload[..4].try_into().expect("4"));
                let message_length =
                    u16::from_be_bytes(payload[4..6].try_into().expect("2")) as usize;
                let message = payload
                    .get(6..6 + message_length)
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .unwrap_or_default();
                let at =
                    if kind == REPLY_TYPE_ERROR_OFFSET && payload.len() >= 6 + message_length + 8 {
                        u64::from_be_bytes(
                            payload[6 + message_length..14 + message_length]
                                .try_into()
                                .expect("8"),
                        )
                    } else {
                        offset
                    };
                failure.get_or_insert_with(|| self.command_error(what, at, errno, message));
            } else if kind == REPLY_TYPE_NONE {
                if length != 0 {
                    return Err(self.protocol("NONE chunk with a payload"));
                }
            } else {
                on_chunk(self, kind, length)?;
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Reads `buffer.len()` bytes at `offset`, splitting large reads.
    pub fn read(&mut self, offset: u64, buffer: &mut [u8]) -> Result<(), NbdError> {
        let maximum = self.maximum_request_bytes as usize;
        let mut done = 0;
        while done < buffer.len() {
            let length = (buffer.len() - done).min(maximum);
            let at = offset + done as u64;
            self.read_one(at, &mut buffer[done..done + length])?;
            done += length;
        }
        Ok(())
    }

    fn read_one(&mut self, offset: u64, buffer: &mut [u8]) -> Result<(), NbdError> {
        let cookie = self.send_request(CMD_READ, 0, offset, buffer.len() as u32, &[])?;
        let magic = self.read_u32()?;
        if magic == SIMPLE_REPLY_MAGIC {
            let errno = self.read_u32()?;
            let replied = self.read_u64()?;
            if replied != cookie {
                return Err(self.protocol("reply for an unknown request"));
            }
            if errno != 0 {
                return Err(self.command_error("read", offset, errno, String::new()));
            }
            return self.read_exact(buffer);
        }
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(self.protocol(format!("bad reply magic {magic:#x}")));
        }
        let request_end = offset + buffer.len() as u64;
        let mut covered = 0u64;
        self.read_structured_until_done(cookie, "read", offset, |client, kind, length| {
            match kind {
                REPLY_TYPE_OFFSET_DATA => {
                    if length < 8 {
                        return Err(client.protocol("short data chunk"));
                    }
                    let at = client.read_u64()?;
                    let data_length = (length - 8) as u64;
                    if at < offset || at + data_length > request_end {
                        return Err(client.protocol("data chunk outside the request"));
                    }
                    let start = (at - offset) as usize;
                    client.read_exact(&mut buffer[start..start + data_length as usize])?;
                    covered += data_length;
                }
                REPLY_TYPE_OFFSET_HOLE => {
                    if length != 12 {
                        return Err(client.protocol("bad hole chunk"));
                    }
                    let at = client.read_u64()?;
                    let hole_length = client.read_u32()? as u64;
                    if at < offset || at + hole_length > request_end {
                        return Err(client.protocol("hole chunk outside the request"));
                    }
                    let start = (at - offset) as usize;
                    buffer[start..start + hole_length as usize].fill(0);
                    covered += hole_length;
                }
                other => {
                    return Err(
                        client.protocol(format!("unexpected chunk type {other} in a read reply"))
                    );
                }
            }
            Ok(())
        })?;
        if covered != buffer.len() as u64 {
            return Err(self.protocol(format!(
                "read reply covered {covered} of {} bytes",
                buffer.len()
            )));
        }
        Ok(())
    }

    /// Writes `data` at `offset`; with `fua`, durable before the reply.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), NbdError> {
        let maximum = self.maximum_request_bytes as usize;
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        let mut done = 0;
        while done < data.len() {
            let length = (data.len() - done).min(maximum);
            let at = offset + done as u64;
            let cookie = self.send_request(
                CMD_WRITE,
                flags,
                at,
                length as u32,
                &data[done..done + length],
            )?;
            self.read_simple_reply(cookie, "write", at)?;
            done += length;
        }
        Ok(())
    }

    /// Writes zeros over `[offset, offset + length)`; with `fua`, durable before the reply.
    /// Servers that do not offer WRITE_ZEROES get zero-filled writes.
    pub fn write_zeroes(&mut self, offset: u64, length: u64, fua: bool) -> Result<(), NbdError> {
        let step = u64::from(self.maximum_request_bytes);
        if self.transmission_flags & FLAG_SEND_WRITE_ZEROES == 0 {
            let zeros = vec![0u8; length.min(step) as usize];
            let mut done = 0;
            while done < length {
                let part = (length - done).min(step) as usize;
                self.write(offset + done, &zeros[..part], fua)?;
                done += part as u64;
            }
            return Ok(());
        }
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        // A zeroing request carries no payload: it may cover far more than a write.
        let step = 1u64 << 30;
        let mut done = 0;
        while done < length {
            let part = (length - done).min(step);
            let at = offset + done;
            let cookie = self.send_request(CMD_WRITE_ZEROES, flags, at, part as u32, &[])?;
            self.read_simple_reply(cookie, "write zeros", at)?;
            done += part;
        }
        Ok(())
    }

    /// Makes every acknowledged write durable.
    pub fn flush(&mut self) -> Result<(), NbdError> {
        let cookie = self.send_request(CMD_FLUSH, 0, 0, 0, &[])?;
        self.read_simple_reply(cookie, "flush", 0)
    }

    /// Asks for the status of `[offset, offset + length)` in meta context `context`.
    /// Returns extents covering at least the start of the range (servers may stop early);
    /// callers loop from the end of the last extent.
    pub fn block_status(
        &mut self,
        context: &str,
        offset: u64,
        length: u32,
    ) -> Result<Vec<Extent>, NbdError> {
        let Some(&context_id) = self.contexts.get(context) else {
            return Err(self.protocol(format!("meta context '{context}' was not negotiated")));
        };
        let cookie = self.send_request(CMD_BLOCK_STATUS, 0, offset, length, &[])?;
        let magic = self.read_u32()?;
        if magic != STRUCTURED_REPLY_MAGIC {
            if magic == SIMPLE_REPLY_MAGIC {
                let errno = self.read_u32()?;
                let _ = self.read_u64()?;
                return Err(self.command_error(
                    "report block status",
                    offset,
                    errno,
                    String::new(),
                ));
            }
            return Err(self.protocol(format!("bad reply magic {magic:#x}")));
        }
        let mut extents = Vec::new();
        self.read_structured_until_done(
            cookie,
            "report block status",
            offset,
            |client, kind, length| {
                if kind != REPLY_TYPE_BLOCK_STATUS
                    || length < 4
                    || (length - 4) % 8 != 0
                    || length > MAXIMUM_OPTION_BYTES * 16
                {
                    return Err(
                        client.protocol(format!("unexpected chunk type {kind} in block status"))
                    );
                }
                let id = client.read_u32()?;
                let mut descriptors = vec![0u8; (length - 4) as usize];
                client.read_exact(&mut descriptors)?;
                if id != context_id {
                    return Ok(());
                }
                let mut at = offset;
                for descriptor in descriptors.chunks_exact(8) {
                    let extent_length =
                        u32::from_be_bytes(descriptor[..4].try_into().expect("4")) as u64;
                    let flags = u32::from_be_bytes(descriptor[4..].try_into().expect("4"));
                    if extent_length == 0 {
                        return Err(client.protocol("zero-length extent"));
                    }
                    extents.push(Extent {
                        offset: at,
                        length: extent_length,
                        flags,
                    });
                    at += extent_length;
                }
                Ok(())
            },
        )?;
        if extents.is_empty() {
            return Err(self.protocol("block status reply without extents"));
        }
        Ok(extents)
    }

    /// Ends the session politely.
    pub fn disconnect(mut self) {
        let _ = self.send_request(CMD_DISC, 0, 0, 0, &[]);
    }
}
