//! The faults of `FaultProxy` on the wire, in front of a plain TCP echo
//! server that counts what it receives.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use task_testkit::proxy::{Direction, FaultProxy, RandomCuts, ResetCause};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// An echo server on a free loopback port; `received` counts the bytes it
/// got, over every connection.
struct Echo {
    addr: SocketAddr,
    received: watch::Sender<u64>,
}

impl Echo {
    async fn start() -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the echo server");
        let addr = listener.local_addr().expect("its address");
        let received = watch::Sender::new(0_u64);
        let counter = received.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0_u8; 8192];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        counter.send_modify(|total| *total += n as u64);
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, received }
    }

    async fn wait_received(&self, bytes: u64) {
        let mut received = self.received.subscribe();
        let _ = received.wait_for(|&total| total >= bytes).await;
    }

    fn received(&self) -> u64 {
        *self.received.borrow()
    }
}

async fn proxy_to(echo: &Echo, seed: u64) -> FaultProxy {
    FaultProxy::start_with_seed(echo.addr, seed)
        .await
        .expect("start the proxy")
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    TcpStream::connect(proxy.addr())
        .await
        .expect("connect through the proxy")
}

/// Reads until the connection ends; the bytes read, and how it ended.
async fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, Option<ErrorKind>) {
    let mut data = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return (data, None),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(error) => return (data, Some(error.kind())),
        }
    }
}

/// Writes `payload` and reads as many bytes back.
async fn echo_round_trip(stream: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
    let (mut read, mut write) = stream.split();
    let writing = async {
        write
            .write_all(payload)
            .await
            .expect("write through the proxy");
    };
    let reading = async {
        let mut back = vec![0_u8; payload.len()];
        read.read_exact(&mut back)
            .await
            .expect("read the echo through the proxy");
        back
    };
    tokio::join!(writing, reading).1
}

#[tokio::test]
async fn forwards_bytes_both_ways_unchanged() {
    let echo = Echo::start().await;
    let proxy = proxy_to(&echo, 1).await;
    let mut rng = fastrand::Rng::with_seed(1);
    let payload: Vec<u8> = (0..1 << 20).map(|_| rng.u8(..)).collect();
    let mut stream = connect(&proxy).await;
    assert_eq!(echo_round_trip(&mut stream, &payload).await, payload);
    let stats = proxy.stats();
    assert_eq!((stats.to_server, stats.to_client), (1 << 20, 1 << 20));
    assert_eq!((stats.accepted, stats.open), (1, 1));
    assert!(stats.resets.is_empty());
}

#[tokio::test]
async fn latency_delays_each_direction() {
    let echo = Echo::start().await;
    let proxy = proxy_to(&echo, 2).await;
    let mut stream = connect(&proxy).await;
    proxy.set_latency(Duration::from_millis(150));
    let started = Instant::now();
    echo_round_trip(&mut stream, b"ping").await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "a round trip through 150 ms each way took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn bandwidth_limits_throughput() {
    let echo = Echo::start().await;
    let proxy = proxy_to(&echo, 3).await;
    let mut stream = connect(&proxy).await;
    proxy.set_bandwidth(Some(100_000));
    let started = Instant::now();
    echo_round_trip(&mut stream, &[7; 50_000]).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "50,000 bytes at 100,000 bytes/s took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_blackhole_accepts_and_never_answers_and_lifting_it_resets() {
    let echo = Echo::start().await;
    let proxy = proxy_to(&echo, 4).await;
    let mut before = connect(&proxy).await;
    echo_round_trip(&mut before, b"warm").await;
    proxy.set_blackhole(true);
    let mut during = connect(&proxy).await;
    before.write_all(&[1; 100]).await.expect("write");
    during.write_all(&[2; 50]).await.expect("write");
    proxy.wait_for(|stats| stats.swallowed >= 150).await;
    assert_eq!(
        echo.received(),
        4,
        "the server saw nothing while blackholed"
    );

    proxy.set_blackhole(false);
    for stream in [&mut before, &mut during] {
        let (data, ended) = read_to_end(stream).await;
        assert!(data.is_empty(), "a swallowed request got an answer");
        assert_eq!(ended, Some(ErrorKind::ConnectionReset));
    }
    let resets = proxy.stats().resets;
    assert_eq!(resets.len(), 2);
    assert!(
        resets.iter().all(|r| r.cause == ResetCause::Healed),
        "{resets:?}"
    );
    let mut after = connect(&proxy).await;
    assert_eq!(echo_round_trip(&mut after, b"again").await, b"again");
}

#[tokio::test]
async fn reset_all_resets_every_open_connection() {
    let echo = Echo::start().await;
    let proxy = proxy_to(&echo, 5).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&proxy).await;
        echo_round_trip(&mut stream, b"up").await;
        streams.push(stream);
    }
    assert_eq!(proxy.reset_all(), 3);
    for stream in &mut streams {
        assert_eq!(
            read_to_end(stream).await.1,
            Some(ErrorKind::ConnectionReset)
        );
    }
    let stats = proxy.wait_for(|stats| stats.open == 0).await;
    assert_eq!(stats.resets.len(), 3);
}

