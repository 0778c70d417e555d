//! etcd's corruption check between members (`--experimental-corrupt-check-time`, and once
//! shortly after start with `--experimental-initial-corrupt-check`): the leader compares its
//! HashKV with every other member's and raises the CORRUPT alarm, through the log, for a member
//! whose state cannot be its own (etcd's `checkHashKV`): a hash that differs at the same
//! revision and compaction point, or a revision or compaction point ahead of the leader's. A
//! different compaction point alone legitimately changes the hash, so that is no evidence.
//!
//! Runs as a task on the raft core's executor and talks to the core only through [`RaftKv`],
//! like any client; peers are asked over the peer port ([`HashAsker`]), as etcd asks them, so
//! `https://` client URLs, client certificates and auth do not matter.
//! Must never: raise an alarm on a member it could not ask (unreachable is not corrupt).

use std::sync::atomic::Ordering;
use std::time::Duration;

use basalt_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, HashKvResponse, RangeRequest,
};

use super::{NodeConfig, RaftKv};
use crate::kv::KvService;
use crate::peer::HashAsker;

/// How long after start the initial check runs: long enough for a leader to be elected and
/// peers to be reachable.
const INITIAL_CHECK_DELAY: Duration = Duration::from_secs(5);

/// Checks now and then for as long as the member runs, as `config` asks: once after start with
/// `initial_corrupt_check`, every `corrupt_check_interval` if one is set.
pub(super) async fn check_periodically(kv: RaftKv, config: NodeConfig) {
    let asker = match HashAsker::new(
        config.cluster_id,
        config.member_id,
        config.peer_tls.as_ref(),
    ) {
        Ok(asker) => asker,
        Err(error) => {
            eprintln!("basalt: the corruption check cannot run: {error}");
            return;
        }
    };
    let member_id = config.member_id;
    if config.initial_corrupt_check {
        glommio::timer::sleep(INITIAL_CHECK_DELAY).await;
        check_once(&kv, &asker, member_id).await;
    }
    let Some(interval) = config.corrupt_check_interval else {
        return;
    };
    loop {
        glommio::timer::sleep(interval).await;
        if kv.published.stopped.load(Ordering::Relaxed) {
            return;
        }
        check_once(&kv, &asker, member_id).await;
    }
}

async fn check_once(kv: &RaftKv, asker: &HashAsker, member_id: u64) {
    if kv.published.leader_id.load(Ordering::Relaxed) != member_id {
        return;
    }
    let Ok(before) = kv.hash_kv(0).await else {
        return;
    };
    let members = kv.members().unwrap_or_default();
    let mut answers = Vec::with_capacity(members.len());
    for member in members.iter().filter(|m| m.id != member_id) {
        match asker
            .ask(member.id, &member.peer_ur_ls, before.current_revision)
            .await
        {
            Ok(answer) => answers.push((member.id, answer)),
            // A member that is down, behind (a future revision) or compacted past it.
            Err(error) => eprintln!(
                "basalt: corruption check: no hash from member {:x}: {error}",
                member.id
            ),
        }
    }
    // A linearizable read makes everything committed before the peers answered applied here,
    // so no peer can be legitimately ahead of `after`.
    let barrier = RangeRequest {
        key: vec![0].into(),
        limit: 1,
        keys_only: true,
        ..RangeRequest::default()
    };
    if kv.range(barrier).await.is_err() {
        return;
    }
    let Ok(after) = kv.hash_kv(0).await else {
        return;
    };
    let suspect = if after.hash != before.hash
        && after.current_revision == before.current_revision
        && after.compacted_revision == before.compacted_revision
    {
        eprintln!(
            "basalt: this member's own HashKV changed from {} to {} at revision {}",
            before.hash, after.hash, before.current_revision
        );
        Some(member_id)
    } else {
        answers.iter().find_map(|(id, answer)| {
            let reason = differs(answer, before.hash, before.compacted_revision, &after)?;
            eprintln!("basalt: member {id:x}: {reason}");
            Some(*id)
        })
    };
    // One alarm per check, as etcd raises.
    if let Some(id) = suspect {
        eprintln!("basalt: raising CORRUPT for member {id:x}");
        let raise = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: id,
            alarm: AlarmType::Corrupt as i32,
        };
        let _ = kv.alarm(raise).await;
    }
}

/// Why a member's answer cannot come from the leader's state (`hash` at `compacted` when the
/// member was asked, `now` after the barrier), if it cannot.
fn differs(
    answer: &HashKvResponse,
    hash: u32,
    compacted: i64,
    now: &basalt_engine::apply::KvHash,
) -> Option<String> {
    let revision = answer.header.as_ref().map_or(0, |h| h.revision);
    if revision > now.current_revision {
        return Some(format!(
            "revision {revision} is ahead of the leader's {}",
            now.current_revision
        ));
    }
    if answer.compact_revision > now.compacted_revision {
        return Some(format!(
            "compact revision {} is ahead of the leader's {}",
            answer.compact_revision, now.compacted_revision
        ));
    }
    (answer.compact_revision == compacted && answer.hash != hash).then(|| {
        format!(
            "HashKV {} where the leader has {hash} at the same revision and compaction",
            answer.hash
        )
    })
}
