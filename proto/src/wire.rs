//! Checked views over WireGuard messages and their validated representations
//! (smoltcp `wire/` style).
//!
//! A view (`HandshakeInitiation<T>`, ...) wraps a byte buffer. `new_checked`
//! validates the 4-byte header (type byte plus three zero reserved bytes) and
//! the length; accessors never panic, even on an unchecked view over a short
//! buffer (they read zeros and ignore writes out of range). A `*Repr` is the
//! parsed, owned form; `Repr::emit` writes it back so that
//! `emit(parse(bytes)) == bytes` for every valid message.

use crate::consts::{
    COOKIE_REPLY_LEN, HANDSHAKE_INITIATION_LEN, HANDSHAKE_RESPONSE_LEN, TRANSPORT_HEADER_LEN,
    TRANSPORT_MIN_LEN,
};

/// Message type (the first little-endian u32 of every message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Handshake initiation (1).
    HandshakeInitiation,
    /// Handshake response (2).
    HandshakeResponse,
    /// Cookie reply (3).
    CookieReply,
    /// Transport data (4).
    TransportData,
}

impl MessageType {
    /// The type's numeric value.
    pub const fn value(self) -> u8 {
        match self {
            MessageType::HandshakeInitiation => 1,
            MessageType::HandshakeResponse => 2,
            MessageType::CookieReply => 3,
            MessageType::TransportData => 4,
        }
    }

    /// Decodes the 4-byte header of `buf`.
    pub fn from_header(buf: &[u8]) -> Result<Self, WireError> {
        let hdr: [u8; 4] = match buf.get(..4).and_then(|s| s.try_into().ok()) {
            Some(h) => h,
            None => return Err(WireError::Truncated(buf.len())),
        };
        match u32::from_le_bytes(hdr) {
            1 => Ok(MessageType::HandshakeInitiation),
            2 => Ok(MessageType::HandshakeResponse),
            3 => Ok(MessageType::CookieReply),
            4 => Ok(MessageType::TransportData),
            other => Err(WireError::UnknownType(other)),
        }
    }
}

/// Errors of the checked views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the 4-byte header.
    #[error("datagram of {0} bytes is too short for a message header")]
    Truncated(usize),
    /// The header is not one of the four message types (reserved bytes must be zero).
    #[error("unknown message type {0:#010x}")]
    UnknownType(u32),
    /// The header names a different message type than the view expects.
    #[error("expected a {expected:?} message, got {actual:?}")]
    WrongType {
        /// Type the view expects.
        expected: MessageType,
        /// Type found in the header.
        actual: MessageType,
    },
    /// A fixed-size message with the wrong length.
    #[error("{kind:?} must be {expected} bytes, got {actual}")]
    WrongLength {
        /// Message type.
        kind: MessageType,
        /// Required length.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// A transport message shorter than header plus tag.
    #[error("transport message of {0} bytes is shorter than the 32-byte minimum")]
    TransportTooShort(usize),
    /// An emit target buffer is too small.
    #[error("buffer of {available} bytes is too small, {needed} needed")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
}

fn read_u32(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(read_array(buf, off))
}
fn read_u64(buf: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(read_array(buf, off))
}
fn read_array<const N: usize>(buf: &[u8], off: usize) -> [u8; N] {
    buf.get(off..off + N)
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0u8; N])
}
fn write_bytes(buf: &mut [u8], off: usize, src: &[u8]) {
    if let Some(dst) = buf.get_mut(off..off + src.len()) {
        dst.copy_from_slice(src);
    }
}
fn write_header(buf: &mut [u8], ty: MessageType) {
    write_bytes(buf, 0, &[ty.value(), 0, 0, 0]);
}

fn check_fixed(buf: &[u8], kind: MessageType, len: usize) -> Result<(), WireError> {
    let actual = MessageType::from_header(buf)?;
    if actual != kind {
        return Err(WireError::WrongType {
            expected: kind,
            actual,
        });
    }
    if buf.len() != len {
        return Err(WireError::WrongLength {
            kind,
            expected: len,
            actual: buf.len(),
        });
    }
    Ok(())
}

