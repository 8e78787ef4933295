//! A private Redis Cluster for tests: masters and replicas, each a
//! [`RedisServer`] on its own loopback port and in its own directory, joined
//! by `redis-cli --cluster create`, with the operations a test of a cluster
//! client needs: kill a master and wait for its replica to take over,
//! restart a node, move a slot (at once, or step by step while the test
//! writes).
//!
//! Size: about 1,420 lines, over the house limit of about 700: the RESP
//! reader, the topology checks and the slot migration live here with the
//! cluster; splitting them into a module directory is the next step.
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

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::{AppendFsync, RedisServer, find_redis_server, free_port};

/// The number of hash slots of a Redis Cluster.
pub const SLOT_COUNT: u16 = 16384;

/// How long the cluster may take to form, to fail over, or to agree again
/// after a change.
const AGREEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the nodes are asked while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many fresh cluster bus ports are tried per node.
const BUS_PORT_ATTEMPTS: usize = 5;
/// How many keys [`RedisCluster::migrate_slot`] moves per `MIGRATE`.
const MIGRATE_BATCH: usize = 100;
/// The `MIGRATE` timeout, in milliseconds.
const MIGRATE_TIMEOUT_MS: &str = "5000";
/// How long one command may take to connect and to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

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

    /// Starts `masters * (1 + replicas_per_master)` nodes, joins them with
    /// `redis-cli --cluster create`, and waits until the cluster is ready:
    /// every node says `cluster_state:ok`, all agree on the slots and the
    /// replicas, and every replica finished its initial sync.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for fewer than 3 masters or a zero node timeout;
    /// `NotFound` without `redis-server` or `redis-cli`; any error starting a
    /// node; the output of `redis-cli` when it fails; `TimedOut` when the
    /// cluster does not become ready within 30 s.
    pub fn start(self) -> io::Result<RedisCluster> {
        if self.masters < 3 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a Redis Cluster needs at least 3 masters (redis-cli --cluster create \
                     refuses fewer), not {}",
                    self.masters
                ),
            ));
        }
        let timeout_ms = self.node_timeout.as_millis();
        if timeout_ms == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the node timeout must be at least 1 ms, not {:?}",
                    self.node_timeout
                ),
            ));
        }
        let cli = find_redis_cli().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no redis-cli binary next to redis-server or on PATH",
            )
        })?;
        let count = self.masters * (1 + self.replicas_per_master);
        let nodes = std::thread::scope(|scope| {
            let starting: Vec<_> = (0..count)
                .map(|_| scope.spawn(|| self.start_node(timeout_ms)))
                .collect();
            starting
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("starting a node panicked")))
                })
                .collect::<io::Result<Vec<RedisServer>>>()
        })?;

        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        let output = create
            .arg("--cluster-replicas")
            .arg(self.replicas_per_master.to_string())
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()?;
        let stdout = without_colours(&String::from_utf8_lossy(&output.stdout));
        if !output.status.success() || !stdout.contains("All 16384 slots covered") {
            return Err(io::Error::other(format!(
                "`redis-cli --cluster create` failed ({}):\n{stdout}{}",
                output.status,
                without_colours(&String::from_utf8_lossy(&output.stderr))
            )));
        }

        let ids = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| text(i, node.port(), &["CLUSTER", "MYID"]))
            .collect::<io::Result<Vec<String>>>()?;
        let mut cluster = RedisCluster {
            nodes,
            ids,
            seed_masters: Vec::new(),
        };
        let masters = self.masters;
        let replicas = self.replicas_per_master;
        let topology = poll("the new cluster to be ready", || {
            let topology = cluster.agreement()?;
            let mut found = 0;
            for (i, role) in topology.roles.iter().enumerate() {
                if *role == Some(Role::Master) {
                    found += 1;
                    let attached = topology.replicas_of(i).len();
                    if attached != replicas {
                        return Err(format!(
                            "master {i} has {attached} replicas, not {replicas}"
                        ));
                    }
                }
            }
            if found != masters {
                return Err(format!("{found} masters, not {masters}"));
            }
            Ok(topology)
        })?;
        cluster.seed_masters = (0..cluster.nodes.len())
            .filter(|&i| topology.roles[i] == Some(Role::Master))
            .collect();
        Ok(cluster)
    }

    /// Starts one node, retrying with a fresh cluster bus port when the
    /// chosen one was taken meanwhile.
    fn start_node(&self, timeout_ms: u128) -> io::Result<RedisServer> {
        let mut last_error = None;
        for _ in 0..BUS_PORT_ATTEMPTS {
            let mut builder = RedisServer::builder()
                .appendonly(self.appendonly)
                .config("cluster-enabled", "yes")
                .config("cluster-config-file", "nodes.conf")
                .config("cluster-node-timeout", timeout_ms.to_string())
                .config("cluster-port", free_port()?.to_string())
                .config("cluster-replica-validity-factor", "0")
                .config("cluster-require-full-coverage", "yes")
                .config("cluster-allow-replica-migration", "no")
                .config("repl-diskless-sync-delay", "0");
            if let Some(fsync) = self.appendfsync {
                builder = builder.appendfsync(fsync);
            }
            match builder.start() {
                Ok(node) => return Ok(node),
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(err),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("a cluster node did not start")))
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

    /// Moves `slot` to master `to` with the standard live migration
    /// (`CLUSTER SETSLOT … IMPORTING` on the target, `MIGRATING` on the
    /// source, `CLUSTER GETKEYSINSLOT` and `MIGRATE … KEYS` in batches of 100,
    /// then `CLUSTER SETSLOT … NODE` on the target, the source and every other
    /// master), and waits until every node that is up agrees that `to` serves
    /// it. A no-op when `to` serves it already.
    ///
    /// # Errors
    ///
    /// As [`RedisCluster::begin_migration`] and [`SlotMigration::finish`].
    pub fn migrate_slot(&mut self, slot: u16, to: usize) -> io::Result<()> {
        self.check_index(to)?;
        if self.master_of_slot(slot)? == to {
            return Ok(());
        }
        self.begin_migration(slot, to)?.finish(self)
    }

    /// Starts moving `slot` to master `to`: marks it `IMPORTING` on the target
    /// and `MIGRATING` on the source, after which the source still serves
    /// the keys it has and redirects clients with `-ASK` for the others. The
    /// returned handle moves the keys ([`SlotMigration::step`]) and ends the
    /// migration ([`SlotMigration::finish`]); until then the slot stays in
    /// migration.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a slot beyond 16383, a `to` that is not a master,
    /// or one that serves the slot already; the refusal of `CLUSTER
    /// SETSLOT`.
    pub fn begin_migration(&mut self, slot: u16, to: usize) -> io::Result<SlotMigration> {
        check_slot(slot)?;
        self.check_index(to)?;
        let (viewer, topology) = self.current_view()?;
        let from = topology.owners[usize::from(slot)].ok_or_else(|| {
            io::Error::other(format!("node {viewer} sees no master serving slot {slot}"))
        })?;
        if from == to {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("node {to} serves slot {slot} already: there is nothing to migrate"),
            ));
        }
        if topology.roles[to] != Some(Role::Master) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("node {to} is not a master: only a master can import slot {slot}"),
            ));
        }
        let slot_arg = slot.to_string();
        expect_ok(
            to,
            self.nodes[to].port(),
            &[
                "CLUSTER",
                "SETSLOT",
                &slot_arg,
                "IMPORTING",
                &self.ids[from],
            ],
        )?;
        expect_ok(
            from,
            self.nodes[from].port(),
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &self.ids[to]],
        )?;
        Ok(SlotMigration { slot, from, to })
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

    /// The topology as the first node that answers sees it.
    fn current_view(&self) -> io::Result<(usize, Topology)> {
        let mut last_error = None;
        for (i, node) in self.nodes.iter().enumerate() {
            match text(i, node.port(), &["CLUSTER", "NODES"]) {
                Ok(nodes) => {
                    let topology = parse_cluster_nodes(&nodes)
                        .and_then(|entries| self.topology(&entries))
                        .map_err(|reason| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("CLUSTER NODES of node {i}: {reason}"),
                            )
                        })?;
                    return Ok((i, topology));
                }
                Err(err) => last_error = Some(err),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotConnected,
            format!(
                "no node of the cluster answers (the last error: {})",
                last_error.map_or_else(|| "there are no nodes".to_owned(), |e| e.to_string())
            ),
        ))
    }

    /// What the nodes that are up agree on, or the first disagreement or
    /// problem found.
    fn agreement(&self) -> Result<Topology, String> {
        let mut views = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let port = node.port();
            match text(i, port, &["CLUSTER", "NODES"]) {
                Ok(nodes) => {
                    let entries = parse_cluster_nodes(&nodes)
                        .map_err(|reason| format!("CLUSTER NODES of node {i}: {reason}"))?;
                    let topology = self
                        .topology(&entries)
                        .map_err(|reason| format!("node {i}: {reason}"))?;
                    views.push((i, topology));
                }
                Err(err) if is_down(&err) => {}
                Err(err) => return Err(err.to_string()),
            }
        }
        let up: Vec<usize> = views.iter().map(|(i, _)| *i).collect();
        let Some((first, reference)) = views.first() else {
            return Err("no node is up".to_owned());
        };
        for (i, topology) in &views {
            let port = self.nodes[*i].port();
            let info = text(*i, port, &["CLUSTER", "INFO"]).map_err(|e| e.to_string())?;
            let state = info_field(&info, "cluster_state").unwrap_or("unknown");
            if state != "ok" {
                return Err(format!("node {i} says cluster_state:{state}"));
            }
            if topology.myself != Some(*i) {
                return Err(format!("node {i} does not list itself as myself"));
            }
            for &j in &up {
                if topology.roles[j].is_none() {
                    return Err(format!("node {i} does not know node {j}"));
                }
                if topology.failing[j] {
                    return Err(format!("node {i} sees node {j} as failing"));
                }
                if topology.roles[j] != reference.roles[j] {
                    return Err(format!(
                        "node {i} sees node {j} as {:?}, node {first} as {:?}",
                        topology.roles[j], reference.roles[j]
                    ));
                }
            }
            if let Some(slot) =
                (0..usize::from(SLOT_COUNT)).find(|&s| topology.owners[s] != reference.owners[s])
            {
                return Err(format!(
                    "node {i} sees slot {slot} served by {:?}, node {first} by {:?}",
                    topology.owners[slot], reference.owners[slot]
                ));
            }
            if let Some(Role::Replica(master)) = topology.roles[*i] {
                let replication =
                    text(*i, port, &["INFO", "replication"]).map_err(|e| e.to_string())?;
                let link = info_field(&replication, "master_link_status").unwrap_or("unknown");
                if link != "up" {
                    return Err(format!(
                        "replica {i} of node {master} has master_link_status:{link}"
                    ));
                }
            }
        }
        let mut agreed = reference.clone();
        for i in up {
            agreed.up[i] = true;
        }
        Ok(agreed)
    }

    /// Maps the node ids of `CLUSTER NODES` to node indices.
    fn topology(&self, entries: &[NodeEntry]) -> Result<Topology, String> {
        let count = self.nodes.len();
        let mut topology = Topology {
            owners: vec![None; usize::from(SLOT_COUNT)],
            roles: vec![None; count],
            failing: vec![false; count],
            up: vec![false; count],
            myself: None,
        };
        let index_of = |id: &str| self.ids.iter().position(|known| known == id);
        for entry in entries {
            if entry.has_flag("handshake") {
                return Err(format!("still in handshake with {}", entry.id));
            }
            let i =
                index_of(&entry.id).ok_or_else(|| format!("an unknown node id {}", entry.id))?;
            if entry.has_flag("myself") {
                topology.myself = Some(i);
            }
            topology.failing[i] =
                entry.has_flag("fail") || entry.has_flag("fail?") || entry.has_flag("noaddr");
            topology.roles[i] = if entry.has_flag("master") {
                Some(Role::Master)
            } else if entry.has_flag("slave") {
                let master = entry
                    .master
                    .as_deref()
                    .ok_or_else(|| format!("node {i} is a replica of no master"))?;
                Some(Role::Replica(index_of(master).ok_or_else(|| {
                    format!("node {i} replicates an unknown node {master}")
                })?))
            } else {
                return Err(format!("node {i} is neither master nor replica"));
            };
            for &(start, end) in &entry.slots {
                for slot in start..=end {
                    topology.owners[usize::from(slot)] = Some(i);
                }
            }
        }
        Ok(topology)
    }
}

