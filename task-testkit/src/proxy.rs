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

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The environment variable that seeds [`FaultProxy::start`], to replay a
/// run.
pub const PROXY_SEED_ENV: &str = "FAULT_PROXY_SEED";

/// How long the proxy waits to connect to the server for a new client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The size of the chunks the proxy reads and forwards.
const CHUNK: usize = 16 * 1024;

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

/// One open connection, as the fault plan sees it.
#[derive(Debug)]
struct Conn {
    kill: watch::Sender<Option<ResetCause>>,
    to_server: u64,
    to_client: u64,
    /// A cut drawn for this connection: reset once this many bytes went
    /// that way.
    cut_at: Option<(Direction, u64)>,
    /// A request armed to lose its reply was delivered on it.
    drop_next_reply: bool,
    swallowed: bool,
    /// The last bytes sent to the server, so a pattern split across two
    /// chunks is still found.
    tail: Vec<u8>,
}

#[derive(Debug)]
struct Plan {
    rng: fastrand::Rng,
    latency: Duration,
    bandwidth: Option<u64>,
    blackhole: bool,
    cut: Option<(Direction, u64)>,
    /// Requests whose reply is to be dropped: `None` for the next request of
    /// any kind, `Some(pattern)` for the next one holding the pattern.
    drop_replies: Vec<Option<Vec<u8>>>,
    random_cuts: Option<RandomCuts>,
    /// How many cuts `random_cuts` has drawn.
    cuts_drawn: u64,
    connections: BTreeMap<u64, Conn>,
    next_id: u64,
}

/// What to do with one chunk.
enum Step {
    /// Forward its first `len` bytes after `delay`, then reset if `then`.
    Forward {
        len: usize,
        delay: Duration,
        then: Option<ResetCause>,
    },
    /// Drop it (the blackhole).
    Swallow,
    /// Drop it and reset the connection.
    Reset(ResetCause),
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    seed: u64,
    plan: Mutex<Plan>,
    stats: watch::Sender<ProxyStats>,
}

impl Shared {
    fn plan(&self) -> MutexGuard<'_, Plan> {
        // The plan is only changed by short, non-panicking code.
        self.plan.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection and draws its cut.
    fn open(&self) -> (u64, watch::Receiver<Option<ResetCause>>) {
        let mut plan = self.plan();
        let id = plan.next_id;
        plan.next_id += 1;
        let cut_at = plan.random_cuts.clone().and_then(|cuts| {
            if cuts.at_most.is_some_and(|limit| plan.cuts_drawn >= limit) {
                return None;
            }
            let p = cuts.probability.clamp(0.0, 1.0);
            if plan.rng.f64() >= p {
                return None;
            }
            plan.cuts_drawn += 1;
            let (direction, range) = if plan.rng.bool() {
                (Direction::ToServer, cuts.to_server)
            } else {
                (Direction::ToClient, cuts.to_client)
            };
            let bytes = plan.rng.u64(range.start..range.end.max(range.start + 1));
            Some((direction, bytes))
        });
        let (kill, killed) = watch::channel(None);
        plan.connections.insert(
            id,
            Conn {
                kill,
                to_server: 0,
                to_client: 0,
                cut_at,
                drop_next_reply: false,
                swallowed: false,
                tail: Vec::new(),
            },
        );
        self.stats.send_modify(|stats| {
            stats.accepted += 1;
            stats.open += 1;
        });
        (id, killed)
    }

    /// Forgets a connection that ended, logging its reset if it was one.
    fn close(&self, id: u64, reset: Option<ResetCause>) {
        let conn = self.plan().connections.remove(&id);
        self.stats.send_modify(|stats| {
            stats.open = stats.open.saturating_sub(1);
            if let Some(cause) = reset {
                stats.resets.push(ResetEvent {
                    connection: id,
                    cause,
                    to_server: conn.as_ref().map_or(0, |c| c.to_server),
                    to_client: conn.as_ref().map_or(0, |c| c.to_client),
                });
            }
        });
    }

