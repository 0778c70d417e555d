//! Data-driven scenarios: each file in `tests/scenarios/` is a script of commands, each
//! followed by `----` and the output it must produce, so a reviewer reads behaviour rather than
//! code. `RAFT_REWRITE=1` regenerates the expected output (then read the diff).
//!
//! Commands: `cluster voters=1,2,3 [learners=4] [pre_vote=false] [check_quorum=false]
//! [lease=true] [inflight=N]`, `campaign ID`, `deliver` (prints each message delivered until
//! the cluster is quiet), `settle` (same, silent), `tick N` (the last
//! tick's messages wait for `deliver`), `propose ID TEXT`, `read ID CTX`,
//! `reads ID`, `transfer FROM TO`, `conf ID (add-voter|add-learner|remove) NODE...`,
//! `isolate ID`, `block FROM TO`, `heal`, `restart ID`, `compact ID`, `status`, `applied ID`.

mod common;

use std::fmt::Write as _;

use basalt_raft::{
    ConfChange, ConfChangeKind, ConfChangeSingle, ConfChangeTransition, Message, MessageType,
    NodeId, ReadOnlyOption,
};
use common::Cluster;

fn describe(m: &Message) -> String {
    let mut s = format!("{}->{} {:?} term={}", m.from, m.to, m.kind, m.term);
    match m.kind {
        MessageType::App => {
            let entries: Vec<String> = m
                .entries
                .iter()
                .map(|e| format!("{}@{}", e.index, e.term))
                .collect();
            let _ = write!(
                s,
                " prev={}@{} commit={} entries=[{}]",
                m.index,
                m.log_term,
                m.commit,
                entries.join(" ")
            );
        }
        MessageType::AppResp if m.reject => {
            let _ = write!(
                s,
                " reject index={} hint={}@{}",
                m.index, m.reject_hint, m.log_term
            );
        }
        MessageType::AppResp => {
            let _ = write!(s, " index={}", m.index);
        }
        MessageType::Vote | MessageType::PreVote => {
            let _ = write!(s, " last={}@{}", m.index, m.log_term);
        }
        MessageType::VoteResp | MessageType::PreVoteResp if m.reject => s.push_str(" reject"),
        MessageType::Heartbeat => {
            let _ = write!(s, " commit={}", m.commit);
        }
        MessageType::Snap => {
            let meta = &m.snapshot.as_ref().expect("snapshot").metadata;
            let _ = write!(s, " snapshot={}@{}", meta.index, meta.term);
        }
        MessageType::ReadIndex => {
            let _ = write!(s, " ctx={}", String::from_utf8_lossy(&m.context));
        }
        MessageType::ReadIndexResp => {
            let _ = write!(
                s,
                " index={} ctx={}",
                m.index,
                String::from_utf8_lossy(&m.context)
            );
        }
        _ => {}
    }
    s
}

fn id(arg: &str) -> NodeId {
    arg.parse()
        .unwrap_or_else(|_| panic!("not a node id: {arg}"))
}

fn ok_or_error<T, E: std::fmt::Display>(r: Result<T, E>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => format!("error: {e}"),
    }
}

