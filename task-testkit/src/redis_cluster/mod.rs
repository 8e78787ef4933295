//! A private Redis Cluster for tests: masters and replicas, each a
//! [`RedisServer`] on its own loopback port and in its own directory, joined
//! by `redis-cli --cluster create`, with the operations a test of a cluster
//! client needs: kill a master and wait for its replica to take over,
//! restart a node, move a slot (at once, or step by step while the test
//! writes).
//!
//! ```no_run
//! use task_testkit::redis_cluster::{RedisCluster, key_slot};
//!
//! let mut cluster = RedisCluster::start().expect("3 masters, 1 replica each");
//! let url = cluster.url(); // redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/
//! let slot = key_slot(b"some-key");
//! let master = cluster.master_of_slot(slot).expect("a master serves it");
//! let promoted = cluster
//!     .kill_master_and_wait_for_failover(master)
//!     .expect("a replica took over");
//! cluster.restart_node(master).expect("rejoins, as a replica of the new master");
//! # drop((url, promoted));
//! ```
//!
//! # What the cluster promises
//!
//! - [`RedisClusterBuilder::start`] returns once every node says
//!   `cluster_state:ok`, all nodes agree on who serves each of the 16384
//!   slots and who replicates whom, every master has its replicas, and every
//!   replica has finished its initial sync (`master_link_status:up`): a test
//!   may kill a master as its first action.
//! - The waiting methods ([`RedisCluster::wait_until_ok`],
//!   [`RedisCluster::kill_master_and_wait_for_failover`],
//!   [`RedisCluster::restart_node`], [`RedisCluster::migrate_slot`]) return
//!   only once that same agreement holds among the nodes that are up, or
//!   fail with `TimedOut` and the last thing that was not yet right.
//! - A failover needs a majority of the masters that serve slots to be up,
//!   so with the default three masters, one at a time can be killed.
//! - The topology stays as the test makes it: replica migration is off
//!   (`cluster-allow-replica-migration no`), so no replica moves to another
//!   master on its own, and a master whose slots were all migrated away stays
//!   an (empty) master.
//!
//! # The settings, and why
//!
//! - `cluster-node-timeout` is [`RedisClusterBuilder::node_timeout`] (1 s by
//!   default): a killed master is marked failed after about that long, and a
//!   failover takes about 2-3 s in all.
//! - `cluster-replica-validity-factor 0`: a replica may always be promoted,
//!   however long ago it last heard from its master. The default (10) can
//!   make a replica refuse to take over, which would make failover tests
//!   flaky; with 0 the replica with the best replication offset wins.
//! - `cluster-require-full-coverage yes` (the default, kept on purpose): while
//!   a master is down and not yet replaced, every node answers `CLUSTERDOWN`,
//!   as a production cluster does, and `cluster_state:ok` means all slots are
//!   served again. A test of a client during a failover therefore sees the
//!   whole cluster down for a few seconds, not only the dead master's slots.
//! - `repl-diskless-sync-delay 0`: a replica's full sync starts at once
//!   instead of after 5 s, so the cluster is ready in about 2 s.
//! - `cluster-port` is chosen free like the client port (the default, port +
//!   10000, can exceed 65535 for ports from the ephemeral range).
//!
//! # What it does not promise
//!
//! - Durability beyond what [`RedisClusterBuilder::appendonly`] asks for. By
//!   default nothing is persisted: a master restarted before a replica took
//!   over comes back empty and its replicas resync to that empty master, as
//!   a real one would. Replication is asynchronous: a write is on a replica
//!   only once `WAIT` said so (send it on the connection that wrote, e.g.
//!   with [`RedisCluster::pipeline`]).
//! - Which replica [`RedisClusterBuilder::start`] attaches to which master
//!   (`redis-cli` shuffles them); ask [`RedisCluster::replicas_of`].
//! - A node stopped with `SIGSTOP`, or a network partition: a node counts as
//!   down when its port refuses connections, as after [`RedisServer::kill`].
//! - Fewer than three masters: `redis-cli --cluster create` refuses them.
//!
//! Tests call [`private_cluster_or_skip`], which, like
//! [`private_server_or_skip`](crate::redis_server::private_server_or_skip),
//! prints a loud skip line when `redis-server` or `redis-cli` is missing,
//! except under `CI=true`, where it panics. Every node has the watchdog of
//! [`RedisServer`]: no node outlives the test process.

