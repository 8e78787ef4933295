//! [`FaultProxy`]: a loopback TCP proxy in front of any server, whose faults
//! a test scripts: added latency, a bandwidth limit, a blackhole (accept,
//! never answer), connection resets, a cut after N bytes in either
//! direction, and "deliver the request, drop the reply" (the ambiguous
//! commit). Seeded and replayable like [`FlakyStore`](crate::FlakyStore).
//!
//! [`FlakyStore`](crate::FlakyStore) injects faults at the trait: it decides
//! what a call returns. The proxy injects them on the wire, where real
//! backends break: the client library sees a slow socket, a reset, a reply
//! that never comes, and the server may well have applied the write whose
//! reply was lost. Point a backend's client at [`FaultProxy::addr`] instead
//! of the server:
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//!
//! use task_testkit::proxy::{Direction, FaultProxy};
//!
//! # async fn demo(server: SocketAddr) -> std::io::Result<()> {
//! let proxy = FaultProxy::start(server).await?;
//! let url = format!("redis://{}/", proxy.addr()); // connect the store here
//!
//! proxy.set_latency(Duration::from_millis(20)); // every chunk, both ways
//! proxy.drop_reply_to("task:42"); // the next request naming task:42 is
//!                                 // delivered; its reply is dropped and the
//!                                 // connection reset
//! proxy.cut_after(Direction::ToClient, 1_000); // reset after 1,000 more bytes
//! proxy.set_blackhole(true); // swallow everything, answer nothing
//! proxy.heal(); // no faults; blackholed connections are reset
//! # drop(url);
//! # Ok(())
//! # }
//! ```
//!
//! The proxy knows nothing of the protocol it carries: it forwards bytes, in
//! the chunks it reads them in. Faults that must hit a given request are
//! armed by a byte pattern ([`drop_reply_to`](FaultProxy::drop_reply_to));
//! cuts are counted in bytes, so they do not depend on how the bytes were
//! chunked.
//!
//! # Determinism
//!
//! The only random choice is [`random_cuts`](FaultProxy::random_cuts): for
//! each connection, in the order they are accepted, whether it is cut and
//! after how many bytes in which direction, drawn from one RNG seeded by
//! [`FaultProxy::start_with_seed`] (or, for [`FaultProxy::start`], by the
//! `FAULT_PROXY_SEED` environment variable when set, otherwise at random).
//! The seed is printed when the proxy starts; run again with
//! `FAULT_PROXY_SEED=<seed>` to replay the same plan. Each reset is logged in
//! [`ProxyStats::resets`] with its cause and byte counts.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The environment variable that seeds [`FaultProxy::start`], to replay a
/// run.
pub const PROXY_SEED_ENV: &str = "FAULT_PROXY_SEED";

/// Which way bytes flow through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the server: requests.
    ToServer,
    /// From the server to the client: replies.
    ToClient,
}

/// Why the proxy reset a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetCause {
    /// [`FaultProxy::reset_all`].
    ResetAll,
    /// A [`FaultProxy::cut_after`] ran out.
    Cut(Direction),
    /// The connection's cut drawn by [`FaultProxy::random_cuts`].
    RandomCut(Direction),
    /// A reply was dropped after its request was delivered
    /// ([`FaultProxy::drop_next_reply`], [`FaultProxy::drop_reply_to`]).
    DroppedReply,
    /// The connection had bytes swallowed by the blackhole, which was then
    /// lifted: its stream can no longer be trusted.
    Healed,
    /// The server could not be reached.
    Upstream,
    /// The proxy was dropped.
    Stopped,
}

/// A reset, as logged in [`ProxyStats::resets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetEvent {
    /// The connection, numbered from 0 in the order they were accepted.
    pub connection: u64,
    /// Why it was reset.
    pub cause: ResetCause,
    /// Bytes forwarded to the server on it before the reset.
    pub to_server: u64,
    /// Bytes forwarded to the client on it before the reset.
    pub to_client: u64,
}