/// Runs one command; returns its output lines.
fn run(cluster: &mut Option<Cluster>, line: &str) -> String {
    let args: Vec<&str> = line.split_whitespace().collect();
    if args[0] == "cluster" {
        let opt = |name: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("{name}=")))
        };
        let ids = |list: Option<&str>| {
            list.map_or(Vec::new(), |l| l.split(',').map(id).collect::<Vec<_>>())
        };
        let flag = |name: &str, default: bool| opt(name).map_or(default, |v| v == "true");
        let (pre_vote, check_quorum, lease) = (
            flag("pre_vote", true),
            flag("check_quorum", true),
            flag("lease", false),
        );
        let inflight = opt("inflight").map(|v| v.parse().expect("inflight"));
        *cluster = Some(Cluster::new(
            &ids(opt("voters")),
            &ids(opt("learners")),
            |cfg| {
                cfg.pre_vote = pre_vote;
                cfg.check_quorum = check_quorum;
                if lease {
                    cfg.read_only = ReadOnlyOption::LeaseBased;
                }
                if let Some(n) = inflight {
                    cfg.inflight_msgs_max = n;
                }
            },
        ));
        return "ok".to_string();
    }
    let c = cluster.as_mut().expect("`cluster` must come first");
    match args[0] {
        "campaign" => {
            c.node(id(args[1])).campaign();
            "ok".to_string()
        }
        "deliver" => {
            let delivered: Vec<String> = c.settle().iter().map(describe).collect();
            if delivered.is_empty() { "(nothing)".to_string() } else { delivered.join("\n") }
        }
        "settle" => {
            c.settle();
            "ok".to_string()
        }
        "tick" => {
            // All but the last tick settle silently; what the last one sends waits for `deliver`.
            let ticks: usize = args[1].parse().expect("tick count");
            c.tick(ticks.saturating_sub(1));
            for node in c.nodes.values_mut() {
                node.tick();
            }
            "ok".to_string()
        }
        "propose" => ok_or_error(c.node(id(args[1])).propose(args[2].as_bytes().to_vec()), |i| format!("index {i}")),
        "read" => ok_or_error(c.node(id(args[1])).read_index(args[2].as_bytes().to_vec()), |()| "ok".to_string()),
        "reads" => {
            let reads = c.read_states.remove(&id(args[1])).unwrap_or_default();
            let lines: Vec<String> = reads.iter().map(|r| format!("ctx={} index={}", String::from_utf8_lossy(&r.request_ctx), r.index)).collect();
            if lines.is_empty() { "(none)".to_string() } else { lines.join("\n") }
        }
        "transfer" => ok_or_error(c.node(id(args[1])).transfer_leader(id(args[2])), |()| "ok".to_string()),
        "conf" => {
            let changes = args[2..]
                .chunks(2)
                .map(|pair| {
                    let kind = match pair[0] {
                        "add-voter" => ConfChangeKind::AddVoter,
                        "add-learner" => ConfChangeKind::AddLearner,
                        "remove" => ConfChangeKind::RemoveNode,
                        other => panic!("unknown change {other}"),
                    };
                    ConfChangeSingle { kind, node_id: id(pair[1]) }
                })
                .collect();
            let cc = ConfChange { changes, transition: ConfChangeTransition::Auto, context: Vec::new() };
            ok_or_error(c.node(id(args[1])).propose_conf_change(cc), |i| format!("index {i}"))
        }
        "isolate" => {
            c.isolate(id(args[1]));
            "ok".to_string()
        }
        "block" => {
            c.blocked.insert((id(args[1]), id(args[2])));
            "ok".to_string()
        }
        "heal" => {
            c.blocked.clear();
            "ok".to_string()
        }
        "restart" => {
            let node = id(args[1]);
            let storage = c.nodes[&node].storage().clone();
            c.start(node, storage);
            "ok".to_string()
        }
        "compact" => {
            let node = c.node(id(args[1]));
            let status = node.status();
            let storage = node.storage_mut();
            storage.create_snapshot(status.applied, status.conf_state, Vec::new()).expect("snapshot");
            storage.compact(status.applied).expect("compact");
            format!("snapshot at {}", status.applied)
        }
        "status" => c
            .nodes
            .values()
            .map(|n| {
                let s = n.status();
                let role = format!("{:?}", s.soft_state.role).to_lowercase();
                let learner = if s.is_learner { " learner" } else { "" };
                format!(
                    "{}: {role}{learner} term={} lead={} commit={} applied={} voters={:?} learners={:?}",
                    s.id, s.hard_state.term, s.soft_state.leader_id, s.hard_state.commit, s.applied, s.conf_state.voters, s.conf_state.learners
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        "applied" => {
            let applied = c.applied.get(&id(args[1])).cloned().unwrap_or_default();
            let texts: Vec<String> = applied.iter().map(|d| String::from_utf8_lossy(d).to_string()).collect();
            format!("[{}]", texts.join(" "))
        }
        other => panic!("unknown command {other}"),
    }
}

/// Runs a script; returns it with the actual outputs in place of the expected ones.
fn replay(script: &str) -> String {
    let mut out = String::new();
    let mut cluster = None;
    let mut lines = script.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        out.push_str(line);
        out.push_str("\n----\n");
        out.push_str(&run(&mut cluster, line));
        out.push('\n');
        // Skip the expected output: `----` then lines up to a blank line.
        if lines.peek() == Some(&"----") {
            for expected in lines.by_ref() {
                if expected.trim().is_empty() {
                    break;
                }
            }
        }
        out.push('\n');
    }
    out
}

#[test]
fn scenarios_produce_their_recorded_output() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("scenario dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let rewrite = std::env::var("RAFT_REWRITE").is_ok();
    for file in files {
        let script = std::fs::read_to_string(&file).expect("read scenario");
        let actual = replay(&script);
        if rewrite {
            std::fs::write(&file, &actual).expect("rewrite scenario");
        } else {
            assert_eq!(
                actual,
                script,
                "{} differs (RAFT_REWRITE=1 regenerates it; review the diff)",
                file.display()
            );
        }
    }
}