mod formation;
mod migration;
mod topology;
mod wire;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::redis_server::{AppendFsync, RedisServer, find_redis_server};

pub use migration::SlotMigration;
use topology::{Role, poll};
pub use wire::Reply;

/// The number of hash slots of a Redis Cluster.
pub const SLOT_COUNT: u16 = 16384;

/// Configures a [`RedisCluster`] before it starts. By default: 3 masters
/// with 1 replica each, a node timeout of 1 s, no persistence.
#[derive(Debug, Clone)]
pub struct RedisClusterBuilder {
    masters: usize,
    replicas_per_master: usize,
    node_timeout: Duration,
    appendonly: bool,
    appendfsync: Option<AppendFsync>,
}

impl Default for RedisClusterBuilder {
    fn default() -> Self {
        Self {
            masters: 3,
            replicas_per_master: 1,
            node_timeout: Duration::from_secs(1),
            appendonly: false,
            appendfsync: None,
        }
    }
}

impl RedisClusterBuilder {
    /// Sets the number of masters (at least 3, which `redis-cli --cluster
    /// create` requires); the slots are split evenly among them.
    pub fn masters(mut self, n: usize) -> Self {
        self.masters = n;
        self
    }

    /// Sets the number of replicas of each master (0 for none; then no
    /// failover is possible).
    pub fn replicas_per_master(mut self, n: usize) -> Self {
        self.replicas_per_master = n;
        self
    }

    /// Sets `cluster-node-timeout`: how long a node may be unreachable before
    /// it is considered failing. Failover takes about 2-3 times this long.
    /// At least 1 ms.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Turns the append-only file of every node on or off.
    pub fn appendonly(mut self, on: bool) -> Self {
        self.appendonly = on;
        self
    }

    /// Sets when every node flushes its append-only file.
    pub fn appendfsync(mut self, fsync: AppendFsync) -> Self {
        self.appendfsync = Some(fsync);
        self
    }
}

/// A Redis Cluster owned by a test. Dropping it kills every node and removes
/// their directories.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// The node id of each node (kept across restarts in `nodes.conf`).
    ids: Vec<String>,
    /// The nodes that were masters when the cluster formed.
    seed_masters: Vec<usize>,
}

impl RedisCluster {
    /// A builder to choose the shape, the node timeout and persistence.
    pub fn builder() -> RedisClusterBuilder {
        RedisClusterBuilder::default()
    }