/// What the proxy has done so far, see [`FaultProxy::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Bytes forwarded to the server.
    pub to_server: u64,
    /// Bytes forwarded to the client.
    pub to_client: u64,
    /// Bytes swallowed by the blackhole, both ways.
    pub swallowed: u64,
    /// Replies dropped after their request was delivered.
    pub dropped_replies: u64,
    /// Every reset the proxy made, in order.
    pub resets: Vec<ResetEvent>,
}

/// A plan of random cuts, see [`FaultProxy::random_cuts`]: each connection
/// accepted is cut with `probability`, in a direction drawn at random, after
/// a number of bytes drawn from that direction's range; at most `at_most`
/// connections are cut, after which connections live.
///
/// ```
/// use task_testkit::proxy::RandomCuts;
///
/// // Requests are large and replies small: cut each where it hurts.
/// let plan = RandomCuts::new(1.0, 1 << 10..1 << 20)
///     .to_client(64..16 << 10)
///     .at_most(40);
/// # drop(plan);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RandomCuts {
    /// The chance that a connection is cut (clamped into 0..=1).
    pub probability: f64,
    /// The bytes after which a connection cut going to the server is cut.
    pub to_server: Range<u64>,
    /// The bytes after which a connection cut going to the client is cut.
    pub to_client: Range<u64>,
    /// At most this many connections are cut; `None`: no limit.
    pub at_most: Option<u64>,
}

impl RandomCuts {
    /// Cuts with `probability`, after a number of bytes drawn from `bytes`
    /// either way, with no limit.
    pub fn new(probability: f64, bytes: Range<u64>) -> Self {
        Self {
            probability,
            to_server: bytes.clone(),
            to_client: bytes,
            at_most: None,
        }
    }

    /// Draws the cuts going to the server from this range.
    pub fn to_server(mut self, bytes: Range<u64>) -> Self {
        self.to_server = bytes;
        self
    }

    /// Draws the cuts going to the client from this range.
    pub fn to_client(mut self, bytes: Range<u64>) -> Self {
        self.to_client = bytes;
        self
    }

    /// Cuts at most `n` connections.
    pub fn at_most(mut self, n: u64) -> Self {
        self.at_most = Some(n);
        self
    }
}

mod wire;

use wire::Shared;