fn ensure_len(buf: &[u8], needed: usize) -> Result<(), WireError> {
    if buf.len() < needed {
        return Err(WireError::BufferTooSmall {
            needed,
            available: buf.len(),
        });
    }
    Ok(())
}

/// Field offsets.
pub mod field {
    /// Initiation: sender index.
    pub const INIT_SENDER: usize = 4;
    /// Initiation: unencrypted ephemeral public key.
    pub const INIT_EPHEMERAL: usize = 8;
    /// Initiation: encrypted static public key (32 + 16 bytes).
    pub const INIT_STATIC: usize = 40;
    /// Initiation: encrypted TAI64N timestamp (12 + 16 bytes).
    pub const INIT_TIMESTAMP: usize = 88;
    /// Initiation: mac1 (covers bytes before it).
    pub const INIT_MAC1: usize = 116;
    /// Initiation: mac2 (covers bytes before it).
    pub const INIT_MAC2: usize = 132;
    /// Response: sender index.
    pub const RESP_SENDER: usize = 4;
    /// Response: receiver index.
    pub const RESP_RECEIVER: usize = 8;
    /// Response: unencrypted ephemeral public key.
    pub const RESP_EPHEMERAL: usize = 12;
    /// Response: encrypted empty payload (16-byte tag).
    pub const RESP_EMPTY: usize = 44;
    /// Response: mac1.
    pub const RESP_MAC1: usize = 60;
    /// Response: mac2.
    pub const RESP_MAC2: usize = 76;
    /// Cookie reply: receiver index.
    pub const COOKIE_RECEIVER: usize = 4;
    /// Cookie reply: 24-byte nonce.
    pub const COOKIE_NONCE: usize = 8;
    /// Cookie reply: encrypted cookie (16 + 16 bytes).
    pub const COOKIE_ENCRYPTED: usize = 32;
    /// Transport: receiver index.
    pub const DATA_RECEIVER: usize = 4;
    /// Transport: little-endian 64-bit counter.
    pub const DATA_COUNTER: usize = 8;
    /// Transport: encrypted, padded payload followed by the tag.
    pub const DATA_PAYLOAD: usize = 16;
}

// ---------------------------------------------------------------------------
// Handshake initiation

/// View of a handshake initiation (type 1, 148 bytes).
#[derive(Debug, Clone)]
pub struct HandshakeInitiation<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> HandshakeInitiation<T> {
    /// Wraps without checks (accessors still never panic).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    /// Wraps after checking type and exact length.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_fixed(
            buffer.as_ref(),
            MessageType::HandshakeInitiation,
            HANDSHAKE_INITIATION_LEN,
        )?;
        Ok(Self { buffer })
    }
    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// All bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// Sender index.
    pub fn sender_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::INIT_SENDER)
    }
    /// Unencrypted ephemeral.
    pub fn ephemeral(&self) -> [u8; 32] {
        read_array(self.buffer.as_ref(), field::INIT_EPHEMERAL)
    }
    /// Encrypted static key.
    pub fn encrypted_static(&self) -> [u8; 48] {
        read_array(self.buffer.as_ref(), field::INIT_STATIC)
    }
    /// Encrypted timestamp.
    pub fn encrypted_timestamp(&self) -> [u8; 28] {
        read_array(self.buffer.as_ref(), field::INIT_TIMESTAMP)
    }
    /// mac1.
    pub fn mac1(&self) -> [u8; 16] {
        read_array(self.buffer.as_ref(), field::INIT_MAC1)
    }
    /// mac2.
    pub fn mac2(&self) -> [u8; 16] {
        read_array(self.buffer.as_ref(), field::INIT_MAC2)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> HandshakeInitiation<T> {
    /// Writes the type header.
    pub fn set_header(&mut self) {
        write_header(self.buffer.as_mut(), MessageType::HandshakeInitiation);
    }
    /// Sets the sender index.
    pub fn set_sender_index(&mut self, v: u32) {
        write_bytes(self.buffer.as_mut(), field::INIT_SENDER, &v.to_le_bytes());
    }
    /// Sets the ephemeral.
    pub fn set_ephemeral(&mut self, v: &[u8; 32]) {
        write_bytes(self.buffer.as_mut(), field::INIT_EPHEMERAL, v);
    }
    /// Sets the encrypted static.
    pub fn set_encrypted_static(&mut self, v: &[u8; 48]) {
        write_bytes(self.buffer.as_mut(), field::INIT_STATIC, v);
    }
    /// Sets the encrypted timestamp.
    pub fn set_encrypted_timestamp(&mut self, v: &[u8; 28]) {
        write_bytes(self.buffer.as_mut(), field::INIT_TIMESTAMP, v);
    }
    /// Sets mac1.
    pub fn set_mac1(&mut self, v: &[u8; 16]) {
        write_bytes(self.buffer.as_mut(), field::INIT_MAC1, v);
    }
    /// Sets mac2.
    pub fn set_mac2(&mut self, v: &[u8; 16]) {
        write_bytes(self.buffer.as_mut(), field::INIT_MAC2, v);
    }
}

/// Parsed handshake initiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeInitiationRepr {
    /// Sender index.
    pub sender_index: u32,
    /// Ephemeral public key.
    pub ephemeral: [u8; 32],
    /// Encrypted static public key.
    pub encrypted_static: [u8; 48],
    /// Encrypted TAI64N timestamp.
    pub encrypted_timestamp: [u8; 28],
    /// mac1.
    pub mac1: [u8; 16],
    /// mac2 (zero when no cookie).
    pub mac2: [u8; 16],
}

