//! The private Redis Cluster against real `redis-server` processes: it forms
//! and routes keys, its local `key_slot` agrees with the server's, killing a
//! master promotes its replica with the data, a restarted node rejoins, and
//! slots move with their keys, at once or step by step while clients write.

use std::time::Instant;

use task_testkit::redis_cluster::{
    RedisCluster, RedisClusterBuilder, Reply, key_slot, private_cluster_or_skip,
};

fn cluster(test: &str, builder: RedisClusterBuilder) -> Option<RedisCluster> {
    let started = Instant::now();
    let cluster = private_cluster_or_skip(test, builder)?;
    eprintln!("{test}: the cluster formed in {:?}", started.elapsed());
    Some(cluster)
}

fn bulk(value: &str) -> Reply {
    Reply::Bulk(value.as_bytes().to_vec())
}

/// The masters, in node order.
fn masters(cluster: &RedisCluster) -> Vec<usize> {
    (0..cluster.nodes().len())
        .filter(|&i| {
            cluster
                .query(i, &["ROLE"])
                .is_ok_and(|role| matches!(role, Reply::Array(parts) if parts.first() == Some(&bulk("master"))))
        })
        .collect()
}

/// A master other than `master`.
fn other_master(cluster: &RedisCluster, master: usize) -> usize {
    masters(cluster)
        .into_iter()
        .find(|&m| m != master)
        .expect("a second master")
}

