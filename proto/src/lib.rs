//! Sans-IO WireGuard protocol core of netman.
//!
//! This crate implements the WireGuard protocol (Noise_IKpsk2 handshake,
//! cookies, transport data, timers, cryptokey routing) as a pure state
//! machine: no sockets, no async runtime, no clock reads and no OS
//! randomness. Time (`now: Instant`) is passed into every call, randomness
//! comes from a 32-byte seed given at construction (ChaCha20 CSPRNG), and
//! wall-clock time for TAI64N timestamps is derived from an
//! `(Instant, SystemTime)` anchor. It speaks the standard wire format and
//! interoperates with wireguard-go, the kernel and boringtun (see
//! `tests/interop_boringtun.rs`).
//!
//! # Driving a [`Device`]
//!
//! ```no_run
//! use std::time::{Instant, SystemTime};
//! use netman_proto::*;
//!
//! # fn os_random_32() -> [u8; 32] { [0; 32] }
//! let now = Instant::now();
//! let key = PrivateKey::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
//! let mut dev = Device::new(key, os_random_32(), now, SystemTime::now());
//! let mut peer = PeerConfig::new("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".parse().unwrap());
//! peer.endpoint = Some("192.0.2.1:51820".parse().unwrap());
//! peer.allowed_ips = vec!["10.0.0.0/24".parse().unwrap()];
//! peer.persistent_keepalive = Some(25);
//! let id = dev.add_peer(peer).unwrap();
//!
//! // TUN -> network: read the IP packet at offset TUN_HEADROOM of a buffer
//! // that has TUN_TAILROOM spare bytes behind it, then encrypt in place.
//! let mut buf = vec![0u8; 65536];
//! # let n = 0;
//! match dev.handle_tun_packet(&mut buf, n, Instant::now()) {
//!     TunResult::Send { dst, len } => { /* udp.send_to(&buf[..len], dst) */ }
//!     TunResult::Queued { .. } => { /* staged; a handshake was started */ }
//!     TunResult::Drop(reason) => { /* counted in dev.drop_counters() */ }
//! }
//!
//! // Network -> TUN: decrypt in place.
//! # let (src, len) = ("192.0.2.1:51820".parse().unwrap(), 0);
//! match dev.handle_datagram(src, &mut buf, len, Instant::now()) {
//!     NetResult::ToTun { offset, len, .. } => { /* tun.write(&buf[offset..offset + len]) */ }
//!     NetResult::Reply { dst, len } => { /* udp.send_to(&buf[..len], dst) */ }
//!     NetResult::Done | NetResult::Drop(_) => {}
//! }
//!
//! // After every batch: flush queued datagrams, events and timers.
//! while let Some((dst, len)) = dev.poll_transmit(&mut buf) { /* send buf[..len] to dst */ }
//! while let Some(event) = dev.poll_event() { /* log / metrics */ }
//! if let Some(deadline) = dev.poll_timeout() { /* sleep until deadline, then: */ }
//! dev.handle_timeout(Instant::now());
//! # let _ = id;
//! ```
//!
//! ## Calls
//!
//! * Construction and identity: [`Device::new`]`(private_key, seed, now,
//!   wall)`, [`Device::public_key`], [`Device::set_wall_clock`],
//!   [`Device::set_mtu`] (caps padding like wireguard-go).
//! * Peers: [`Device::add_peer`]`(PeerConfig) -> Result<PeerId, _>`,
//!   [`Device::update_peer`]`(id, PeerConfig)` (same public key: sessions,
//!   handshake state and statistics are kept, so re-applying an unchanged
//!   configuration never causes a handshake; a different key resets the peer),
//!   [`Device::remove_peer`] (keys are zeroized), [`Device::peer_by_public_key`],
//!   [`Device::peers`], [`Device::peer_config`], [`Device::allowed_ips_of`],
//!   [`Device::route`], [`Device::initiate_handshake`].
//! * Hot path (no allocation, no locking, one index-table lookup or one
//!   trie walk per packet): [`Device::handle_tun_packet`] and
//!   [`Device::handle_datagram`]. Batching is the caller's business: call
//!   them in a loop.
//! * Everything else is polled: [`Device::poll_transmit`] (initiations,
//!   keepalives, staged packets flushed after a handshake),
//!   [`Device::poll_event`] ([`Event`]), [`Device::poll_timeout`] and
//!   [`Device::handle_timeout`].
//! * Status: [`Device::peer_stats`] ([`PeerStats`]: endpoint, rx/tx bytes,
//!   last handshake as wall-clock time, handshake attempts and completions,
//!   persistent keepalive) and [`Device::drop_counters`] (one counter per
//!   [`DropReason`]).
//! * Load: the device counts handshake messages per second; above
//!   [`Device::set_load_threshold`] (default
//!   [`consts::DEFAULT_UNDER_LOAD_THRESHOLD`]) it is "under load" for a
//!   second: handshakes without a valid mac2 get a cookie reply, and those
//!   with one are rate limited per source address (token bucket, 20/s, burst
//!   5, as wireguard-go). [`Device::set_under_load`] forces the state.
//! * Handshakes off the hot path: [`Device::handle_datagram`] runs the
//!   checks above and the first Diffie-Hellman of an initiation inline. A
//!   caller that wants handshake work away from its transport path
//!   classifies datagrams with [`is_handshake`], runs a [`HandshakeGate`]
//!   (built from the same private key; it has its own load detector, rate
//!   limiter and cookie secret, and [`HandshakeGate::note_backlog`] takes
//!   the caller's queue depth) on another thread, and hands what passes
//!   ([`GatedHandshake`]) to [`Device::handle_gated`], which costs a hash
//!   and an AEAD unless the message is authenticated. See [`gate`].
//!
//! ## Buffers
//!
//! `handle_tun_packet` needs [`TUN_HEADROOM`] (16) bytes in front of the
//! packet and up to [`TUN_TAILROOM`] (31) behind it ([`tun_buffer_len`]).
//! `handle_datagram` decrypts in place (the inner packet starts at
//! [`TRANSPORT_HEADER_LEN`]) and writes handshake replies into the same
//! buffer (never longer than the message answered). `poll_transmit` needs a
//! buffer as large as the largest datagram: `MTU + TUN_HEADROOM + TUN_TAILROOM`.
//!
//! ## Protocol behaviour
//!
//! Timers, keypair rotation (current/previous/next) and limits follow the
//! kernel and wireguard-go: REKEY_AFTER_TIME 120 s (initiator rekeys on
//! send), REJECT_AFTER_TIME 180 s, REKEY_TIMEOUT 5 s + up to 334 ms jitter,
//! retries until MAX_TIMER_HANDSHAKES, KEEPALIVE_TIMEOUT 10 s, zeroing of
//! all key material 540 s after the last session was derived, 128 staged
//! packets per peer, an 8128-counter replay window (RFC 6479), padding to 16
//! bytes, endpoint roaming to the source of the last authenticated datagram,
//! and the source-address check on decrypted packets. One deliberate
//! difference: the "one initiation per REKEY_TIMEOUT" limit includes the
//! retransmission jitter, so peers with synchronized traffic cannot keep
//! re-initiating at the same instant after crossed handshakes.
//!
//! ## Modules
//!
//! [`wire`] has checked views and reprs for the four message types,
//! [`allowed_ips`] the longest-prefix-match table, [`replay`] the replay
//! window, [`crypto`] and [`noise`] the primitives and handshake constants,
//! [`keys`] the key types (secret keys have no `Debug`/`Display`, compare
//! in constant time and are zeroized on drop; base64 helpers match `wg`),
//! and `fuzzing` (only with the crate feature `fuzzing`, off by default) the
//! bodies of the cargo-fuzz targets.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod allowed_ips;
mod api;
pub mod consts;
mod cookie;
pub mod crypto;
mod device;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gate;
mod hash;
pub mod ip;
pub mod keys;
pub mod noise;
mod ratelimit;
pub mod replay;
mod session;
pub mod tai64n;
pub mod wire;

pub use allowed_ips::{AllowedIps, IpPrefix, PrefixError};
pub use api::{
    DropCounters, DropReason, Event, NetResult, PeerConfig, PeerId, PeerStats, TunResult,
};
pub use consts::{
    MAX_HANDSHAKE_LEN, TRANSPORT_HEADER_LEN, TRANSPORT_OVERHEAD, TUN_HEADROOM, TUN_TAILROOM,
    tun_buffer_len,
};
pub use device::{Device, DeviceError};
pub use gate::{GateResult, GatedHandshake, HandshakeGate, is_handshake};
pub use keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
pub use replay::ReplayFilter;
pub use wire::WireError;
