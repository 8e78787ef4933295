//! Moving a slot from one master to another with the standard live
//! migration: [`RedisCluster::migrate_slot`] at once, or
//! [`RedisCluster::begin_migration`] and the [`SlotMigration`] it returns,
//! step by step while the test writes.

use std::io;

use super::topology::{Role, poll};
use super::wire::{Reply, expect_ok, is_down};
use super::{RedisCluster, check_slot};

/// How many keys [`RedisCluster::migrate_slot`] moves per `MIGRATE`.
const MIGRATE_BATCH: usize = 100;
/// The `MIGRATE` timeout, in milliseconds.
const MIGRATE_TIMEOUT_MS: &str = "5000";

impl RedisCluster {
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
