//! etcd's corruption check between members (`--experimental-corrupt-check-time`, and once
//! shortly after start with `--experimental-initial-corrupt-check`): the leader compares its
//! HashKV with every other member's at the same revision and raises the CORRUPT alarm, through
//! the log, for a member whose hash differs while its compaction revision is the same (a
//! different compaction point legitimately changes the hash, so that is no evidence).
//!
//! Runs as a task on the raft core's executor and talks to the core only through [`RaftKv`],
//! like any client; peers are asked over their advertised client URLs with the gRPC client.
//! Must never: raise an alarm on a member it could not ask (unreachable is not corrupt).

use std::net::ToSocketAddrs;
use std::time::Duration;

use basalt_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, HashKvRequest, HashKvResponse,
};

use super::RaftKv;
use crate::client::Client;
use crate::kv::KvService;

/// How long after start the initial check runs: long enough for a leader to be elected and
/// peers to publish their client URLs.
const INITIAL_CHECK_DELAY: Duration = Duration::from_secs(5);

/// Checks now and then for as long as the member runs; `interval` None checks only once (if
/// `initial` asks for it).
pub(super) async fn check_periodically(
    kv: RaftKv,
    member_id: u64,
    initial: bool,
    interval: Option<Duration>,
) {
    if initial {
        glommio::timer::sleep(INITIAL_CHECK_DELAY).await;
        check_once(&kv, member_id).await;
    }
    let Some(interval) = interval else {
        return;
    };
    loop {
        glommio::timer::sleep(interval).await;
        if kv
            .published
            .stopped
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        check_once(&kv, member_id).await;
    }
}

async fn check_once(kv: &RaftKv, member_id: u64) {
    if kv
        .published
        .leader_id
        .load(std::sync::atomic::Ordering::Relaxed)
        != member_id
    {
        return;
    }
    let Ok(own) = kv.hash_kv(0).await else {
        return;
    };
    let members = kv.members().unwrap_or_default();
    for member in members.iter().filter(|m| m.id != member_id) {
        let Some(theirs) = ask_hash_kv(&member.client_ur_ls, own.current_revision).await else {
            continue;
        };
        if theirs.compact_revision == own.compacted_revision && theirs.hash != own.hash {
            eprintln!(
                "basalt: member {:x} has HashKV {} at revision {} where the leader has {}; \
                 raising CORRUPT",
                member.id, theirs.hash, own.current_revision, own.hash
            );
            let raise = AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: member.id,
                alarm: AlarmType::Corrupt as i32,
            };
            let _ = kv.alarm(raise).await;
        }
    }
}

/// The first of `urls` that answers HashKV at `revision`.
async fn ask_hash_kv(urls: &[String], revision: i64) -> Option<HashKvResponse> {
    for url in urls {
        let Some(host_port) = url.strip_prefix("http://") else {
            continue;
        };
        let Some(addr) = host_port.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
            continue;
        };
        let Ok(client) = Client::connect(addr).await else {
            continue;
        };
        let asked = client
            .unary::<_, HashKvResponse>(
                "/etcdserverpb.Maintenance/HashKV",
                &HashKvRequest { revision },
            )
            .await;
        if let Ok(resp) = asked {
            return Some(resp);
        }
    }
    None
}