/// A slot migration under way, from [`RedisCluster::begin_migration`]. Until
/// [`SlotMigration::finish`] the slot stays `MIGRATING`/`IMPORTING`.
#[derive(Debug)]
#[must_use = "the slot stays in migration until `finish` is called"]
pub struct SlotMigration {
    slot: u16,
    from: usize,
    to: usize,
}

impl SlotMigration {
    /// The slot being moved.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The node the slot is moving from.
    pub fn from(&self) -> usize {
        self.from
    }

    /// The node the slot is moving to.
    pub fn to(&self) -> usize {
        self.to
    }

    /// Moves up to `max_keys` keys of the slot from the source to the
    /// target with one `MIGRATE … KEYS`, and returns how many keys were
    /// handed to it (0 once the source has no key of the slot left).
    ///
    /// # Errors
    ///
    /// When a node cannot be reached or `MIGRATE` fails (for example with
    /// `BUSYKEY` when the target already has one of the keys).
    pub fn step(&mut self, cluster: &RedisCluster, max_keys: usize) -> io::Result<usize> {
        if max_keys == 0 {
            return Ok(0);
        }
        let source = cluster.nodes[self.from].port();
        let target = cluster.nodes[self.to].port();
        let keys = match cluster.query(
            self.from,
            &[
                "CLUSTER",
                "GETKEYSINSLOT",
                &self.slot.to_string(),
                &max_keys.to_string(),
            ],
        )? {
            Reply::Array(keys) => keys
                .into_iter()
                .map(|key| match key {
                    Reply::Bulk(key) => Ok(key),
                    other => Err(io::Error::other(format!(
                        "CLUSTER GETKEYSINSLOT on node {} gave {other:?} as a key",
                        self.from
                    ))),
                })
                .collect::<io::Result<Vec<Vec<u8>>>>()?,
            other => {
                return Err(io::Error::other(format!(
                    "CLUSTER GETKEYSINSLOT {} on node {} answered {other:?}",
                    self.slot, self.from
                )));
            }
        };
        if keys.is_empty() {
            return Ok(0);
        }
        let target_port = target.to_string();
        let mut args: Vec<&[u8]> = vec![
            b"MIGRATE",
            b"127.0.0.1",
            target_port.as_bytes(),
            b"",
            b"0",
            MIGRATE_TIMEOUT_MS.as_bytes(),
            b"KEYS",
        ];
        args.extend(keys.iter().map(Vec::as_slice));
        match cluster.query(self.from, &args)? {
            Reply::Status(status) if status == "OK" || status == "NOKEY" => Ok(keys.len()),
            other => Err(io::Error::other(format!(
                "MIGRATE of {} keys of slot {} from port {source} to port {target} answered {other:?}",
                keys.len(),
                self.slot
            ))),
        }
    }