impl HandshakeInitiationRepr {
    /// Parses a checked view.
    pub fn parse<T: AsRef<[u8]>>(p: &HandshakeInitiation<T>) -> Result<Self, WireError> {
        check_fixed(
            p.as_bytes(),
            MessageType::HandshakeInitiation,
            HANDSHAKE_INITIATION_LEN,
        )?;
        Ok(Self {
            sender_index: p.sender_index(),
            ephemeral: p.ephemeral(),
            encrypted_static: p.encrypted_static(),
            encrypted_timestamp: p.encrypted_timestamp(),
            mac1: p.mac1(),
            mac2: p.mac2(),
        })
    }
    /// Bytes needed to emit.
    pub const fn buffer_len(&self) -> usize {
        HANDSHAKE_INITIATION_LEN
    }
    /// Writes into `buf[..148]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        ensure_len(buf, HANDSHAKE_INITIATION_LEN)?;
        let mut p = HandshakeInitiation::new_unchecked(&mut buf[..HANDSHAKE_INITIATION_LEN]);
        p.set_header();
        p.set_sender_index(self.sender_index);
        p.set_ephemeral(&self.ephemeral);
        p.set_encrypted_static(&self.encrypted_static);
        p.set_encrypted_timestamp(&self.encrypted_timestamp);
        p.set_mac1(&self.mac1);
        p.set_mac2(&self.mac2);
        Ok(HANDSHAKE_INITIATION_LEN)
    }
}

// ---------------------------------------------------------------------------
// Handshake response