#[tokio::test]
async fn cut_after_delivers_exactly_that_many_bytes_to_the_server() {
    let echo = Echo::start().await;
    let proxy = proxy_to(&echo, 6).await;
    let mut stream = connect(&proxy).await;
    proxy.cut_after(Direction::ToServer, 10);
    stream.write_all(&[3; 100]).await.expect("write");
    let (data, ended) = read_to_end(&mut stream).await;
    assert_eq!(ended, Some(ErrorKind::ConnectionReset));
    assert!(data.len() <= 10, "{} bytes came back", data.len());
    assert_eq!(echo.received(), 10, "the server got exactly the budget");
    let resets = proxy.stats().resets;
    assert_eq!(resets[0].cause, ResetCause::Cut(Direction::ToServer));
    assert_eq!(resets[0].to_server, 10);
}

#[tokio::test]
async fn cut_after_delivers_exactly_that_many_bytes_to_the_client() {
    let echo = Echo::start().await;
    let proxy = proxy_to(&echo, 7).await;
    let mut stream = connect(&proxy).await;
    proxy.cut_after(Direction::ToClient, 10);
    stream.write_all(&[4; 100]).await.expect("write");
    let (data, ended) = read_to_end(&mut stream).await;
    assert_eq!(data, [4; 10], "exactly the budget came back");
    assert_eq!(ended, Some(ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn a_dropped_reply_follows_a_delivered_request() {
    let echo = Echo::start().await;
    let proxy = proxy_to(&echo, 8).await;
    let mut other = connect(&proxy).await;
    let mut target = connect(&proxy).await;
    proxy.drop_reply_to("SET task:42");
    // Another request goes through untouched.
    assert_eq!(
        echo_round_trip(&mut other, b"GET task:41").await,
        b"GET task:41"
    );
    // The pattern split across two reads still arms the fault.
    target.write_all(b"xx SET ta").await.expect("write");
    echo.wait_received(11 + 9).await;
    target.write_all(b"sk:42 yy").await.expect("write");
    let (data, ended) = read_to_end(&mut target).await;
    assert_eq!(
        echo.received(),
        11 + 17,
        "the whole request reached the server"
    );
    // The echo of the first half may come back before the rest was sent;
    // the reply to the request itself never does.
    assert!(data == b"" || data == b"xx SET ta", "{data:?}");
    assert_eq!(ended, Some(ErrorKind::ConnectionReset));
    let stats = proxy.stats();
    assert_eq!(stats.dropped_replies, 1);
    assert_eq!(stats.resets.len(), 1);
    assert_eq!(stats.resets[0].cause, ResetCause::DroppedReply);
    assert_eq!(
        echo_round_trip(&mut other, b"still up").await,
        b"still up",
        "only the target connection was reset"
    );
}

#[tokio::test]
async fn drop_next_reply_drops_one_reply_per_call() {
    let echo = Echo::start().await;
    let proxy = proxy_to(&echo, 9).await;
    proxy.drop_next_reply().drop_next_reply();
    for _ in 0..2 {
        let mut stream = connect(&proxy).await;
        stream.write_all(b"request").await.expect("write");
        let (data, ended) = read_to_end(&mut stream).await;
        assert!(data.is_empty(), "{data:?}");
        assert_eq!(ended, Some(ErrorKind::ConnectionReset));
    }
    let mut stream = connect(&proxy).await;
    assert_eq!(echo_round_trip(&mut stream, b"third").await, b"third");
    assert_eq!(proxy.stats().dropped_replies, 2);
}

/// The cuts a seeded proxy makes over 24 connections, each sending 2,000
/// bytes and reading the echo: for each reset, the connection, the cause
/// and the bytes counted in the cut's direction.
async fn random_cuts_with(seed: u64) -> Vec<(u64, ResetCause, u64)> {
    let echo = Echo::start().await;
    let proxy = proxy_to(&echo, seed).await;
    proxy.random_cuts(Some(RandomCuts::new(0.5, 1..2_000)));
    for _ in 0..24 {
        let mut stream = connect(&proxy).await;
        stream.write_all(&[5; 2_000]).await.expect("write");
        let mut back = 0;
        let mut buf = [0_u8; 4096];
        while back < 2_000 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => back += n,
            }
        }
    }
    let stats = proxy.wait_for(|stats| stats.open == 0).await;
    stats
        .resets
        .into_iter()
        .map(|reset| {
            let bytes = match reset.cause {
                ResetCause::RandomCut(Direction::ToServer) => reset.to_server,
                _ => reset.to_client,
            };
            (reset.connection, reset.cause, bytes)
        })
        .collect()
}

#[tokio::test]
async fn random_cuts_replay_exactly_for_a_seed() {
    let first = random_cuts_with(42).await;
    assert!(
        first.len() >= 4,
        "seed 42 cuts about half of 24 connections: {first:?}"
    );
    assert!(
        first
            .iter()
            .all(|(_, cause, bytes)| matches!(cause, ResetCause::RandomCut(_)) && *bytes < 2_000)
    );
    assert_eq!(
        random_cuts_with(42).await,
        first,
        "the same seed, the same cuts"
    );
    assert_ne!(
        random_cuts_with(43).await,
        first,
        "another seed, other cuts"
    );
}

#[tokio::test]
async fn an_unreachable_server_resets_the_client() {
    // A port that was free a moment ago: nothing listens there.
    let closed = TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind")
        .local_addr()
        .expect("address");
    let proxy = FaultProxy::start_with_seed(closed, 10)
        .await
        .expect("start the proxy");
    let mut stream = connect(&proxy).await;
    let (data, _) = read_to_end(&mut stream).await;
    assert!(data.is_empty());
    let stats = proxy.wait_for(|stats| !stats.resets.is_empty()).await;
    assert_eq!(stats.resets[0].cause, ResetCause::Upstream);
}
