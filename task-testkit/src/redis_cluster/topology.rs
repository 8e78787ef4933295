//! What the nodes say about the cluster, and whether they agree: `CLUSTER
//! NODES` parsed into a [`Topology`] by node index, the view of the first
//! node that answers ([`RedisCluster::current_view`]), the agreement of all
//! the nodes that are up ([`RedisCluster::agreement`]), and [`poll`], which
//! waits for it.

use std::io;
use std::time::{Duration, Instant};

use super::wire::{is_down, text};
use super::{RedisCluster, SLOT_COUNT};

/// How long the cluster may take to form, to fail over, or to agree again
/// after a change.
const AGREEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the nodes are asked while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

impl RedisCluster {
    /// The topology as the first node that answers sees it.
    pub(super) fn current_view(&self) -> io::Result<(usize, Topology)> {
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
    pub(super) fn agreement(&self) -> Result<Topology, String> {
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

/// A node's role, by node index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Master,
    Replica(usize),
}

/// One node's view of the cluster, by node index.
#[derive(Debug, Clone)]
pub(super) struct Topology {
    /// The master serving each slot.
    pub(super) owners: Vec<Option<usize>>,
    /// Each node's role; `None` for a node not in the view.
    pub(super) roles: Vec<Option<Role>>,
    /// Whether each node is flagged `fail`, `fail?` or `noaddr`.
    pub(super) failing: Vec<bool>,
    /// Whether each node answered (set only by [`RedisCluster::agreement`]).
    pub(super) up: Vec<bool>,
    /// The node whose view this is.
    myself: Option<usize>,
}

impl Topology {
    pub(super) fn replicas_of(&self, master: usize) -> Vec<usize> {
        (0..self.roles.len())
            .filter(|&i| self.roles[i] == Some(Role::Replica(master)))
            .collect()
    }

    pub(super) fn serves_slots(&self, master: usize) -> bool {
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

/// The value of `name:value` in `INFO` or `CLUSTER INFO` text.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}

/// Waits until `attempt` succeeds, asking every [`POLL_INTERVAL`] for up to
/// [`AGREEMENT_TIMEOUT`]; the error names `what` and the last reason.
pub(super) fn poll<T>(what: &str, mut attempt: impl FnMut() -> Result<T, String>) -> io::Result<T> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn info_fields_are_found() {
        let info = "# Cluster\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\n";
        assert_eq!(info_field(info, "cluster_state"), Some("ok"));
        assert_eq!(info_field(info, "cluster_size"), None);
    }
}
