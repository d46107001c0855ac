//! Handshake messages get a bounded queue and a thread of their own, so
//! that a handshake flood cannot starve established sessions (issue 11,
//! item 6; the kernel and wireguard-go do the same).
//!
//! The data plane classifies every received datagram by type and exact
//! length ([`netman_proto::is_handshake`]); transport data stays on the
//! data-plane thread, whole handshake initiations and responses are copied
//! into the queue here ([`Handshakes::stage`], one lock per receive batch)
//! and everything else is dropped and counted by the protocol core right
//! away. A full queue drops (`handshake_queue_full`).
//!
//! The worker thread owns a [`HandshakeGate`] with its own copy of the
//! private key and does the cheap triage before any expensive work: mac1;
//! the load decision (the queue at an eighth full or more, as wireguard-go,
//! or more than 128 handshakes a second); under load a cookie reply
//! instead of anything else (sent by the worker on duplicates of the
//! engine's UDP sockets; 64 bytes, never more than the message answered),
//! and the per-source rate limit for messages with a valid mac2. An
//! initiation that passes costs the worker one Diffie-Hellman (recovering
//! the initiator's static key). What passes goes back to the data plane
//! through a second bounded queue (`handshake_backlog_full` when that one
//! overflows), which takes at most [`GATED_PER_ROUND`] of them per loop
//! iteration, after the transport batch: there an initiation from a key
//! that is no peer, or whose timestamp does not decrypt with the peer's
//! precomputed static-static secret, costs a hash and an AEAD; only an
//! authenticated, fresh initiation (at most 50 a second per peer) gets the
//! response's Diffie-Hellman work. Peer and session state therefore never
//! leave the data-plane thread and need no lock; the worker shares nothing
//! with it but the two queues and the drop counters.
//!
//! The worker runs at a lower priority (nice +10) than the data plane: when
//! the CPU is short, the flood is what waits (and overflows, counted), not
//! the tunnel. It is woken only when it sleeps on an empty queue, and after
//! a batch it lets the queue fill for half a millisecond: under a flood it
//! takes its messages, and sends its cookie replies (`sendmmsg`), in
//! batches instead of costing the data plane a wake-up per message.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use netman_proto::consts::{COOKIE_REPLY_LEN, MAX_HANDSHAKE_LEN};
use netman_proto::{DropReason, GateResult, GatedHandshake, HandshakeGate, PrivateKey};
use socket2::{SockAddr, Socket};

use super::pktio::UdpIo;

/// Handshake messages waiting for the worker (wireguard-go's
/// `QueueHandshakeSize`). About 170 kB, allocated once.
pub const QUEUE_SIZE: usize = 1024;
/// Messages that passed the worker, waiting for the data plane.
const GATED_SIZE: usize = 256;
/// Messages the worker takes from the queue at once.
const WORKER_BATCH: usize = 64;
/// Passed messages the data plane finishes per loop iteration.
pub const GATED_PER_ROUND: usize = 4;
/// Messages staged on the data plane before they are pushed under the lock.
const STAGE_BATCH: usize = 256;
/// The worker's nice value (the data plane's is the process's).
const WORKER_NICE: libc::c_int = 10;
/// After a batch that did not fill up, the worker lets the queue fill for
/// this long before it looks again (instead of being woken for every
/// message): under a flood it wakes a few thousand times a second at most,
/// and takes its messages, and sends its cookie replies, in batches.
const WORKER_PACE: Duration = Duration::from_micros(500);

/// Labels of the drops counted here (the gate's own reasons come from
/// [`DropReason::as_str`]).
pub const QUEUE_FULL: &str = "handshake_queue_full";
pub const BACKLOG_FULL: &str = "handshake_backlog_full";

#[derive(Clone, Copy)]
struct Job {
    src: SocketAddr,
    len: usize,
    data: [u8; MAX_HANDSHAKE_LEN],
}

/// What the worker answers as: the gate (private key, cookie secrets,
/// load and rate state) and duplicates of the engine's UDP sockets (none
/// over in-memory I/O: cookie replies are then not sent).
pub struct Identity {
    gate: HandshakeGate,
    v4: Option<Socket>,
    v6: Option<Socket>,
}

impl Identity {
    pub fn new<U: UdpIo>(private: &PrivateKey, udp: &U) -> io::Result<Identity> {
        let seed = crate::keys::os_random()?;
        let (v4, v6) = udp.reply_sockets()?;
        Ok(Identity {
            gate: HandshakeGate::new(private.clone(), *seed),
            v4,
            v6,
        })
    }
}