    /// Moves the keys left, assigns the slot to the target with `CLUSTER
    /// SETSLOT … NODE` on the target, the source and every other master that
    /// is up, and waits (up to 30 s) until every node that is up agrees.
    ///
    /// # Errors
    ///
    /// As [`SlotMigration::step`]; the refusal of `CLUSTER SETSLOT`;
    /// `TimedOut` when the nodes do not agree in time.
    pub fn finish(mut self, cluster: &RedisCluster) -> io::Result<()> {
        while self.step(cluster, MIGRATE_BATCH)? > 0 {}
        let slot = self.slot.to_string();
        let target_id = &cluster.ids[self.to];
        let assign = ["CLUSTER", "SETSLOT", slot.as_str(), "NODE", target_id];
        expect_ok(self.to, cluster.nodes[self.to].port(), &assign)?;
        expect_ok(self.from, cluster.nodes[self.from].port(), &assign)?;
        let (_, topology) = cluster.current_view()?;
        for i in 0..cluster.nodes.len() {
            if i == self.to || i == self.from || topology.roles[i] != Some(Role::Master) {
                continue;
            }
            match expect_ok(i, cluster.nodes[i].port(), &assign) {
                Err(err) if is_down(&err) => {}
                other => other?,
            }
        }
        let to = self.to;
        let slot_index = usize::from(self.slot);
        poll("the nodes to agree on the migrated slot", || {
            let topology = cluster.agreement()?;
            match topology.owners[slot_index] {
                Some(owner) if owner == to => Ok(()),
                owner => Err(format!(
                    "slot {slot_index} is served by {owner:?}, not node {to}"
                )),
            }
        })
    }
}

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
    crc16_xmodem(hashed) % SLOT_COUNT
}