    /// Decides the fate of one chunk read from one side of connection `id`.
    fn decide(&self, id: u64, direction: Direction, chunk: &[u8]) -> Step {
        let mut plan = self.plan();
        let Plan {
            latency,
            bandwidth,
            blackhole,
            cut,
            drop_replies,
            connections,
            ..
        } = &mut *plan;
        let Some(conn) = connections.get_mut(&id) else {
            return Step::Reset(ResetCause::Stopped);
        };
        if *blackhole {
            conn.swallowed = true;
            self.stats
                .send_modify(|stats| stats.swallowed += chunk.len() as u64);
            return Step::Swallow;
        }
        if direction == Direction::ToClient && conn.drop_next_reply {
            self.stats.send_modify(|stats| stats.dropped_replies += 1);
            return Step::Reset(ResetCause::DroppedReply);
        }
        let mut len = chunk.len();
        let mut then = None;
        if let Some((cut_direction, remaining)) = cut
            && *cut_direction == direction
        {
            if len as u64 >= *remaining {
                len = usize::try_from(*remaining).unwrap_or(len);
                then = Some(ResetCause::Cut(direction));
                *cut = None;
            } else {
                *remaining -= len as u64;
            }
        }
        let sent = match direction {
            Direction::ToServer => conn.to_server,
            Direction::ToClient => conn.to_client,
        };
        if let Some((cut_direction, at)) = conn.cut_at
            && cut_direction == direction
            && sent + len as u64 >= at
        {
            len = len.min(usize::try_from(at.saturating_sub(sent)).unwrap_or(len));
            then = Some(ResetCause::RandomCut(direction));
            conn.cut_at = None;
        }
        if direction == Direction::ToServer && !drop_replies.is_empty() {
            let longest = drop_replies
                .iter()
                .map(|arm| arm.as_ref().map_or(0, Vec::len))
                .max()
                .unwrap_or(0);
            let mut window = std::mem::take(&mut conn.tail);
            window.extend_from_slice(&chunk[..len]);
            let armed = drop_replies.iter().position(|arm| {
                arm.as_ref()
                    .is_none_or(|pattern| contains(&window, pattern))
            });
            if let Some(position) = armed {
                drop_replies.remove(position);
                conn.drop_next_reply = true;
            }
            let keep = longest.saturating_sub(1).min(window.len());
            conn.tail = window.split_off(window.len() - keep);
        }
        match direction {
            Direction::ToServer => conn.to_server += len as u64,
            Direction::ToClient => conn.to_client += len as u64,
        }
        self.stats.send_modify(|stats| match direction {
            Direction::ToServer => stats.to_server += len as u64,
            Direction::ToClient => stats.to_client += len as u64,
        });
        let throttle = bandwidth.map_or(Duration::ZERO, |bytes_per_second| {
            Duration::from_secs_f64(len as f64 / bytes_per_second.max(1) as f64)
        });
        Step::Forward {
            len,
            delay: *latency + throttle,
            then,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

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
        let shared = Arc::new(Shared {
            upstream,
            seed,
            plan: Mutex::new(Plan {
                rng: fastrand::Rng::with_seed(seed),
                latency: Duration::ZERO,
                bandwidth: None,
                blackhole: false,
                cut: None,
                drop_replies: Vec::new(),
                random_cuts: None,
                cuts_drawn: 0,
                connections: BTreeMap::new(),
                next_id: 0,
            }),
            stats: watch::Sender::new(ProxyStats::default()),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
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

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let (id, killed) = shared.open();
                tokio::spawn(serve(Arc::clone(&shared), id, client, killed));
            }
            // Out of file descriptors and the like: try again.
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

/// How one side of a connection ended.
enum End {
    /// The peer closed its side: close the other one too.
    Closed,
    /// The peer went away abruptly: pass it on, as the network would.
    Aborted,
    /// The plan says reset.
    Reset(ResetCause),
}

/// Carries one client connection to the server until it ends.
async fn serve(
    shared: Arc<Shared>,
    id: u64,
    mut client: TcpStream,
    mut killed: watch::Receiver<Option<ResetCause>>,
) {
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(shared.upstream));
    let mut server = match connected.await {
        Ok(Ok(server)) => server,
        Ok(Err(_)) | Err(_) => {
            reset(&client);
            shared.close(id, Some(ResetCause::Upstream));
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let end = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        tokio::select! {
            end = pump(&shared, id, Direction::ToServer, &mut client_read, &mut server_write) => end,
            end = pump(&shared, id, Direction::ToClient, &mut server_read, &mut client_write) => end,
            cause = killed.wait_for(Option::is_some) => End::Reset(
                cause.ok().and_then(|cause| cause.clone()).unwrap_or(ResetCause::Stopped),
            ),
        }
    };
    match end {
        End::Closed => {
            let _ = client.shutdown().await;
            let _ = server.shutdown().await;
            shared.close(id, None);
        }
        End::Aborted => {
            reset(&client);
            reset(&server);
            shared.close(id, None);
        }
        End::Reset(cause) => {
            reset(&client);
            reset(&server);
            shared.close(id, Some(cause));
        }
    }
}

/// Makes dropping `stream` send an RST instead of a FIN.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Forwards one direction of a connection, chunk by chunk, as the plan says.
async fn pump(
    shared: &Shared,
    id: u64,
    direction: Direction,
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut (impl AsyncWrite + Unpin),
) -> End {
    let mut buf = vec![0_u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => return End::Closed,
            Ok(n) => n,
            Err(_) => return End::Aborted,
        };
        match shared.decide(id, direction, &buf[..n]) {
            Step::Swallow => {}
            Step::Reset(cause) => return End::Reset(cause),
            Step::Forward { len, delay, then } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if len > 0 && writer.write_all(&buf[..len]).await.is_err() {
                    return End::Aborted;
                }
                if let Some(cause) = then {
                    let _ = writer.flush().await;
                    return End::Reset(cause);
                }
            }
        }
    }
}