struct State {
    jobs: VecDeque<Job>,
    update: Option<Identity>,
    stop: bool,
    /// The worker sleeps on the condition variable (only then is it woken).
    waiting: bool,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    queue_full: AtomicU64,
    backlog_full: AtomicU64,
    /// The gate's drop counters, indexed like `DropReason::ALL`.
    gate: Vec<AtomicU64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking worker cannot leave the queue inconsistent (plain
        // pushes and pops), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The data plane's side: the queue in, the passed messages out, the
/// worker thread.
pub struct Handshakes {
    shared: Arc<Shared>,
    staged: Vec<Job>,
    gated: Receiver<GatedHandshake>,
    /// Until the worker is spawned: what it will take.
    pending: Option<(Identity, SyncSender<GatedHandshake>)>,
    worker: Option<JoinHandle<()>>,
    /// Signalled by the worker when it passed something (and by the data
    /// plane itself when it left some for the next iteration).
    wake: Arc<OwnedFd>,
    /// Tests: the worker's state when it runs inline.
    #[cfg(test)]
    inline: Work,
}

impl Handshakes {
    /// The queues, and what the worker will need; the thread itself is
    /// started by [`Handshakes::spawn`] (after privileges are dropped:
    /// capabilities are per thread).
    pub fn new(identity: Identity) -> io::Result<Handshakes> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let wake = Arc::new(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        let (tx, rx) = mpsc::sync_channel(GATED_SIZE);
        Ok(Handshakes {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    jobs: VecDeque::with_capacity(QUEUE_SIZE),
                    update: None,
                    stop: false,
                    waiting: false,
                }),
                ready: Condvar::new(),
                queue_full: AtomicU64::new(0),
                backlog_full: AtomicU64::new(0),
                gate: DropReason::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            }),
            staged: Vec::with_capacity(STAGE_BATCH),
            gated: rx,
            pending: Some((identity, tx)),
            worker: None,
            wake,
            #[cfg(test)]
            inline: Work::default(),
        })
    }

    /// Start the worker thread (once).
    pub fn spawn(&mut self) -> io::Result<()> {
        let Some((identity, tx)) = self.pending.take() else {
            return Ok(());
        };
        let shared = self.shared.clone();
        let wake = self.wake.clone();
        let handle = thread::Builder::new()
            .name("handshakes".into())
            .spawn(move || worker(&shared, identity, &tx, wake.as_raw_fd()))?;
        self.worker = Some(handle);
        Ok(())
    }

    /// The descriptor the data plane polls for passed messages.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Queue a whole handshake message (as classified by
    /// `netman_proto::is_handshake`) for the worker; pushed by [`Self::submit`].
    pub fn stage(&mut self, src: SocketAddr, data: &[u8]) {
        let mut job = Job {
            src,
            len: data.len(),
            data: [0; MAX_HANDSHAKE_LEN],
        };
        let Some(dst) = job.data.get_mut(..data.len()) else {
            return; // not a handshake message: the caller classified it wrong
        };
        dst.copy_from_slice(data);
        if self.staged.len() >= STAGE_BATCH {
            self.submit();
        }
        self.staged.push(job);
    }

    /// Push the staged messages to the worker under one lock; what does
    /// not fit is dropped and counted.
    pub fn submit(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let mut dropped = 0u64;
        let wake = {
            let mut st = self.shared.lock();
            for job in self.staged.drain(..) {
                if st.jobs.len() < QUEUE_SIZE {
                    st.jobs.push_back(job);
                } else {
                    dropped += 1;
                }
            }
            st.waiting
        };
        if dropped > 0 {
            self.shared.queue_full.fetch_add(dropped, Ordering::Relaxed);
        }
        if wake {
            self.shared.ready.notify_one();
        }
    }

    /// Take the wake-up: call before draining with [`Self::next_passed`].
    pub fn ack_wake(&self) {
        let mut v = 0u64;
        // SAFETY: reading 8 bytes into a live u64 from our eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// Come back on the next loop iteration (some passed messages are left).
    pub fn rewake(&self) {
        signal(self.wake.as_raw_fd());
    }

    /// The next message that passed the worker.
    pub fn next_passed(&mut self) -> Option<GatedHandshake> {
        self.gated.try_recv().ok()
    }

    /// Answer as `identity` from now on (new private key or sockets).
    pub fn replace(&mut self, identity: Identity) {
        if let Some((_, tx)) = self.pending.take() {
            self.pending = Some((identity, tx));
            return;
        }
        self.shared.lock().update = Some(identity);
        self.shared.ready.notify_one();
    }

    /// Tests: do the worker's work on this thread, now, instead of
    /// spawning it (deterministic, no waiting on another thread).
    #[cfg(test)]
    pub fn work_inline(&mut self, now: Instant) {
        let Some((id, tx)) = self.pending.as_mut() else {
            return;
        };
        let w = &mut self.inline;
        loop {
            let depth = w.take(&mut self.shared.lock(), id);
            if w.batch.is_empty() {
                return;
            }
            w.process(&self.shared, id, tx, self.wake.as_raw_fd(), depth, now);
        }
    }

    /// Drops counted by the worker and the queues, by label.
    pub fn drop_counts(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<(&'static str, u64)> = DropReason::ALL
            .iter()
            .zip(&self.shared.gate)
            .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
            .collect();
        v.push((QUEUE_FULL, self.shared.queue_full.load(Ordering::Relaxed)));
        v.push((
            BACKLOG_FULL,
            self.shared.backlog_full.load(Ordering::Relaxed),
        ));
        v
    }
}

impl Drop for Handshakes {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.ready.notify_all();
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

fn signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a live u64 to an eventfd.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

fn worker(shared: &Shared, mut id: Identity, gated: &SyncSender<GatedHandshake>, wake: RawFd) {
    // SAFETY: setpriority on this thread's own id (Linux nice values are
    // per thread).
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WORKER_NICE);
    }
    let mut w = Work::default();
    loop {
        let depth = {
            let mut st = shared.lock();
            while st.jobs.is_empty() && st.update.is_none() && !st.stop {
                st.waiting = true;
                st = shared.ready.wait(st).unwrap_or_else(|p| p.into_inner());
                st.waiting = false;
            }
            if st.stop {
                return;
            }
            w.take(&mut st, &mut id)
        };
        if !w.process(shared, &mut id, gated, wake, depth, Instant::now()) {
            return;
        }
        if depth < WORKER_BATCH {
            thread::sleep(WORKER_PACE);
        }
    }
}