fn keys_in_slot(cluster: &RedisCluster, node: usize, slot: u16) -> i64 {
    match cluster
        .query(node, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
        .expect("CLUSTER COUNTKEYSINSLOT")
    {
        Reply::Integer(n) => n,
        other => panic!("CLUSTER COUNTKEYSINSLOT answered {other:?}"),
    }
}

#[test]
fn the_cluster_forms_and_serves_a_key_written_through_any_node() {
    let Some(cluster) = cluster("cluster forms", RedisCluster::builder()) else {
        return;
    };
    assert_eq!(cluster.nodes().len(), 6);
    let masters = masters(&cluster);
    assert_eq!(masters.len(), 3, "3 masters");
    for &master in &masters {
        assert_eq!(
            cluster.replicas_of(master).expect("replicas").len(),
            1,
            "master {master} has one replica"
        );
    }
    let seeds: Vec<String> = masters
        .iter()
        .map(|&m| format!("127.0.0.1:{}", cluster.nodes()[m].port()))
        .collect();
    assert_eq!(
        cluster.url(),
        format!("redis+cluster://{}/", seeds.join(","))
    );
    let seed_urls = cluster.seed_urls();
    assert_eq!(seed_urls.len(), 6);
    assert_eq!(
        seed_urls[0],
        format!("redis://127.0.0.1:{}/", cluster.nodes()[0].port())
    );

    // Written through a node that (for some keys) does not serve the slot:
    // redis-cli -c follows MOVED, as a cluster client does.
    for key in ["alpha", "beta", "gamma", "{user1000}.following"] {
        let writer = usize::from(key_slot(key.as_bytes())) % cluster.nodes().len();
        assert_eq!(
            cluster
                .redis_cli(writer, &["SET", key, &format!("v-{key}")])
                .expect("SET"),
            "OK"
        );
        for reader in 0..cluster.nodes().len() {
            assert_eq!(
                cluster.redis_cli(reader, &["GET", key]).expect("GET"),
                format!("v-{key}"),
                "{key} read through node {reader}"
            );
        }
        // Sent straight to the nodes: the owner answers, another master
        // redirects to the owner.
        let slot = key_slot(key.as_bytes());
        let owner = cluster.master_of_slot(slot).expect("an owner");
        assert_eq!(
            cluster.query(owner, &["GET", key]).expect("GET"),
            bulk(&format!("v-{key}"))
        );
        let other = other_master(&cluster, owner);
        assert_eq!(
            cluster.query(other, &["GET", key]).expect("GET"),
            Reply::Error(format!(
                "MOVED {slot} 127.0.0.1:{}",
                cluster.nodes()[owner].port()
            ))
        );
    }
    cluster.wait_until_ok().expect("still ok");
}

#[test]
fn key_slot_matches_cluster_keyslot() {
    let builder = RedisCluster::builder().replicas_per_master(0);
    let Some(cluster) = cluster("key_slot matches", builder) else {
        return;
    };
    for key in [
        "",
        "foo",
        "123456789",
        "{user1000}.following",
        "{user1000}.followers",
        "foo{bar}{zap}",
        "foo{{bar}}zap",
        "foo{}{bar}",
        "foo{bar",
        "t-threads-{0193a1b2}:meta",
        "\u{e9}t\u{e9}",
    ] {
        let expected = cluster
            .query(0, &["CLUSTER", "KEYSLOT", key])
            .expect("CLUSTER KEYSLOT");
        assert_eq!(
            Reply::Integer(i64::from(key_slot(key.as_bytes()))),
            expected,
            "slot of {key:?}"
        );
    }
    assert_eq!(
        key_slot(b"{user1000}.following"),
        key_slot(b"{user1000}.followers")
    );
}

#[test]
fn killing_a_master_promotes_its_replica_which_then_serves_the_slot() {
    let Some(mut cluster) = cluster("failover", RedisCluster::builder()) else {
        return;
    };
    let key = "failover-key";
    let slot = key_slot(key.as_bytes());
    let master = cluster.master_of_slot(slot).expect("an owner");
    let replicas = cluster.replicas_of(master).expect("replicas");
    assert_eq!(replicas.len(), 1);
    let set: &[&str] = &["SET", key, "before-the-crash"];
    let wait: &[&str] = &["WAIT", "1", "1000"];
    let replies = cluster.pipeline(master, &[set, wait]).expect("SET, WAIT");
    assert_eq!(
        replies,
        [Reply::Status("OK".to_owned()), Reply::Integer(1)],
        "written and on the replica"
    );

    let started = Instant::now();
    let promoted = cluster
        .kill_master_and_wait_for_failover(master)
        .expect("a replica takes over");
    eprintln!("failover took {:?}", started.elapsed());
    assert_eq!(promoted, replicas[0]);
    assert!(!cluster.node_mut(master).is_running());
    assert_eq!(cluster.master_of_slot(slot).expect("an owner"), promoted);
    assert_eq!(
        cluster.query(promoted, &["GET", key]).expect("GET"),
        bulk("before-the-crash")
    );
    let elsewhere = other_master(&cluster, promoted);
    assert_eq!(
        cluster.redis_cli(elsewhere, &["GET", key]).expect("GET"),
        "before-the-crash",
        "routed to the new master"
    );
    assert_eq!(
        cluster
            .redis_cli(elsewhere, &["SET", key, "after"])
            .expect("SET"),
        "OK",
        "the slot takes writes again"
    );

    // Not a master any more, or not a node: refused up front.
    let err = cluster
        .kill_master_and_wait_for_failover(master)
        .expect_err("a dead node is no master");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    let err = cluster
        .kill_master_and_wait_for_failover(promoted)
        .expect_err("the new master has no replica");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(cluster.kill_master_and_wait_for_failover(99).is_err());
}

#[test]
fn a_restarted_failed_over_master_rejoins_as_a_replica_of_its_successor() {
    let Some(mut cluster) = cluster("restart rejoins", RedisCluster::builder()) else {
        return;
    };
    let key = "restart-key";
    let master = cluster
        .master_of_slot(key_slot(key.as_bytes()))
        .expect("an owner");
    let set: &[&str] = &["SET", key, "kept"];
    let wait: &[&str] = &["WAIT", "1", "1000"];
    let replies = cluster.pipeline(master, &[set, wait]).expect("SET, WAIT");
    assert_eq!(replies[1], Reply::Integer(1), "on the replica");
    let promoted = cluster
        .kill_master_and_wait_for_failover(master)
        .expect("a replica takes over");

    let started = Instant::now();
    cluster.restart_node(master).expect("rejoins");
    eprintln!("the old master rejoined in {:?}", started.elapsed());
    assert!(cluster.node_mut(master).is_running());
    assert_eq!(
        cluster.replicas_of(promoted).expect("replicas"),
        vec![master]
    );
    let readonly: &[&str] = &["READONLY"];
    let get: &[&str] = &["GET", key];
    assert_eq!(
        cluster
            .pipeline(master, &[readonly, get])
            .expect("READONLY, GET"),
        [Reply::Status("OK".to_owned()), bulk("kept")],
        "synced from its successor"
    );
    cluster.wait_until_ok().expect("ok");
}

#[test]
fn a_restarted_replica_rejoins_its_master() {
    let Some(mut cluster) = cluster("replica restart", RedisCluster::builder()) else {
        return;
    };
    let master = masters(&cluster)[0];
    let replica = cluster.replicas_of(master).expect("replicas")[0];
    let key = "replica-restart";
    let owner = cluster
        .master_of_slot(key_slot(key.as_bytes()))
        .expect("an owner");

    cluster.node_mut(replica).kill().expect("SIGKILL");
    // Written while the replica is down: it resyncs when it is back.
    assert_eq!(
        cluster
            .query(owner, &["SET", key, "while-down"])
            .expect("SET"),
        Reply::Status("OK".to_owned())
    );
    cluster.restart_node(replica).expect("rejoins");
    assert_eq!(
        cluster.replicas_of(master).expect("replicas"),
        vec![replica]
    );
    if owner == master {
        let readonly: &[&str] = &["READONLY"];
        let get: &[&str] = &["GET", key];
        assert_eq!(
            cluster.pipeline(replica, &[readonly, get]).expect("GET"),
            [Reply::Status("OK".to_owned()), bulk("while-down")]
        );
    }
}

#[test]
fn migrate_slot_moves_the_keys_to_the_new_owner() {
    let Some(mut cluster) = cluster("migrate slot", RedisCluster::builder()) else {
        return;
    };
    let keys: Vec<String> = (0..250).map(|i| format!("{{moving}}:{i}")).collect();
    let slot = key_slot(b"moving");
    let from = cluster.master_of_slot(slot).expect("an owner");
    for key in &keys {
        assert_eq!(
            cluster.query(from, &["SET", key, key]).expect("SET"),
            Reply::Status("OK".to_owned())
        );
    }
    let to = other_master(&cluster, from);

    let started = Instant::now();
    cluster.migrate_slot(slot, to).expect("migrated");
    eprintln!("250 keys moved in {:?}", started.elapsed());
    assert_eq!(cluster.master_of_slot(slot).expect("an owner"), to);
    assert_eq!(keys_in_slot(&cluster, to, slot), 250);
    assert_eq!(keys_in_slot(&cluster, from, slot), 0);
    for key in &keys {
        assert_eq!(cluster.query(to, &["GET", key]).expect("GET"), bulk(key));
    }
    assert_eq!(
        cluster.query(from, &["GET", &keys[0]]).expect("GET"),
        Reply::Error(format!(
            "MOVED {slot} 127.0.0.1:{}",
            cluster.nodes()[to].port()
        ))
    );
    assert_eq!(
        cluster.redis_cli(from, &["GET", &keys[7]]).expect("GET"),
        keys[7]
    );
    // Moving it where it is already is a no-op; a replica cannot import.
    cluster.migrate_slot(slot, to).expect("a no-op");
    let replica = cluster.replicas_of(to).expect("replicas")[0];
    assert!(cluster.migrate_slot(slot, replica).is_err());
    cluster.wait_until_ok().expect("ok");
}

#[test]
fn a_split_migration_moves_keys_in_steps_while_clients_write() {
    let Some(mut cluster) = cluster("split migration", RedisCluster::builder()) else {
        return;
    };
    let keys: Vec<String> = (0..10).map(|i| format!("{{stepping}}:{i}")).collect();
    let slot = key_slot(b"stepping");
    let from = cluster.master_of_slot(slot).expect("an owner");
    for key in &keys {
        assert_eq!(
            cluster.query(from, &["SET", key, "old"]).expect("SET"),
            Reply::Status("OK".to_owned())
        );
    }
    let to = other_master(&cluster, from);

    let mut migration = cluster.begin_migration(slot, to).expect("begun");
    assert_eq!(
        (migration.slot(), migration.from(), migration.to()),
        (slot, from, to)
    );
    assert_eq!(migration.step(&cluster, 3).expect("a step"), 3);
    assert_eq!(keys_in_slot(&cluster, from, slot), 7);
    assert_eq!(keys_in_slot(&cluster, to, slot), 3);

    // During the migration the source serves the keys it still has, sends
    // clients to the target with ASK for the others, and redis-cli follows.
    let to_addr = format!("127.0.0.1:{}", cluster.nodes()[to].port());
    let mut asked = 0;
    for key in &keys {
        match cluster.query(from, &["GET", key]).expect("GET") {
            Reply::Bulk(value) => assert_eq!(value, b"old"),
            Reply::Error(error) => {
                assert_eq!(error, format!("ASK {slot} {to_addr}"));
                asked += 1;
            }
            other => panic!("GET {key} answered {other:?}"),
        }
        assert_eq!(cluster.redis_cli(from, &["GET", key]).expect("GET"), "old");
    }
    assert_eq!(asked, 3);
    assert_eq!(
        cluster
            .redis_cli(from, &["SET", "{stepping}:new", "written-mid-migration"])
            .expect("SET"),
        "OK"
    );
    assert_eq!(
        cluster
            .redis_cli(from, &["SET", &keys[9], "updated"])
            .expect("SET"),
        "OK"
    );
    let asking: &[&str] = &["ASKING"];
    let get: &[&str] = &["GET", "{stepping}:new"];
    assert_eq!(
        cluster.pipeline(to, &[asking, get]).expect("ASKING, GET"),
        [
            Reply::Status("OK".to_owned()),
            bulk("written-mid-migration")
        ],
        "a new key is created on the target"
    );

    let mut moved = 0;
    loop {
        let n = migration.step(&cluster, 2).expect("a step");
        if n == 0 {
            break;
        }
        assert!(n <= 2);
        moved += n;
    }
    assert_eq!(moved, 7);
    migration.finish(&cluster).expect("finished");

    assert_eq!(cluster.master_of_slot(slot).expect("an owner"), to);
    assert_eq!(keys_in_slot(&cluster, to, slot), 11);
    assert_eq!(keys_in_slot(&cluster, from, slot), 0);
    for key in &keys[..9] {
        assert_eq!(cluster.query(to, &["GET", key]).expect("GET"), bulk("old"));
    }
    assert_eq!(
        cluster.query(to, &["GET", &keys[9]]).expect("GET"),
        bulk("updated")
    );
    assert_eq!(
        cluster.query(to, &["GET", "{stepping}:new"]).expect("GET"),
        bulk("written-mid-migration")
    );
}
