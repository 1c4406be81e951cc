//! How `riteraft` shows results: text for people, one JSON object per command with `--json`,
//! and the exit code. Kept free of I/O (a [`Printed`] is computed, then emitted) so that every
//! format is unit tested.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use riteraft_client::{Answer, Applied, DeployStep, NodeStatus};
use serde_json::{Value, json};

/// What a command produced, before formatting.
#[derive(Debug)]
pub enum Report {
    /// A command went through the log.
    Applied(Applied),
    /// A query was answered.
    Answer(Answer),
    /// A node's view of the cluster.
    Status(NodeStatus),
    /// An action with nothing more to show than a sentence (or a small JSON object).
    Done { text: String, json: Value },
}

/// Exactly what to write, and how to exit.
#[derive(Debug, PartialEq, Eq)]
pub struct Printed {
    pub stdout: String,
    pub stderr: String,
    /// 0: success; 1: the store rejected the request, or the command failed.
    pub code: u8,
}

impl Printed {
    /// Writes both streams and returns the exit code.
    pub fn emit(self) -> ExitCode {
        // A closed pipe (`riteraft status | head -1`) is not worth a panic: ignore write errors.
        let _ = std::io::stdout().write_all(self.stdout.as_bytes());
        let _ = std::io::stderr().write_all(self.stderr.as_bytes());
        ExitCode::from(self.code)
    }
}

/// One step of a deploy, as `riteraft deploy` shows it on stderr.
pub fn deploy_step(step: &DeployStep) -> String {
    const MIB: f64 = (1 << 20) as f64;
    match step {
        DeployStep::Upload { sent, total } => format!(
            "upload    {:.1} of {:.1} MiB sent",
            *sent as f64 / MIB,
            *total as f64 / MIB
        ),
        DeployStep::Node {
            stage,
            message,
            elapsed,
        } => format!("{stage:<9} {message} (+{:.1} s)", elapsed.as_secs_f64()),
    }
}

/// Formats the outcome of a command, as text or (`json`) as one JSON object.
pub fn render(outcome: &anyhow::Result<Report>, json: bool) -> Printed {
    match outcome {
        Ok(Report::Applied(applied)) => store_answer("index", applied.index, &applied.result, json),
        Ok(Report::Answer(answer)) => {
            store_answer("applied_index", answer.applied_index, &answer.result, json)
        }
        Ok(Report::Status(status)) => success(if json {
            // Straight from the struct, so the fields keep their order.
            let object = serde_json::to_string(status).unwrap_or_else(|_| "null".into());
            format!("{object}\n")
        } else {
            status_text(status)
        }),
        Ok(Report::Done { text, json: object }) => success(if json {
            json_line(object)
        } else {
            format!("{text}\n")
        }),
        Err(error) => failure(
            &format!("{error:#}"),
            json.then(|| json!({ "error": format!("{error:#}") })),
        ),
    }
}

fn success(stdout: String) -> Printed {
    Printed {
        stdout,
        stderr: String::new(),
        code: 0,
    }
}

/// A failure: `error: ...` on stderr always (people read it even with `--json`), and the JSON
/// object on stdout when asked for.
fn failure(message: &str, json: Option<Value>) -> Printed {
    Printed {
        stdout: json.as_ref().map(json_line).unwrap_or_default(),
        stderr: format!("error: {message}\n"),
        code: 1,
    }
}

/// The store's answer to a command or query: its output as text, or its rejection as a failure.
fn store_answer(
    index_name: &str,
    index: u64,
    result: &Result<Vec<u8>, String>,
    json: bool,
) -> Printed {
    match result {
        Ok(output) => {
            let text = String::from_utf8_lossy(output);
            success(if json {
                json_line(&json!({ index_name: index, "output": text }))
            } else {
                with_newline(&text)
            })
        }
        Err(rejection) => failure(
            &format!("rejected by the store: {rejection}"),
            json.then(|| json!({ index_name: index, "rejection": rejection })),
        ),
    }
}

fn json_line(value: &Value) -> String {
    format!("{value}\n")
}

/// `text` ending with exactly one newline, unless it is empty (an empty answer prints nothing).
fn with_newline(text: &str) -> String {
    if text.is_empty() || text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}