/// View of a handshake response (type 2, 92 bytes).
#[derive(Debug, Clone)]
pub struct HandshakeResponse<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> HandshakeResponse<T> {
    /// Wraps without checks (accessors still never panic).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    /// Wraps after checking type and exact length.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_fixed(
            buffer.as_ref(),
            MessageType::HandshakeResponse,
            HANDSHAKE_RESPONSE_LEN,
        )?;
        Ok(Self { buffer })
    }
    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// All bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// Sender index.
    pub fn sender_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::RESP_SENDER)
    }
    /// Receiver index.
    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::RESP_RECEIVER)
    }
    /// Unencrypted ephemeral.
    pub fn ephemeral(&self) -> [u8; 32] {
        read_array(self.buffer.as_ref(), field::RESP_EPHEMERAL)
    }
    /// Encrypted empty payload (the tag).
    pub fn encrypted_nothing(&self) -> [u8; 16] {
        read_array(self.buffer.as_ref(), field::RESP_EMPTY)
    }
    /// mac1.
    pub fn mac1(&self) -> [u8; 16] {
        read_array(self.buffer.as_ref(), field::RESP_MAC1)
    }
    /// mac2.
    pub fn mac2(&self) -> [u8; 16] {
        read_array(self.buffer.as_ref(), field::RESP_MAC2)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> HandshakeResponse<T> {
    /// Writes the type header.
    pub fn set_header(&mut self) {
        write_header(self.buffer.as_mut(), MessageType::HandshakeResponse);
    }
    /// Sets the sender index.
    pub fn set_sender_index(&mut self, v: u32) {
        write_bytes(self.buffer.as_mut(), field::RESP_SENDER, &v.to_le_bytes());
    }
    /// Sets the receiver index.
    pub fn set_receiver_index(&mut self, v: u32) {
        write_bytes(self.buffer.as_mut(), field::RESP_RECEIVER, &v.to_le_bytes());
    }
    /// Sets the ephemeral.
    pub fn set_ephemeral(&mut self, v: &[u8; 32]) {
        write_bytes(self.buffer.as_mut(), field::RESP_EPHEMERAL, v);
    }
    /// Sets the encrypted empty payload.
    pub fn set_encrypted_nothing(&mut self, v: &[u8; 16]) {
        write_bytes(self.buffer.as_mut(), field::RESP_EMPTY, v);
    }
    /// Sets mac1.
    pub fn set_mac1(&mut self, v: &[u8; 16]) {
        write_bytes(self.buffer.as_mut(), field::RESP_MAC1, v);
    }
    /// Sets mac2.
    pub fn set_mac2(&mut self, v: &[u8; 16]) {
        write_bytes(self.buffer.as_mut(), field::RESP_MAC2, v);
    }
}

/// Parsed handshake response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponseRepr {
    /// Sender index.
    pub sender_index: u32,
    /// Receiver index.
    pub receiver_index: u32,
    /// Ephemeral public key.
    pub ephemeral: [u8; 32],
    /// Encrypted empty payload.
    pub encrypted_nothing: [u8; 16],
    /// mac1.
    pub mac1: [u8; 16],
    /// mac2.
    pub mac2: [u8; 16],
}

impl HandshakeResponseRepr {
    /// Parses a checked view.
    pub fn parse<T: AsRef<[u8]>>(p: &HandshakeResponse<T>) -> Result<Self, WireError> {
        check_fixed(
            p.as_bytes(),
            MessageType::HandshakeResponse,
            HANDSHAKE_RESPONSE_LEN,
        )?;
        Ok(Self {
            sender_index: p.sender_index(),
            receiver_index: p.receiver_index(),
            ephemeral: p.ephemeral(),
            encrypted_nothing: p.encrypted_nothing(),
            mac1: p.mac1(),
            mac2: p.mac2(),
        })
    }
    /// Bytes needed to emit.
    pub const fn buffer_len(&self) -> usize {
        HANDSHAKE_RESPONSE_LEN
    }
    /// Writes into `buf[..92]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        ensure_len(buf, HANDSHAKE_RESPONSE_LEN)?;
        let mut p = HandshakeResponse::new_unchecked(&mut buf[..HANDSHAKE_RESPONSE_LEN]);
        p.set_header();
        p.set_sender_index(self.sender_index);
        p.set_receiver_index(self.receiver_index);
        p.set_ephemeral(&self.ephemeral);
        p.set_encrypted_nothing(&self.encrypted_nothing);
        p.set_mac1(&self.mac1);
        p.set_mac2(&self.mac2);
        Ok(HANDSHAKE_RESPONSE_LEN)
    }
}

// ---------------------------------------------------------------------------
// Cookie reply

