//! The proxy's wire: accepting connections, pumping their bytes both ways,
//! and deciding, chunk by chunk, what the fault plan does to them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Direction, ProxyStats, RandomCuts, ResetCause, ResetEvent};

/// How long the proxy waits to connect to the server for a new client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The size of the chunks the proxy reads and forwards.
const CHUNK: usize = 16 * 1024;

/// One open connection, as the fault plan sees it.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) kill: watch::Sender<Option<ResetCause>>,
    pub(super) to_server: u64,
    pub(super) to_client: u64,
    /// A cut drawn for this connection: reset once this many bytes went
    /// that way.
    pub(super) cut_at: Option<(Direction, u64)>,
    /// A request armed to lose its reply was delivered on it.
    pub(super) drop_next_reply: bool,
    pub(super) swallowed: bool,
    /// The last bytes sent to the server, so a pattern split across two
    /// chunks is still found.
    pub(super) tail: Vec<u8>,
}

#[derive(Debug)]
pub(super) struct Plan {
    pub(super) rng: fastrand::Rng,
    pub(super) latency: Duration,
    pub(super) bandwidth: Option<u64>,
    pub(super) blackhole: bool,
    pub(super) cut: Option<(Direction, u64)>,
    /// Requests whose reply is to be dropped: `None` for the next request of
    /// any kind, `Some(pattern)` for the next one holding the pattern.
    pub(super) drop_replies: Vec<Option<Vec<u8>>>,
    pub(super) random_cuts: Option<RandomCuts>,
    /// How many cuts `random_cuts` has drawn.
    pub(super) cuts_drawn: u64,
    pub(super) connections: BTreeMap<u64, Conn>,
    pub(super) next_id: u64,
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
pub(super) struct Shared {
    pub(super) upstream: SocketAddr,
    pub(super) seed: u64,
    pub(super) plan: Mutex<Plan>,
    pub(super) stats: watch::Sender<ProxyStats>,
}

impl Shared {
    /// The shared state of a proxy to `upstream` without faults, its RNG
    /// seeded by `seed`.
    pub(super) fn new(upstream: SocketAddr, seed: u64) -> Self {
        Self {
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
        }
    }

    pub(super) fn plan(&self) -> MutexGuard<'_, Plan> {
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

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Accepts connections until the proxy is dropped (which aborts this task).
pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
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
