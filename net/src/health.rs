//! The health endpoints with etcd 3.5's checks: `/health` (alarms, leader, a no-op read),
//! `/readyz` (alarms, the read) and `/livez` (alarms other than NOSPACE, the read). The read
//! is linearizable unless `?serializable=true` (etcd 3.5.1 still wants a leader then), and
//! must complete within etcd's request timeout; `?exclude=NOSPACE` (repeatable) ignores that
//! alarm. An answer is etcd's JSON (`{"health":"true","reason":""}`, 503 with the first
//! failed check's reason); with `?verbose` it is one line per check, as etcd 3.6 and
//! Kubernetes list them (`[+]leader ok`, `[-]leader failed: RAFT NO LEADER`).
//!
//! Must never: answer healthy without having run every check the endpoint has.

use std::future::Future;
use std::time::Duration;

use basalt_proto::etcdserverpb::{AlarmType, RangeRequest};

use crate::kv::KvService;
use crate::metrics::metrics;
use crate::status::{Code, Status};

/// The paths answered here.
pub(crate) const PATHS: [&str; 3] = ["/health", "/livez", "/readyz"];

/// An endpoint's answer: status code, content type, body.
pub(crate) type Answer = (u16, &'static str, String);

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// One check an endpoint runs, in etcd's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Any raised alarm not excluded; `/livez` always excludes NOSPACE (a full member is alive).
    Alarms { nospace_excluded: bool },
    /// `/health` only.
    Leader,
    /// A keys-only, one-key Range.
    Read,
}

impl Check {
    fn name(self, serializable: bool) -> &'static str {
        match self {
            Check::Alarms { .. } => "alarms",
            Check::Leader => "leader",
            Check::Read if serializable => "serializable_read",
            Check::Read => "linearizable_read",
        }
    }
}

/// What a request asked for.
#[derive(Debug, Default, PartialEq)]
struct Query<'a> {
    excluded: Vec<&'a str>,
    serializable: bool,
    verbose: bool,
}

impl<'a> Query<'a> {
    fn parse(query: &'a str) -> Self {
        let mut parsed = Query::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "exclude" if !value.is_empty() => parsed.excluded.push(value),
                "serializable" => parsed.serializable = value == "true",
                "verbose" => parsed.verbose = true,
                _ => {}
            }
        }
        parsed
    }
}

fn checks(path: &str) -> Vec<Check> {
    match path {
        "/health" => vec![
            Check::Alarms {
                nospace_excluded: false,
            },
            Check::Leader,
            Check::Read,
        ],
        "/livez" => vec![
            Check::Alarms {
                nospace_excluded: true,
            },
            Check::Read,
        ],
        _ => vec![
            Check::Alarms {
                nospace_excluded: false,
            },
            Check::Read,
        ],
    }
}

