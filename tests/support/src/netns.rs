//! A private network for a test's nodes: one network namespace per node, all joined by a bridge
//! in the test's own namespace, and links cut with iptables inside the namespaces. A cut is what
//! a real partition looks like to a process: packets vanish, nothing is refused, and TCP finds
//! out only through its own timers.
//!
//! Needs root, `ip` and `iptables`; [`Lab::new`] says why when it cannot build one, so that a
//! test can skip with that reason. Everything it made is removed when the [`Lab`] is dropped;
//! what a killed test run left behind is removed by the next one.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Every name starts with this, followed by the test process's id.
const PREFIX: &str = "rrl";

/// Where one node runs: its namespace and its address in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub netns: String,
    pub ip: IpAddr,
}

/// Namespaces on a bridge; see the module documentation.
pub struct Lab {
    bridge: String,
    hosts: Vec<Host>,
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// `n` namespaces, each with one address on a fresh /24 shared with the test (the bridge
    /// has `.254`), so the test reaches every node and the nodes reach each other.
    pub fn new(n: usize) -> Result<Lab, String> {
        assert!((1..=250).contains(&n), "a lab has 1 to 250 hosts");
        if !is_root() {
            return Err("not running as root: network namespaces need it".into());
        }
        for (tool, version) in [("ip", "-V"), ("iptables", "--version")] {
            let found = Command::new(tool).arg(version).output();
            if !found.is_ok_and(|out| out.status.success()) {
                return Err(format!("`{tool}` is not installed"));
            }
        }
        remove_leftovers();
        let pid = std::process::id();
        let lab = LABS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{pid}x{lab}");
        // Interface names have at most 15 characters: the name, then "b" or "v" and an index.
        assert!(
            name.len() + 1 + (n - 1).to_string().len() <= 15,
            "lab name {name} too long for {n} hosts"
        );
        let subnet = [10, 100 + (pid % 100) as u8, (lab % 250) as u8];
        let mut made = Lab {
            bridge: format!("{name}b"),
            hosts: Vec::new(),
        };
        let gateway = format!("{}.{}.{}.254/24", subnet[0], subnet[1], subnet[2]);
        ip(&["link", "add", &made.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &gateway, "dev", &made.bridge])?;
        ip(&["link", "set", &made.bridge, "up"])?;
        for i in 0..n {
            let netns = format!("{name}n{i}");
            let veth = format!("{name}v{i}");
            let address = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], i as u8 + 1);
            ip(&["netns", "add", &netns])?;
            made.hosts.push(Host {
                netns: netns.clone(),
                ip: IpAddr::V4(address),
            });
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ])?;
            ip(&["link", "set", &veth, "master", &made.bridge, "up"])?;
            let cidr = format!("{address}/24");
            in_netns(&netns, &["ip", "addr", "add", &cidr, "dev", "eth0"])?;
            in_netns(&netns, &["ip", "link", "set", "eth0", "up"])?;
            in_netns(&netns, &["ip", "link", "set", "lo", "up"])?;
        }
        Ok(made)
    }

    /// The hosts, in order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Drops every packet from host `from` to host `to` (one way; `to` can still send).
    pub fn cut_one_way(&self, from: usize, to: usize) {
        self.drop_from(from, to, &[]);
    }

    /// Drops each packet from host `from` to host `to` with probability `loss` (one way): a
    /// bad link rather than a cut one.
    pub fn lossy_one_way(&self, from: usize, to: usize, loss: f64) {
        assert!((0.0..=1.0).contains(&loss), "a loss is a probability");
        let probability = format!("{loss:.3}");
        let matching = [
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &probability,
        ];
        self.drop_from(from, to, &matching);
    }

    /// Adds a rule in `to`'s namespace dropping packets from `from` that also match `matching`.
    fn drop_from(&self, from: usize, to: usize, matching: &[&str]) {
        let source = self.hosts[from].ip.to_string();
        let mut rule = vec!["iptables", "-A", "INPUT", "-s", &source];
        rule.extend_from_slice(matching);
        rule.extend(["-j", "DROP"]);
        in_netns(&self.hosts[to].netns, &rule).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Cuts every link between `side` and the other hosts, both ways.
    pub fn partition(&self, side: &[usize]) {
        for a in side {
            for b in (0..self.hosts.len()).filter(|b| !side.contains(b)) {
                self.cut_one_way(*a, b);
                self.cut_one_way(b, *a);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for host in &self.hosts {
            in_netns(&host.netns, &["iptables", "-F", "INPUT"]).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the other end.
        for host in &self.hosts {
            let _ = ip(&["netns", "delete", &host.netns]);
        }
        let _ = ip(&["link", "delete", &self.bridge]);
    }
}

/// Runs `ip ARGS`; the error names the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

/// Runs `COMMAND ARGS` inside `netns`.
fn in_netns(netns: &str, command: &[&str]) -> Result<(), String> {
    let mut args = vec!["netns", "exec", netns];
    args.extend_from_slice(command);
    run("ip", &args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

/// Removes the namespaces and bridges of test processes that no longer run (killed before
/// their labs were dropped).
fn remove_leftovers() {
    let Ok(list) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    for name in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, lab)) = rest.split_once('x') else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = ip(&["netns", "delete", name]);
            let lab = lab.split('n').next().unwrap_or_default();
            let _ = ip(&["link", "delete", &format!("{PREFIX}{pid}x{lab}b")]);
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
