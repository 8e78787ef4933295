//! Talking to one node: [`Reply`] and the RESP2 reader, the raw connection
//! that sends a command (or a pipeline of them) to a node's port, and the
//! public face of it on [`RedisCluster`]: [`RedisCluster::query`],
//! [`RedisCluster::pipeline`], and [`RedisCluster::redis_cli`], which goes
//! through `redis-cli -c` to follow redirects as a cluster client does.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{RedisCluster, find_redis_cli};
use crate::redis_server::{read_line, resp};

/// How long one command may take to connect and to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One reply of a Redis server (RESP2).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// A simple string: `+OK`.
    Status(String),
    /// An error: `-MOVED 3999 127.0.0.1:6381`, without the `-`.
    Error(String),
    /// An integer: `:1`.
    Integer(i64),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// A null bulk string or array (`GET` of a missing key).
    Nil,
    /// An array of replies.
    Array(Vec<Reply>),
}

impl Reply {
    /// The bytes of a bulk or simple string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Bulk(bytes) => Some(bytes),
            Self::Status(text) => Some(text.as_bytes()),
            _ => None,
        }
    }
}

impl RedisCluster {
    /// Sends `args` to node `i` and returns its whole reply (an error reply
    /// is a [`Reply::Error`], not an `Err`). Nothing follows `MOVED` or `ASK`
    /// redirects; use [`RedisCluster::redis_cli`] for that.
    ///
    /// # Errors
    ///
    /// When the node cannot be reached or its reply cannot be read.
    pub fn query<A: AsRef<[u8]>>(&self, i: usize, args: &[A]) -> io::Result<Reply> {
        self.check_index(i)?;
        let mut replies = request(self.nodes[i].port(), &[args])?;
        replies
            .pop()
            .ok_or_else(|| io::Error::other("no reply was read"))
    }

    /// Sends `commands` to node `i` on one connection and returns their
    /// replies in order: for `ASKING` before a command, or `WAIT` after a
    /// write (`WAIT` counts only the writes of its own connection).
    ///
    /// # Errors
    ///
    /// As [`RedisCluster::query`].
    pub fn pipeline<A: AsRef<[u8]>>(&self, i: usize, commands: &[&[A]]) -> io::Result<Vec<Reply>> {
        self.check_index(i)?;
        request(self.nodes[i].port(), commands)
    }

    /// Runs `redis-cli -c` against node `i` with `args`, as a cluster client
    /// would (it follows `MOVED` and `ASK`), and returns its output without
    /// the trailing newline: `OK`, a value, an empty string for a missing
    /// value, or the text of an error reply (`ERR …`: `redis-cli` exits
    /// successfully after one).
    ///
    /// # Errors
    ///
    /// `NotFound` without `redis-cli`; when it cannot be run or exits with
    /// a failure (it could not connect, for example).
    pub fn redis_cli(&self, i: usize, args: &[&str]) -> io::Result<String> {
        self.check_index(i)?;
        let cli = find_redis_cli().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no redis-cli binary next to redis-server or on PATH",
            )
        })?;
        let output = Command::new(cli)
            .arg("-c")
            .arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.nodes[i].port().to_string())
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "`redis-cli -c -p {} {}` failed ({}): {}",
                self.nodes[i].port(),
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            )));
        }
        let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if stdout.ends_with('\n') {
            stdout.pop();
        }
        Ok(stdout)
    }
}

/// Whether `err` says the node is not running (nothing listens on its port).
pub(super) fn is_down(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::ConnectionRefused
}

/// Sends a command to node `i` and returns its bulk or simple string reply
/// as text; an error reply is an error.
pub(super) fn text(i: usize, port: u16, args: &[&str]) -> io::Result<String> {
    let reply = request(port, &[args])?.pop();
    match reply {
        Some(Reply::Bulk(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Some(Reply::Status(text)) => Ok(text),
        other => Err(io::Error::other(format!(
            "`{}` on node {i} (port {port}) answered {other:?}",
            args.join(" ")
        ))),
    }
}

/// Sends a command to node `i` that must answer `+OK`.
pub(super) fn expect_ok(i: usize, port: u16, args: &[&str]) -> io::Result<()> {
    match request(port, &[args])?.pop() {
        Some(Reply::Status(status)) if status == "OK" => Ok(()),
        other => Err(io::Error::other(format!(
            "`{}` on node {i} (port {port}) answered {other:?}",
            args.join(" ")
        ))),
    }
}

/// Sends `commands` on one connection to the node on `port` and reads one
/// reply per command.
fn request<A: AsRef<[u8]>>(port: u16, commands: &[&[A]]) -> io::Result<Vec<Reply>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let out: Vec<u8> = commands.iter().flat_map(|args| resp(args)).collect();
    writer.write_all(&out)?;
    let mut reader = BufReader::new(stream);
    commands.iter().map(|_| read_reply(&mut reader)).collect()
}

/// Reads one RESP2 reply.
fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let line = read_line(reader)?;
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} in the reply line {line:?}"),
        )
    };
    let mut chars = line.chars();
    let kind = chars.next().ok_or_else(|| invalid("nothing"))?;
    let rest = chars.as_str();
    match kind {
        '+' => Ok(Reply::Status(rest.to_owned())),
        '-' => Ok(Reply::Error(rest.to_owned())),
        ':' => rest
            .parse()
            .map(Reply::Integer)
            .map_err(|_| invalid("a bad integer")),
        '$' => {
            let len: i64 = rest.parse().map_err(|_| invalid("a bad length"))?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Reply::Nil);
            };
            let mut bytes = vec![0; len + 2];
            reader.read_exact(&mut bytes)?;
            if !bytes.ends_with(b"\r\n") {
                return Err(invalid("no CRLF after the bulk string"));
            }
            bytes.truncate(len);
            Ok(Reply::Bulk(bytes))
        }
        '*' => {
            let len: i64 = rest.parse().map_err(|_| invalid("a bad length"))?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Reply::Nil);
            };
            (0..len)
                .map(|_| read_reply(reader))
                .collect::<io::Result<Vec<Reply>>>()
                .map(Reply::Array)
        }
        _ => Err(invalid("an unknown type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp2_replies_are_read() {
        let bytes: &[u8] =
            b"+OK\r\n-MOVED 1 127.0.0.1:1\r\n:42\r\n$3\r\na\r\n\r\n$-1\r\n*2\r\n$1\r\nk\r\n*-1\r\n";
        let mut reader = BufReader::new(bytes);
        let mut next = || read_reply(&mut reader).expect("a reply");
        assert_eq!(next(), Reply::Status("OK".to_owned()));
        assert_eq!(next(), Reply::Error("MOVED 1 127.0.0.1:1".to_owned()));
        assert_eq!(next(), Reply::Integer(42));
        assert_eq!(next(), Reply::Bulk(b"a\r\n".to_vec()));
        assert_eq!(next(), Reply::Nil);
        assert_eq!(
            next(),
            Reply::Array(vec![Reply::Bulk(b"k".to_vec()), Reply::Nil])
        );
        let mut truncated = BufReader::new(&b"$5\r\nab"[..]);
        assert!(read_reply(&mut truncated).is_err());
        let mut unknown = BufReader::new(&b"%1\r\n"[..]);
        assert!(read_reply(&mut unknown).is_err());
    }
}