/// View of a cookie reply (type 3, 64 bytes).
#[derive(Debug, Clone)]
pub struct CookieReply<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> CookieReply<T> {
    /// Wraps without checks (accessors still never panic).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    /// Wraps after checking type and exact length.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_fixed(buffer.as_ref(), MessageType::CookieReply, COOKIE_REPLY_LEN)?;
        Ok(Self { buffer })
    }
    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// All bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// Receiver index.
    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::COOKIE_RECEIVER)
    }
    /// Nonce.
    pub fn nonce(&self) -> [u8; 24] {
        read_array(self.buffer.as_ref(), field::COOKIE_NONCE)
    }
    /// Encrypted cookie.
    pub fn encrypted_cookie(&self) -> [u8; 32] {
        read_array(self.buffer.as_ref(), field::COOKIE_ENCRYPTED)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> CookieReply<T> {
    /// Writes the type header.
    pub fn set_header(&mut self) {
        write_header(self.buffer.as_mut(), MessageType::CookieReply);
    }
    /// Sets the receiver index.
    pub fn set_receiver_index(&mut self, v: u32) {
        write_bytes(
            self.buffer.as_mut(),
            field::COOKIE_RECEIVER,
            &v.to_le_bytes(),
        );
    }
    /// Sets the nonce.
    pub fn set_nonce(&mut self, v: &[u8; 24]) {
        write_bytes(self.buffer.as_mut(), field::COOKIE_NONCE, v);
    }
    /// Sets the encrypted cookie.
    pub fn set_encrypted_cookie(&mut self, v: &[u8; 32]) {
        write_bytes(self.buffer.as_mut(), field::COOKIE_ENCRYPTED, v);
    }
}

/// Parsed cookie reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieReplyRepr {
    /// Receiver index.
    pub receiver_index: u32,
    /// Nonce.
    pub nonce: [u8; 24],
    /// Encrypted cookie.
    pub encrypted_cookie: [u8; 32],
}

impl CookieReplyRepr {
    /// Parses a checked view.
    pub fn parse<T: AsRef<[u8]>>(p: &CookieReply<T>) -> Result<Self, WireError> {
        check_fixed(p.as_bytes(), MessageType::CookieReply, COOKIE_REPLY_LEN)?;
        Ok(Self {
            receiver_index: p.receiver_index(),
            nonce: p.nonce(),
            encrypted_cookie: p.encrypted_cookie(),
        })
    }
    /// Bytes needed to emit.
    pub const fn buffer_len(&self) -> usize {
        COOKIE_REPLY_LEN
    }
    /// Writes into `buf[..64]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        ensure_len(buf, COOKIE_REPLY_LEN)?;
        let mut p = CookieReply::new_unchecked(&mut buf[..COOKIE_REPLY_LEN]);
        p.set_header();
        p.set_receiver_index(self.receiver_index);
        p.set_nonce(&self.nonce);
        p.set_encrypted_cookie(&self.encrypted_cookie);
        Ok(COOKIE_REPLY_LEN)
    }
}

// ---------------------------------------------------------------------------
// Transport data

/// View of a transport data message (type 4, at least 32 bytes).
#[derive(Debug, Clone)]
pub struct TransportData<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TransportData<T> {
    /// Wraps without checks (accessors still never panic).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    /// Wraps after checking type and minimum length.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let buf = buffer.as_ref();
        let actual = MessageType::from_header(buf)?;
        if actual != MessageType::TransportData {
            return Err(WireError::WrongType {
                expected: MessageType::TransportData,
                actual,
            });
        }
        if buf.len() < TRANSPORT_MIN_LEN {
            return Err(WireError::TransportTooShort(buf.len()));
        }
        Ok(Self { buffer })
    }
    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// All bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// Receiver index.
    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::DATA_RECEIVER)
    }
    /// Counter (the nonce).
    pub fn counter(&self) -> u64 {
        read_u64(self.buffer.as_ref(), field::DATA_COUNTER)
    }
    /// Encrypted payload including the tag.
    pub fn encrypted_payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(TRANSPORT_HEADER_LEN..)
            .unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TransportData<T> {
    /// Writes the type header.
    pub fn set_header(&mut self) {
        write_header(self.buffer.as_mut(), MessageType::TransportData);
    }
    /// Sets the receiver index.
    pub fn set_receiver_index(&mut self, v: u32) {
        write_bytes(self.buffer.as_mut(), field::DATA_RECEIVER, &v.to_le_bytes());
    }
    /// Sets the counter.
    pub fn set_counter(&mut self, v: u64) {
        write_bytes(self.buffer.as_mut(), field::DATA_COUNTER, &v.to_le_bytes());
    }
    /// Mutable encrypted payload (including the tag).
    pub fn encrypted_payload_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(TRANSPORT_HEADER_LEN..)
            .unwrap_or(&mut [])
    }
}