/// A loopback TCP proxy in front of a server, with scripted faults. See the
/// [module docs](self).
///
/// Faults are set through `&self`, so the proxy can be shared with the code
/// under test. Dropping the proxy stops it and resets every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free loopback port, seeded from the
    /// `FAULT_PROXY_SEED` environment variable when it holds a number,
    /// otherwise at random. The seed is printed (and kept in
    /// [`seed`](Self::seed)) for replay.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let seed = std::env::var(PROXY_SEED_ENV)
            .ok()
            .and_then(|seed| seed.trim().parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        Self::start_with_seed(upstream, seed).await
    }

    /// Starts a proxy to `upstream` whose random choices come from `seed`.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start_with_seed(upstream: SocketAddr, seed: u64) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        eprintln!(
            "FaultProxy {addr} -> {upstream}, seed: {seed} (replay with {PROXY_SEED_ENV}={seed})"
        );
        let shared = Arc::new(Shared::new(upstream, seed));
        let accept = tokio::spawn(wire::accept_loop(listener, Arc::clone(&shared)));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// The proxy's address: connect clients here.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The seed of the proxy's RNG.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// Adds this latency to every chunk forwarded, both ways (zero: none).
    pub fn set_latency(&self, latency: Duration) -> &Self {
        self.shared.plan().latency = latency;
        self
    }

    /// Limits each direction of each connection to this many bytes a second
    /// (`None`: no limit).
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) -> &Self {
        self.shared.plan().bandwidth = bytes_per_second;
        self
    }

    /// Turns the blackhole on or off. While it is on, connections are
    /// accepted and everything sent on them, either way, is swallowed: the
    /// server never sees a request, the client never gets a reply, and
    /// nothing is closed. Turning it off resets every connection that had
    /// bytes swallowed (their streams lost bytes); new connections work.
    pub fn set_blackhole(&self, on: bool) -> &Self {
        let mut plan = self.shared.plan();
        plan.blackhole = on;
        if !on {
            for conn in plan.connections.values().filter(|c| c.swallowed) {
                conn.kill.send_replace(Some(ResetCause::Healed));
            }
        }
        self
    }

    /// Resets every open connection now (an RST to the client; the server's
    /// side is reset too). Returns how many were reset.
    pub fn reset_all(&self) -> usize {
        let plan = self.shared.plan();
        for conn in plan.connections.values() {
            conn.kill.send_replace(Some(ResetCause::ResetAll));
        }
        plan.connections.len()
    }

    /// Cuts the stream after `bytes` more bytes going `direction`: the
    /// connection that carries the byte past the budget forwards exactly up
    /// to it and is reset. Fires once; a later call replaces the budget.
    pub fn cut_after(&self, direction: Direction, bytes: u64) -> &Self {
        self.shared.plan().cut = Some((direction, bytes));
        self
    }

    /// Drops the reply to the next request on any connection: the request
    /// is delivered to the server, and the next bytes the server sends back
    /// on that connection are discarded and the connection reset. The client
    /// cannot know whether its request was applied: the ambiguous commit.
    /// Calls add up: `drop_next_reply()` twice drops two replies.
    pub fn drop_next_reply(&self) -> &Self {
        self.shared.plan().drop_replies.push(None);
        self
    }

    /// As [`drop_next_reply`](Self::drop_next_reply), for the next request
    /// whose bytes hold `pattern` (a key, a thread id...), even split
    /// across reads. Replies to requests pipelined on the same connection
    /// before it are lost with it.
    pub fn drop_reply_to(&self, pattern: impl AsRef<[u8]>) -> &Self {
        self.shared
            .plan()
            .drop_replies
            .push(Some(pattern.as_ref().to_vec()));
        self
    }

    /// Cuts connections at random, from the seed: each connection accepted
    /// from now on is cut as `plan` says (see [`RandomCuts`]). Cuts are
    /// counted in bytes, so the same seed and the same traffic replay the
    /// same cuts. `None` stops drawing cuts for new connections.
    pub fn random_cuts(&self, plan: Option<RandomCuts>) -> &Self {
        self.shared.plan().random_cuts = plan;
        self
    }

    /// Clears every fault: latency, bandwidth, blackhole (resetting the
    /// connections it swallowed bytes of), armed cuts and dropped replies,
    /// random cuts of new connections.
    pub fn heal(&self) {
        {
            let mut plan = self.shared.plan();
            plan.latency = Duration::ZERO;
            plan.bandwidth = None;
            plan.cut = None;
            plan.drop_replies.clear();
            plan.random_cuts = None;
            for conn in plan.connections.values_mut() {
                conn.cut_at = None;
                conn.drop_next_reply = false;
            }
        }
        self.set_blackhole(false);
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> ProxyStats {
        self.shared.stats.borrow().clone()
    }

    /// Waits until the stats satisfy `condition` (checked now and after
    /// every change), and returns them: await an event instead of sleeping.
    pub async fn wait_for(&self, mut condition: impl FnMut(&ProxyStats) -> bool) -> ProxyStats {
        let mut stats = self.shared.stats.subscribe();
        // The sender lives in `self.shared`, so the channel cannot close.
        match stats.wait_for(|s| condition(s)).await {
            Ok(stats) => stats.clone(),
            Err(_) => self.stats(),
        }
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("seed", &self.shared.seed)
            .finish_non_exhaustive()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for conn in self.shared.plan().connections.values() {
            conn.kill.send_replace(Some(ResetCause::Stopped));
        }
    }
}