/// Runs the checks of `path` (one of [`PATHS`]) and answers. `request_timeout` bounds each
/// check that asks the store.
pub(crate) async fn answer<K: KvService>(
    kv: &K,
    path: &str,
    query: &str,
    request_timeout: Duration,
) -> Answer {
    let query = Query::parse(query);
    let mut results = Vec::new();
    for check in checks(path) {
        let result = run(kv, check, &query, request_timeout).await;
        let failed = result.is_err();
        results.push((check.name(query.serializable), result));
        if failed && !query.verbose {
            break;
        }
    }
    let healthy = results.iter().all(|(_, result)| result.is_ok());
    let m = metrics();
    if healthy {
        m.server_health_success.inc();
    } else {
        m.server_health_failures.inc();
    }
    let status = if healthy { 200 } else { 503 };
    if query.verbose {
        return (status, TEXT, verbose_body(path, &results));
    }
    match results.into_iter().find_map(|(_, result)| result.err()) {
        // The probes of etcd 3.5's later releases answer a plain "ok"; /health keeps its JSON.
        None if path != "/health" => (status, TEXT, "ok\n".to_string()),
        None => (status, JSON, r#"{"health":"true","reason":""}"#.to_string()),
        // etcd answers a failure with Go's http.Error: plain text, a newline after the JSON.
        Some(reason) => (
            status,
            TEXT,
            format!(
                r#"{{"health":"false","reason":"{}"}}"#,
                json_escape(&reason)
            ) + "\n",
        ),
    }
}

async fn run<K: KvService>(
    kv: &K,
    check: Check,
    query: &Query<'_>,
    request_timeout: Duration,
) -> Result<(), String> {
    match check {
        Check::Alarms { nospace_excluded } => {
            let status = within(request_timeout, kv.status())
                .await
                .map_err(|e| format!("ALARM UNKNOWN ({})", e.message))?;
            let raised = status.alarms.iter().map(|a| a.alarm()).find(|alarm| {
                let name = alarm.as_str_name();
                !(query.excluded.contains(&name)
                    || (nospace_excluded && *alarm == AlarmType::Nospace))
            });
            match raised {
                None => Ok(()),
                Some(AlarmType::Nospace) => Err("ALARM NOSPACE".into()),
                Some(AlarmType::Corrupt) => Err("ALARM CORRUPT".into()),
                Some(_) => Err("ALARM UNKNOWN".into()),
            }
        }
        Check::Leader if kv.has_leader() => Ok(()),
        Check::Leader => Err("RAFT NO LEADER".into()),
        Check::Read => {
            let probe = RangeRequest {
                key: b"health".to_vec().into(),
                keys_only: true,
                limit: 1,
                serializable: query.serializable,
                ..RangeRequest::default()
            };
            within(request_timeout, kv.range(probe))
                .await
                .map(|_| ())
                .map_err(|e| format!("RANGE ERROR:{}", e.message))
        }
    }
}

/// `work`, or "context deadline exceeded" (as etcd's context says it) after `limit`.
async fn within<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    futures_lite::future::or(work, async {
        glommio::timer::sleep(limit).await;
        Err(Status::new(
            Code::DeadlineExceeded,
            "context deadline exceeded",
        ))
    })
    .await
}

fn verbose_body(path: &str, results: &[(&str, Result<(), String>)]) -> String {
    let mut body = String::new();
    for (name, result) in results {
        match result {
            Ok(()) => body += &format!("[+]{name} ok\n"),
            Err(reason) => body += &format!("[-]{name} failed: {reason}\n"),
        }
    }
    let endpoint = path.trim_start_matches('/');
    let verdict = match results.iter().all(|(_, r)| r.is_ok()) {
        true => "passed",
        false => "failed",
    };
    body + &format!("{endpoint} check {verdict}\n")
}

fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_read_as_etcd_reads_them() {
        let q = Query::parse("exclude=NOSPACE&exclude=&serializable=true&verbose");
        assert_eq!(
            q,
            Query {
                excluded: vec!["NOSPACE"],
                serializable: true,
                verbose: true
            }
        );
        assert!(!Query::parse("serializable=1").serializable);
    }

    #[test]
    fn each_endpoint_runs_etcds_checks_in_order() {
        let alarms = Check::Alarms {
            nospace_excluded: false,
        };
        assert_eq!(checks("/health"), [alarms, Check::Leader, Check::Read]);
        assert_eq!(checks("/readyz"), [alarms, Check::Read]);
        assert_eq!(
            checks("/livez"),
            [
                Check::Alarms {
                    nospace_excluded: true
                },
                Check::Read
            ]
        );
    }

    #[test]
    fn verbose_lists_every_check_and_the_verdict() {
        let results = [
            ("alarms", Ok(())),
            ("leader", Err("RAFT NO LEADER".to_string())),
        ];
        assert_eq!(
            verbose_body("/readyz", &results),
            "[+]alarms ok\n[-]leader failed: RAFT NO LEADER\nreadyz check failed\n"
        );
    }

    #[test]
    fn reasons_are_json_strings() {
        assert_eq!(json_escape("a \"b\" \\ \n"), "a \\\"b\\\" \\\\ \\u000a");
    }
}