/// The worker's batch and what it keeps between batches.
struct Work {
    batch: Vec<Job>,
    replies: Replies,
    /// The gate's drop counters already added to the shared totals.
    published: Vec<u64>,
}

impl Default for Work {
    fn default() -> Self {
        Work {
            batch: Vec::with_capacity(WORKER_BATCH),
            replies: Replies::default(),
            published: vec![0u64; DropReason::ALL.len()],
        }
    }
}

impl Work {
    /// Under the lock: take a new identity if one came, and the next batch.
    /// Returns the queue depth before.
    fn take(&mut self, st: &mut State, id: &mut Identity) -> usize {
        if let Some(u) = st.update.take() {
            *id = u;
            self.published.iter_mut().for_each(|p| *p = 0);
        }
        let depth = st.jobs.len();
        let n = depth.min(WORKER_BATCH);
        self.batch.extend(st.jobs.drain(..n));
        depth
    }

    /// Triage the batch (see the module comment). Returns false when the
    /// data plane is gone.
    fn process(
        &mut self,
        shared: &Shared,
        id: &mut Identity,
        gated: &SyncSender<GatedHandshake>,
        wake: RawFd,
        depth: usize,
        now: Instant,
    ) -> bool {
        id.gate.note_backlog(depth, QUEUE_SIZE, now);
        let mut passed = false;
        for mut job in self.batch.drain(..) {
            match id.gate.process(job.src, &mut job.data, job.len, now) {
                GateResult::Reply { dst, len } if len <= job.len => {
                    if let Some(reply) = job.data.get(..len) {
                        self.replies.push(dst, reply);
                    }
                }
                GateResult::Reply { .. } | GateResult::Drop(_) => {}
                GateResult::Pass(msg) => match gated.try_send(msg) {
                    Ok(()) => passed = true,
                    Err(TrySendError::Full(_)) => {
                        shared.backlog_full.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                },
            }
        }
        self.replies.send(id);
        if passed {
            signal(wake);
        }
        for (((_, count), seen), total) in id
            .gate
            .drop_counters()
            .iter()
            .zip(self.published.iter_mut())
            .zip(&shared.gate)
        {
            if count > *seen {
                total.fetch_add(count - *seen, Ordering::Relaxed);
                *seen = count;
            }
        }
        true
    }
}

/// Cookie replies of one batch, sent with one `sendmmsg` per socket.
#[derive(Default)]
struct Replies {
    v4: Vec<(SockAddr, [u8; COOKIE_REPLY_LEN])>,
    v6: Vec<(SockAddr, [u8; COOKIE_REPLY_LEN])>,
}

impl Replies {
    fn push(&mut self, dst: SocketAddr, reply: &[u8]) {
        let mut data = [0u8; COOKIE_REPLY_LEN];
        let Some(d) = data.get_mut(..reply.len()) else {
            return; // only cookie replies come here
        };
        d.copy_from_slice(reply);
        let list = if dst.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        list.push((SockAddr::from(dst), data));
    }

    fn send(&mut self, id: &Identity) {
        if let Some(s) = &id.v4 {
            send_all(s, &self.v4);
        }
        if let Some(s) = &id.v6 {
            send_all(s, &self.v6);
        }
        self.v4.clear();
        self.v6.clear();
    }
}

/// Best effort: a cookie reply the socket refuses (buffer full) is not retried.
fn send_all(sock: &Socket, msgs: &[(SockAddr, [u8; COOKIE_REPLY_LEN])]) {
    if msgs.is_empty() {
        return;
    }
    let mut iovs: Vec<libc::iovec> = msgs
        .iter()
        .map(|(_, d)| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = msgs
        .iter()
        .zip(iovs.iter_mut())
        .map(|((addr, _), iov)| {
            // SAFETY: an all-zero msghdr is valid (no control data, no flags).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = addr.len();
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let mut done = 0;
    while done < hdrs.len() {
        let rest = &mut hdrs[done..];
        // SAFETY: every header points at a live address, iovec and buffer
        // (`msgs`, `iovs`), all outliving the call.
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                rest.as_mut_ptr(),
                rest.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            return;
        }
        done += n as usize;
    }
}