/// Parsed transport header; the encrypted payload stays in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportDataRepr {
    /// Receiver index.
    pub receiver_index: u32,
    /// Counter.
    pub counter: u64,
    /// Length of the encrypted payload including the 16-byte tag (>= 16).
    pub encrypted_len: usize,
}

impl TransportDataRepr {
    /// Parses a checked view.
    pub fn parse<T: AsRef<[u8]>>(p: &TransportData<T>) -> Result<Self, WireError> {
        let len = p.as_bytes().len();
        if len < TRANSPORT_MIN_LEN {
            return Err(WireError::TransportTooShort(len));
        }
        Ok(Self {
            receiver_index: p.receiver_index(),
            counter: p.counter(),
            encrypted_len: len - TRANSPORT_HEADER_LEN,
        })
    }
    /// Total message length.
    pub const fn buffer_len(&self) -> usize {
        TRANSPORT_HEADER_LEN + self.encrypted_len
    }
    /// Writes the 16-byte header into `buf` (the payload is the caller's).
    pub fn emit_header(&self, buf: &mut [u8]) -> Result<(), WireError> {
        ensure_len(buf, TRANSPORT_HEADER_LEN)?;
        let mut p = TransportData::new_unchecked(&mut buf[..TRANSPORT_HEADER_LEN]);
        p.set_header();
        p.set_receiver_index(self.receiver_index);
        p.set_counter(self.counter);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Any message

/// A checked view of any WireGuard message.
#[derive(Debug, Clone)]
pub enum Message<'a> {
    /// Type 1.
    HandshakeInitiation(HandshakeInitiation<&'a [u8]>),
    /// Type 2.
    HandshakeResponse(HandshakeResponse<&'a [u8]>),
    /// Type 3.
    CookieReply(CookieReply<&'a [u8]>),
    /// Type 4.
    TransportData(TransportData<&'a [u8]>),
}

impl<'a> Message<'a> {
    /// Classifies and checks a datagram. Never panics.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        Ok(match MessageType::from_header(buf)? {
            MessageType::HandshakeInitiation => {
                Message::HandshakeInitiation(HandshakeInitiation::new_checked(buf)?)
            }
            MessageType::HandshakeResponse => {
                Message::HandshakeResponse(HandshakeResponse::new_checked(buf)?)
            }
            MessageType::CookieReply => Message::CookieReply(CookieReply::new_checked(buf)?),
            MessageType::TransportData => Message::TransportData(TransportData::new_checked(buf)?),
        })
    }

    /// The message type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::HandshakeInitiation(_) => MessageType::HandshakeInitiation,
            Message::HandshakeResponse(_) => MessageType::HandshakeResponse,
            Message::CookieReply(_) => MessageType::CookieReply,
            Message::TransportData(_) => MessageType::TransportData,
        }
    }
}

/// A parsed message of any type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageRepr {
    /// Type 1.
    HandshakeInitiation(HandshakeInitiationRepr),
    /// Type 2.
    HandshakeResponse(HandshakeResponseRepr),
    /// Type 3.
    CookieReply(CookieReplyRepr),
    /// Type 4 (header only).
    TransportData(TransportDataRepr),
}

impl MessageRepr {
    /// Parses a checked message.
    pub fn parse(msg: &Message<'_>) -> Result<Self, WireError> {
        Ok(match msg {
            Message::HandshakeInitiation(p) => {
                MessageRepr::HandshakeInitiation(HandshakeInitiationRepr::parse(p)?)
            }
            Message::HandshakeResponse(p) => {
                MessageRepr::HandshakeResponse(HandshakeResponseRepr::parse(p)?)
            }
            Message::CookieReply(p) => MessageRepr::CookieReply(CookieReplyRepr::parse(p)?),
            Message::TransportData(p) => MessageRepr::TransportData(TransportDataRepr::parse(p)?),
        })
    }
}
