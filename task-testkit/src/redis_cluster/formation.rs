//! Forming the cluster: [`RedisClusterBuilder::start`] starts the nodes
//! (each with a free cluster bus port), joins them with `redis-cli --cluster
//! create`, and waits until every node agrees the cluster is ready.

use std::io;
use std::process::{Command, Stdio};

use crate::redis_server::{RedisServer, free_port};

use super::topology::{Role, poll};
use super::wire::text;
use super::{RedisCluster, RedisClusterBuilder, find_redis_cli};

/// How many fresh cluster bus ports are tried per node.
const BUS_PORT_ATTEMPTS: usize = 5;

impl RedisClusterBuilder {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_removed_from_redis_cli_output() {
        assert_eq!(
            without_colours("\u{1b}[29;1m>>> Check\n\u{1b}[0m\u{1b}[32;1m[OK] All\u{1b}[0m"),
            ">>> Check\n[OK] All"
        );
    }
}