    /// Starts 3 masters with 1 replica each, without persistence.
    ///
    /// # Errors
    ///
    /// As [`RedisClusterBuilder::start`].
    pub fn start() -> io::Result<Self> {
        Self::builder().start()
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…/`: the nodes that were
    /// masters when the cluster formed, as seeds (the form the Redis store
    /// parses). A client needs only one of them to be up to learn the
    /// current topology.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .seed_masters
            .iter()
            .map(|&i| format!("127.0.0.1:{}", self.nodes[i].port()))
            .collect();
        format!("redis+cluster://{}/", seeds.join(","))
    }

    /// `redis://127.0.0.1:<port>/` of every node, in node order.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes; an index into this slice names a node in every other
    /// method.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `i`, to kill or restart it by hand (the cluster then notices on
    /// its own; [`RedisCluster::wait_until_ok`] waits for it).
    ///
    /// # Panics
    ///
    /// When `i` is not a node's index.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The node id of node `i`, as `CLUSTER NODES` lists it.
    ///
    /// # Panics
    ///
    /// When `i` is not a node's index.
    pub fn node_id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The node that serves `slot`, as the first node that answers sees it
    /// (while a failover or migration is under way, views may differ).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a slot beyond 16383; when no node answers, or the
    /// answering node sees no master serving the slot.
    pub fn master_of_slot(&self, slot: u16) -> io::Result<usize> {
        check_slot(slot)?;
        let (viewer, topology) = self.current_view()?;
        topology.owners[usize::from(slot)].ok_or_else(|| {
            io::Error::other(format!(
                "node {viewer} (port {}) sees no master serving slot {slot}",
                self.nodes[viewer].port()
            ))
        })
    }

    /// The replicas of node `master`, as the first node that answers sees
    /// them, in node order; those that are down count too.
    ///
    /// # Errors
    ///
    /// When no node answers.
    pub fn replicas_of(&self, master: usize) -> io::Result<Vec<usize>> {
        let (_, topology) = self.current_view()?;
        Ok(topology.replicas_of(master))
    }

    /// Kills master `master` with SIGKILL and waits (up to 30 s) until one of
    /// its replicas serves all its slots and every node that is up says
    /// `cluster_state:ok` and agrees on the topology. Returns the promoted
    /// replica.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the node is not a master serving slots, has no
    /// replica that is up, or too few other masters are up to elect a
    /// replica; `TimedOut` when no replica took over in time.
    pub fn kill_master_and_wait_for_failover(&mut self, master: usize) -> io::Result<usize> {
        self.check_index(master)?;
        let (viewer, topology) = self.current_view()?;
        let port = self.nodes[master].port();
        if topology.roles[master] != Some(Role::Master) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("node {master} (port {port}) is not a master, as node {viewer} sees it"),
            ));
        }
        let slots: Vec<usize> = (0..usize::from(SLOT_COUNT))
            .filter(|&slot| topology.owners[slot] == Some(master))
            .collect();
        if slots.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "master {master} (port {port}) serves no slot: there is nothing to fail over"
                ),
            ));
        }
        let candidates: Vec<usize> = topology
            .replicas_of(master)
            .into_iter()
            .filter(|&r| !topology.failing[r])
            .collect();
        if candidates.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("master {master} (port {port}) has no replica that is up to promote"),
            ));
        }
        let voters: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| topology.roles[i] == Some(Role::Master) && topology.serves_slots(i))
            .collect();
        let voting = voters
            .iter()
            .filter(|&&i| i != master && !topology.failing[i])
            .count();
        if voting <= voters.len() / 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a failover needs a majority of the {} masters serving slots to vote, \
                     and only {voting} would be left up",
                    voters.len()
                ),
            ));
        }

        self.nodes[master].kill()?;
        poll("a replica to take over from the killed master", || {
            let topology = self.agreement()?;
            let new_master = topology.owners[slots[0]]
                .ok_or_else(|| format!("slot {} is not served", slots[0]))?;
            if !candidates.contains(&new_master) {
                return Err(format!(
                    "slot {} is still served by node {new_master}",
                    slots[0]
                ));
            }
            match slots
                .iter()
                .find(|&&slot| topology.owners[slot] != Some(new_master))
            {
                Some(slot) => Err(format!(
                    "slot {slot} is not served by the new master {new_master}"
                )),
                None => Ok(new_master),
            }
        })
    }

    /// Restarts node `i` on the same port and directory (it is killed first
    /// if it runs; `nodes.conf` keeps its identity) and waits (up to 30 s)
    /// until it rejoined: it and every other node that is up say
    /// `cluster_state:ok`, all agree on the topology, none sees another as
    /// failing, and, if it came back as a replica, its sync is done. A
    /// master that was failed over meanwhile rejoins as a replica of the
    /// node that took over its slots.
    ///
    /// # Errors
    ///
    /// As [`RedisServer::restart`]; `TimedOut` when it does not rejoin in
    /// time.
    pub fn restart_node(&mut self, i: usize) -> io::Result<()> {
        self.check_index(i)?;
        self.nodes[i].restart()?;
        let id = self.ids[i].clone();
        poll("the restarted node to rejoin", || {
            let topology = self.agreement()?;
            if topology.up[i] {
                Ok(())
            } else {
                Err(format!("node {i} ({id}) does not answer"))
            }
        })
    }

    /// Waits (up to 30 s) until every node that is up says
    /// `cluster_state:ok`, sees every other node that is up as healthy, and
    /// all of them agree on who serves each slot and who replicates whom, and
    /// every replica that is up has its replication link up.
    ///
    /// # Errors
    ///
    /// `TimedOut`, naming the last thing that was not yet right.
    pub fn wait_until_ok(&self) -> io::Result<()> {
        poll("the cluster to be ok", || self.agreement().map(drop))
    }

    /// Shuts every node down gracefully (`SHUTDOWN`, which saves what the
    /// persistence settings say). The handles stay usable:
    /// [`RedisCluster::restart_node`] brings a node back.
    ///
    /// # Errors
    ///
    /// The first node's error, after trying all of them.
    pub fn shutdown(&mut self) -> io::Result<()> {
        let mut first_error = None;
        for node in &mut self.nodes {
            if let Err(err) = node.shutdown() {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn check_index(&self, i: usize) -> io::Result<()> {
        if i < self.nodes.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("there is no node {i}: the cluster has {}", self.nodes.len()),
            ))
        }
    }
}

