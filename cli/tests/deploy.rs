//! `riteraft deploy` against real `riteraft-host` processes: every step of a deploy through a
//! follower shows on stderr, in order, as the nodes report it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{host_binary, riteraft, stderr, stdout};
use riteraft_client::certs::client_files;
use riteraft_client::tls::TlsFiles;
use riteraft_test_support::cluster::{Cluster, ClusterOptions};
use riteraft_test_support::plugin;
use riteraft_test_support::wait::within;

/// `riteraft [FLAGS] --cluster ADDRESS deploy MODULE` with the admin's certificate.
async fn deploy(
    admin: &TlsFiles,
    address: &str,
    module: &Path,
    flags: &[&str],
) -> std::process::Output {
    let tls = [
        "--tls-cert",
        admin.cert.to_str().unwrap(),
        "--tls-key",
        admin.key.to_str().unwrap(),
        "--tls-ca",
        admin.ca.to_str().unwrap(),
    ];
    let rest = ["--cluster", address, "deploy", module.to_str().unwrap()];
    riteraft(&[flags, &tls[..], &rest[..]].concat(), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_through_a_follower_shows_each_step() {
    within(Duration::from_secs(180), async {
        let cluster = Cluster::start(3, ClusterOptions::new(host_binary())).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let follower = (cluster.ids().into_iter())
            .find(|id| *id != leader)
            .expect("3 nodes");
        let admin = client_files(&cluster.certs_dir(), "admin");
        let module = plugin("kv-v2");
        let (follower_address, leader_address) = (
            cluster.addr(follower).to_string(),
            cluster.addr(leader).to_string(),
        );
        let output = deploy(&admin, &follower_address, &module, &[]).await;
        let (out, err) = (stdout(&output), stderr(&output));
        println!("stdout:\n{out}\nstderr:\n{err}");
        assert!(output.status.success(), "{output:?}");
        assert!(out.contains("every node now runs it"), "{out}");

        // The follower checks the upload and hands it on; the leader checks it, stores it on a
        // majority, and proposes the entry.
        let stages: Vec<&str> = (err.lines())
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        assert_eq!(
            stages,
            [
                "upload",
                "received",
                "compiled",
                "forwarded",
                "received",
                "compiled",
                "stored",
                "stored",
                "proposed"
            ],
            "{err}"
        );
        let lines: Vec<&str> = err.lines().collect();
        assert!(lines[1].contains(&follower_address), "{err}");
        assert!(
            lines[3].contains(&format!("handed the upload to {leader_address}")),
            "{err}"
        );
        assert!(lines[4].contains(&leader_address), "{err}");
        assert!(lines[6].contains("stored on 1 of 3 voters"), "{err}");
        assert!(lines[7].contains("stored on 2 of 3 voters"), "{err}");

        // `--json` keeps stderr quiet and prints the answer alone.
        let output = deploy(&admin, &leader_address, &module, &["--json"]).await;
        assert!(output.status.success(), "{output:?}");
        assert_eq!(stderr(&output), "");
        let json = common::json_out(&output);
        assert_eq!(json["unchanged"], true, "{json}");
    })
    .await
}