/// CRC16-CCITT as Redis uses it (XMODEM: polynomial 0x1021, initial 0).
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
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

/// A node's role, by node index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Master,
    Replica(usize),
}

/// One node's view of the cluster, by node index.
#[derive(Debug, Clone)]
struct Topology {
    /// The master serving each slot.
    owners: Vec<Option<usize>>,
    /// Each node's role; `None` for a node not in the view.
    roles: Vec<Option<Role>>,
    /// Whether each node is flagged `fail`, `fail?` or `noaddr`.
    failing: Vec<bool>,
    /// Whether each node answered (set only by [`RedisCluster::agreement`]).
    up: Vec<bool>,
    /// The node whose view this is.
    myself: Option<usize>,
}

impl Topology {
    fn replicas_of(&self, master: usize) -> Vec<usize> {
        (0..self.roles.len())
            .filter(|&i| self.roles[i] == Some(Role::Replica(master)))
            .collect()
    }

    fn serves_slots(&self, master: usize) -> bool {
        self.owners.contains(&Some(master))
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeEntry {
    id: String,
    flags: Vec<String>,
    master: Option<String>,
    /// Slot ranges served, inclusive; migration markers (`[…]`) left out.
    slots: Vec<(u16, u16)>,
}

impl NodeEntry {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport> <flags> <master> <ping>
/// <pong> <epoch> <link> <slot>…`.
fn parse_cluster_nodes(text: &str) -> Result<Vec<NodeEntry>, String> {
    let mut entries = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("a line with {} fields: {line:?}", fields.len()));
        }
        let mut slots = Vec::new();
        for field in &fields[8..] {
            if field.starts_with('[') {
                continue;
            }
            let (start, end) = field.split_once('-').unwrap_or((field, field));
            let parse = |s: &str| {
                s.parse::<u16>()
                    .ok()
                    .filter(|&slot| slot < SLOT_COUNT)
                    .ok_or_else(|| format!("a bad slot range {field:?} in {line:?}"))
            };
            let (start, end) = (parse(start)?, parse(end)?);
            if start > end {
                return Err(format!("a bad slot range {field:?} in {line:?}"));
            }
            slots.push((start, end));
        }
        entries.push(NodeEntry {
            id: fields[0].to_owned(),
            flags: fields[2].split(',').map(str::to_owned).collect(),
            master: (fields[3] != "-").then(|| fields[3].to_owned()),
            slots,
        });
    }
    Ok(entries)
}