/// The hash slot of `key`, computed locally as Redis Cluster does: CRC16
/// (XMODEM) modulo 16384, of only the part between the first `{` and the
/// next `}` when that part is not empty (the hash tag).
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOT_COUNT
}

/// A private cluster for a test. When `redis-server` or `redis-cli` is
/// missing, prints a loud skip line naming `test_name` and returns `None`.
///
/// # Panics
///
/// Under `CI=true` when either binary is missing, and whenever both exist
/// but the cluster does not form.
pub fn private_cluster_or_skip(
    test_name: &str,
    builder: RedisClusterBuilder,
) -> Option<RedisCluster> {
    if find_redis_server().is_none() || find_redis_cli().is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        if ci {
            panic!(
                "{test_name}: no redis-server or redis-cli on PATH and CI=true: the Redis \
                 Cluster tests must run in CI (install them, e.g. `apt-get install redis-server`)"
            );
        }
        eprintln!(
            "\n!!!!! SKIPPED {test_name}: no redis-server or redis-cli on PATH (install \
             redis-server to run the Redis Cluster tests) !!!!!\n"
        );
        return None;
    }
    match builder.start() {
        Ok(cluster) => Some(cluster),
        Err(err) => {
            panic!("{test_name}: redis-server is installed but the cluster did not form: {err}")
        }
    }
}

/// The `redis-cli` binary next to `redis-server`, or else on `PATH`.
pub fn find_redis_cli() -> Option<PathBuf> {
    let beside = find_redis_server()
        .and_then(|server| server.parent().map(|dir| dir.join("redis-cli")))
        .filter(|candidate| candidate.is_file());
    beside.or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-cli"))
            .find(|candidate| candidate.is_file())
    })
}

fn check_slot(slot: u16) -> io::Result<()> {
    if slot < SLOT_COUNT {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("slot {slot} does not exist: slots are 0 to 16383"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc16_xmodem(bytes: &[u8]) -> u16 {
        crc16::State::<crc16::XMODEM>::calculate(bytes)
    }

    #[test]
    fn key_slots_match_the_redis_cluster_specification() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b""), 0);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // Only the first `{` counts, up to the next `}`.
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        // An empty tag, or none closed, hashes the whole key.
        assert_eq!(
            key_slot(b"foo{}{bar}"),
            crc16_xmodem(b"foo{}{bar}") % SLOT_COUNT
        );
        assert_eq!(key_slot(b"foo{bar"), crc16_xmodem(b"foo{bar") % SLOT_COUNT);
    }
}
