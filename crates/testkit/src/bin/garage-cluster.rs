//! `garage-cluster [NODES]`: a throwaway Garage cluster on loopback for
//! benchmarks and for trying replicas by hand. Prints shell assignments
//! (`STOREFRONT_GARAGE_URL=…` with credentials, one `…_URL_<i>` per node's
//! S3 endpoint) on one line each, then `ready`, and keeps the cluster up
//! until its standard input closes; then every node is killed and its data
//! removed.
//!
//! ```sh
//! coproc GARAGE { cargo run -q -p storefront-testkit --bin garage-cluster -- 3; }
//! while read -r line <&"${GARAGE[0]}" && [ "$line" != ready ]; do eval "$line"; done
//! ```
use std::io::Read;

fn main() {
    let nodes = std::env::args().nth(1).map_or(3, |n| n.parse().expect("NODES must be a number"));
    let cluster = testkit::garage::Cluster::start(nodes);
    println!("STOREFRONT_GARAGE_URL='{}'", cluster.bucket_url("storefront"));
    for i in 0..cluster.nodes() {
        println!("STOREFRONT_GARAGE_URL_{i}='{}'", cluster.bucket_url_via(i, "storefront"));
    }
    println!("ready");
    // Until whoever started us goes away.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(cluster);
}