/// `text` without the ANSI colour sequences (`ESC [ … m`) that `redis-cli
/// --cluster` prints even to a pipe.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `name:value` in `INFO` or `CLUSTER INFO` text.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
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

/// Whether `err` says the node is not running (nothing listens on its port).
fn is_down(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::ConnectionRefused
}

/// Waits until `attempt` succeeds, asking every [`POLL_INTERVAL`] for up to
/// [`AGREEMENT_TIMEOUT`]; the error names `what` and the last reason.
fn poll<T>(what: &str, mut attempt: impl FnMut() -> Result<T, String>) -> io::Result<T> {
    let started = Instant::now();
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(reason) if started.elapsed() >= AGREEMENT_TIMEOUT => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("waited {AGREEMENT_TIMEOUT:?} for {what}; the last problem: {reason}"),
                ));
            }
            // Polling real processes, with a deadline.
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// Sends a command to node `i` and returns its bulk or simple string reply
/// as text; an error reply is an error.
fn text(i: usize, port: u16, args: &[&str]) -> io::Result<String> {
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
fn expect_ok(i: usize, port: u16, args: &[&str]) -> io::Result<()> {
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
    let mut out = Vec::new();
    for args in commands {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in *args {
            let arg = arg.as_ref();
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }
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

/// Reads one line (at most 64 KiB) without its CRLF.
fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the node closed the connection",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a reply line without CRLF (or longer than 64 KiB)",
        ));
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn cluster_nodes_lines_are_parsed() {
        let text = "\
e6f1 127.0.0.1:31001@31101 myself,master - 0 1796082829000 1 connected 0-5460 7000 [5461->-3d39]\n\
430c 127.0.0.1:31004@31104 slave e6f1 0 1796082829534 1 connected\n\
3d39 127.0.0.1:31002@31102,host master,fail? - 0 1796082829433 2 connected 5461-10922 [5461-<-e6f1]\n";
        let entries = parse_cluster_nodes(text).expect("valid");
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].id, "e6f1");
        assert!(entries[0].has_flag("myself") && entries[0].has_flag("master"));
        assert_eq!(entries[0].master, None);
        assert_eq!(entries[0].slots, vec![(0, 5460), (7000, 7000)]);
        assert_eq!(entries[1].master.as_deref(), Some("e6f1"));
        assert!(entries[1].slots.is_empty());
        assert!(entries[2].has_flag("fail?"));
        assert_eq!(entries[2].slots, vec![(5461, 10922)]);

        assert!(parse_cluster_nodes("abc 127.0.0.1:1@2 master").is_err());
        assert!(parse_cluster_nodes("a b master - 0 0 1 connected 16384").is_err());
        assert!(parse_cluster_nodes("a b master - 0 0 1 connected 9-3").is_err());
    }

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

    #[test]
    fn colours_are_removed_from_redis_cli_output() {
        assert_eq!(
            without_colours("\u{1b}[29;1m>>> Check\n\u{1b}[0m\u{1b}[32;1m[OK] All\u{1b}[0m"),
            ">>> Check\n[OK] All"
        );
    }

    #[test]
    fn info_fields_are_found() {
        let info = "# Cluster\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\n";
        assert_eq!(info_field(info, "cluster_state"), Some("ok"));
        assert_eq!(info_field(info, "cluster_size"), None);
    }
}
