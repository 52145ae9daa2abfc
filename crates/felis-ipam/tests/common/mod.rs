//! Shared fixtures: pools and nodes written into a store, a fixed clock and RNG.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use felis_ipam::Ipam;
use felis_ipam::Pool;
use felis_ipam::model::POOL_PREFIX;
use felis_ipam::model::RESERVATION_PREFIX;
use felis_ipam::model::node_key;
use felis_ipam::resources;
use felis_store::Datastore;
use ipnet::IpNet;
use rand::SeedableRng;
use rand::rngs::StdRng;

pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_000_000)
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn pool(name: &str, cidr: &str, block_size: u8) -> Pool {
    let mut pool = Pool::new(name, net(cidr));
    pool.block_size = block_size;
    pool
}

pub fn put_pool(store: &dyn Datastore, pool: &Pool) {
    let key = format!("{POOL_PREFIX}{}", pool.name);
    let value = resources::pool_value(pool);
    match store.get(&key).unwrap() {
        Some(kv) => store
            .update(&key, &value, Some(kv.mod_revision))
            .map(|_| ())
            .unwrap(),
        None => store.create(&key, &value).map(|_| ()).unwrap(),
    }
}

pub fn put_node(store: &dyn Datastore, name: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let key = node_key(name);
    let value = resources::node_value(name, &labels);
    match store.get(&key).unwrap() {
        Some(kv) => store
            .update(&key, &value, Some(kv.mod_revision))
            .map(|_| ())
            .unwrap(),
        None => store.create(&key, &value).map(|_| ()).unwrap(),
    }
}

pub fn delete_node(store: &dyn Datastore, name: &str) {
    store.delete(&node_key(name), None).unwrap();
}

pub fn put_reservation(store: &dyn Datastore, name: &str, cidrs: &[&str]) {
    let cidrs: Vec<IpNet> = cidrs.iter().map(|c| net(c)).collect();
    store
        .create(
            &format!("{RESERVATION_PREFIX}{name}"),
            &resources::reservation_value(name, &cidrs),
        )
        .unwrap();
}

/// Every allocated address in the store, asserting none appears twice.
pub fn allocated(ipam: &Ipam<'_>) -> HashSet<IpAddr> {
    let snapshot = ipam.snapshot().unwrap();
    let mut seen = HashSet::new();
    for block in &snapshot.blocks {
        for a in block.allocated() {
            assert!(seen.insert(a.ip), "{} allocated twice", a.ip);
        }
    }
    seen
}