/// A node's status for people.
fn status_text(status: &NodeStatus) -> String {
    let mut out = String::new();
    let address_of = |id: u64| {
        status
            .members
            .iter()
            .find(|member| member.id == id)
            .map(|member| member.address.as_str())
    };
    let leader = match status.leader_id {
        None => "none known (an election may be running)".to_string(),
        Some(id) => match address_of(id) {
            Some(address) => format!("{id} ({address})"),
            None => format!("{id} (address unknown)"),
        },
    };
    if let Some(alarm) = &status.alarm {
        let _ = writeln!(out, "ALARM:          {alarm}");
    }
    let _ = writeln!(out, "id:             {}", status.id);
    let _ = writeln!(out, "role:           {}", status.role);
    let _ = writeln!(out, "leader:         {leader}");
    let _ = writeln!(out, "term:           {}", status.term);
    let _ = writeln!(out, "commit index:   {}", status.commit_index);
    let _ = writeln!(out, "applied index:  {}", status.applied_index);
    let _ = writeln!(out, "snapshot index: {}", status.snapshot_index);
    // What a rolling upgrade of hosts needs to see: 0 is a host older than packed entries.
    let _ = writeln!(out, "log format:     {}", status.log_format);
    let _ = writeln!(out, "plugin sha256:  {}", status.plugin_sha256);
    if let Some(version) = &status.plugin_version {
        let _ = writeln!(out, "plugin version: {version}");
    }
    let _ = writeln!(out, "members:");
    let width = status
        .members
        .iter()
        .map(|member| member.id.to_string().len())
        .max()
        .unwrap_or(1);
    for member in &status.members {
        let is_leader = status.leader_id == Some(member.id);
        let mut notes = Vec::new();
        if is_leader {
            notes.push("leader");
        }
        if member.id == status.id {
            notes.push("this node");
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!("  ({})", notes.join(", "))
        };
        let role = match (member.role.as_str(), member.plan.as_str()) {
            ("", _) => String::new(),
            (role, "") => format!("  {role}"),
            (role, plan) => format!("  {role} ({plan})"),
        };
        let progress = match (member.match_index, member.lag) {
            (Some(matched), Some(lag)) => format!("  match {matched}, lag {lag}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  {} {:>width$}  {}{role}{progress}{notes}",
            if is_leader { '*' } else { ' ' },
            member.id,
            member.address,
        );
    }
    if !status.upgrades.is_empty() {
        let _ = writeln!(out, "upgrades:");
        for upgrade in &status.upgrades {
            let version = upgrade
                .version
                .as_deref()
                .map(|version| format!(" version {version}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  index {} at {}: sha256 {}{version}",
                upgrade.index,
                utc_time(upgrade.timestamp_ms),
                upgrade.sha256,
            );
        }
    }
    out
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmm UTC` (no time zone database
/// needed, and the same on every machine).
fn utc_time(timestamp_ms: u64) -> String {
    let seconds = timestamp_ms / 1000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        timestamp_ms % 1000
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use riteraft_client::{ClientError, Member, Upgrade};

    use super::*;

    fn status() -> NodeStatus {
        NodeStatus {
            id: 2,
            role: "follower".into(),
            leader_id: Some(1),
            term: 3,
            commit_index: 42,
            applied_index: 41,
            snapshot_index: 40,
            plugin_sha256: "abc123".into(),
            plugin_version: Some("1.2.0".into()),
            alarm: None,
            log_format: 2,
            members: vec![
                Member {
                    id: 1,
                    address: "127.0.0.1:7001".into(),
                    role: "voter".into(),
                    plan: String::new(),
                    match_index: Some(42),
                    lag: Some(0),
                },
                Member {
                    id: 2,
                    address: "127.0.0.1:7002".into(),
                    role: "voter".into(),
                    plan: String::new(),
                    match_index: Some(41),
                    lag: Some(1),
                },
                Member {
                    id: 10,
                    address: "127.0.0.1:7010".into(),
                    role: "learner".into(),
                    plan: "promote".into(),
                    match_index: Some(30),
                    lag: Some(12),
                },
            ],
            upgrades: vec![Upgrade {
                index: 7,
                sha256: "def456".into(),
                timestamp_ms: 1_700_000_000_123,
                version: Some("1.2.0".into()),
            }],
        }
    }

    #[test]
    fn a_store_answer_prints_as_text_or_json() {
        let applied = Ok(Report::Applied(Applied {
            index: 5,
            result: Ok(b"ok 1".to_vec()),
        }));
        assert_eq!(render(&applied, false), success("ok 1\n".into()));
        assert_eq!(
            render(&applied, true),
            success("{\"index\":5,\"output\":\"ok 1\"}\n".into())
        );
        let answer = Ok(Report::Answer(Answer {
            applied_index: 9,
            result: Ok(b"line\n\xff".to_vec()),
        }));
        assert_eq!(render(&answer, false).stdout, "line\n\u{fffd}\n");
        let printed = render(&answer, true);
        let value: Value = serde_json::from_str(&printed.stdout).unwrap();
        assert_eq!(
            value,
            json!({ "applied_index": 9, "output": "line\n\u{fffd}" })
        );
        let empty = Ok(Report::Applied(Applied {
            index: 1,
            result: Ok(Vec::new()),
        }));
        assert_eq!(render(&empty, false), success(String::new()));
    }

    #[test]
    fn a_rejection_is_a_failure_that_names_the_store() {
        let rejected = Ok(Report::Applied(Applied {
            index: 6,
            result: Err("no such key".into()),
        }));
        let printed = render(&rejected, false);
        assert_eq!(printed.stdout, "");
        assert_eq!(
            printed.stderr,
            "error: rejected by the store: no such key\n"
        );
        assert_eq!(printed.code, 1);
        let printed = render(&rejected, true);
        assert_eq!(
            printed.stdout,
            "{\"index\":6,\"rejection\":\"no such key\"}\n"
        );
        assert_eq!(printed.code, 1);
    }

    #[test]
    fn errors_go_to_stderr_and_as_json_to_stdout() {
        let failed: anyhow::Result<Report> =
            Err(ClientError::Unavailable("no leader".into()).into());
        let printed = render(&failed, false);
        let message = ClientError::Unavailable("no leader".into()).to_string();
        assert_eq!(printed.stdout, "");
        assert_eq!(printed.stderr, format!("error: {message}\n"));
        assert_eq!(printed.code, 1);
        let printed = render(&failed, true);
        let value: Value = serde_json::from_str(&printed.stdout).unwrap();
        assert_eq!(value, json!({ "error": message }));
        assert_eq!(printed.code, 1);
    }

    #[test]
    fn status_as_json_has_every_field() {
        let printed = render(&Ok(Report::Status(status())), true);
        let value: Value = serde_json::from_str(&printed.stdout).unwrap();
        assert_eq!(
            value,
            json!({
                "id": 2,
                "role": "follower",
                "leader_id": 1,
                "term": 3,
                "commit_index": 42,
                "applied_index": 41,
                "snapshot_index": 40,
                "log_format": 2,
                "plugin_sha256": "abc123",
                "plugin_version": "1.2.0",
                "members": [
                    { "id": 1, "address": "127.0.0.1:7001", "role": "voter", "match_index": 42, "lag": 0 },
                    { "id": 2, "address": "127.0.0.1:7002", "role": "voter", "match_index": 41, "lag": 1 },
                    { "id": 10, "address": "127.0.0.1:7010", "role": "learner", "plan": "promote", "match_index": 30, "lag": 12 },
                ],
                "upgrades": [
                    { "index": 7, "sha256": "def456", "timestamp_ms": 1_700_000_000_123_u64, "version": "1.2.0" },
                ],
            })
        );
    }

    #[test]
    fn status_as_text_marks_the_leader_and_this_node() {
        let printed = render(&Ok(Report::Status(status())), false);
        assert_eq!(printed.code, 0);
        assert_eq!(
            printed.stdout,
            "\
id:             2
role:           follower
leader:         1 (127.0.0.1:7001)
term:           3
commit index:   42
applied index:  41
snapshot index: 40
log format:     2
plugin sha256:  abc123
plugin version: 1.2.0
members:
  *  1  127.0.0.1:7001  voter  match 42, lag 0  (leader)
     2  127.0.0.1:7002  voter  match 41, lag 1  (this node)
    10  127.0.0.1:7010  learner (promote)  match 30, lag 12
upgrades:
  index 7 at 2023-11-14 22:13:20.123 UTC: sha256 def456 version 1.2.0
"
        );
    }

    #[test]
    fn status_without_leader_or_version_says_so() {
        let mut status = status();
        status.leader_id = None;
        status.plugin_version = None;
        status.upgrades.clear();
        let text = render(&Ok(Report::Status(status)), false).stdout;
        assert!(text.contains("leader:         none known (an election may be running)\n"));
        assert!(!text.contains("plugin version"));
        assert!(!text.contains("upgrades"));
        assert!(!text.contains('*'));
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
        assert_eq!(utc_time(4_102_444_799_999), "2099-12-31 23:59:59.999 UTC");
    }

    #[test]
    fn done_prints_its_sentence_or_object() {
        let done = Ok(Report::Done {
            text: "node 3 is leaving the cluster".into(),
            json: json!({ "ok": true, "node": 3 }),
        });
        assert_eq!(
            render(&done, false).stdout,
            "node 3 is leaving the cluster\n"
        );
        let value: Value = serde_json::from_str(&render(&done, true).stdout).unwrap();
        assert_eq!(value, json!({ "ok": true, "node": 3 }));
    }
}
