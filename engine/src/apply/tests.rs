use basalt_proto::basaltpb::{internal_request::Request, InternalRequest};
use basalt_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, PutRequest, RangeRequest,
};
use prost::Message;

use super::*;
use crate::btree::{open, Options};

pub(super) fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("basalt-apply-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(super) fn open_applier(dir: &std::path::Path) -> Applier {
    Applier::open(
        open(dir.join("db"), Options::default()).unwrap(),
        Limits::default(),
    )
    .unwrap()
}

fn entry(id: u64, request: Request) -> Vec<u8> {
    InternalRequest {
        auth_header: None,
        id,
        request: Some(request),
    }
    .encode_to_vec()
}

pub(super) fn put(key: &str, value: &str) -> Request {
    Request::Put(PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    })
}

#[test]
fn every_entry_content_yields_a_result_and_never_a_panic() {
    let dir = temp_dir("total");
    let mut applier = open_applier(&dir);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0xff, 0xff, 0xff], "undecodable"),
        (
            InternalRequest {
                auth_header: None,
                id: 3,
                request: None,
            }
            .encode_to_vec(),
            "undecodable",
        ),
        (entry(4, Request::Alarm(AlarmRequest::default())), "ok"),
        (entry(5, put("", "v")), "mvcc"),
        (entry(6, put("k", "v")), "ok"),
    ];
    for (i, (data, want)) in cases.into_iter().enumerate() {
        let outcome = applier.apply(i as u64 + 1, &data).expect("a request entry");
        let got = match &outcome.result {
            Ok(_) => "ok",
            Err(ApplyError::Undecodable { .. }) => "undecodable",
            Err(ApplyError::NoSpace | ApplyError::Corrupt) => "alarm",
            Err(ApplyError::Mvcc(_)) => "mvcc",
            Err(ApplyError::Lease(_)) => "lease",
            Err(ApplyError::Auth(_)) => "auth",
            Err(ApplyError::Storage(_) | ApplyError::OutOfSpace(_)) => "storage",
        };
        assert_eq!(got, want, "case {i}: {outcome:?}");
    }
    assert_eq!(applier.applied_index(), 5);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn entries_at_or_below_the_applied_index_are_not_applied_again() {
    let dir = temp_dir("replay");
    let mut applier = open_applier(&dir);
    assert!(applier.apply(1, &entry(1, put("a", "1"))).is_some());
    assert!(applier.apply(1, &entry(1, put("a", "1"))).is_none());
    assert_eq!(applier.store().current_revision(), 2);
    assert!(
        applier.apply(2, &[]).is_none(),
        "a no-op entry has no outcome"
    );
    assert_eq!(applier.applied_index(), 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_reopened_applier_resumes_at_its_last_checkpoint_not_its_last_commit() {
    let dir = temp_dir("checkpoint");
    {
        let mut applier = open_applier(&dir);
        applier.apply(1, &entry(1, put("a", "1")));
        applier.checkpoint().unwrap();
        applier.apply(2, &entry(2, put("b", "2")));
        applier.commit().unwrap();
        assert_eq!(applier.checkpointed_index(), 1);
    }
    let applier = open_applier(&dir);
    assert_eq!(applier.applied_index(), 1);
    let all = RangeRequest {
        key: vec![0].into(),
        range_end: vec![0].into(),
        ..Default::default()
    };
    let resp = applier.range(&all).unwrap();
    assert_eq!(resp.kvs.len(), 1);
    assert_eq!(&resp.kvs[0].key[..], b"a");
    std::fs::remove_dir_all(dir).unwrap();
}

fn alarm(action: AlarmAction, alarm: AlarmType) -> Request {
    Request::Alarm(AlarmRequest {
        action: action as i32,
        member_id: 7,
        alarm: alarm as i32,
    })
}

#[test]
fn a_raised_nospace_alarm_refuses_writes_that_take_space_until_disarmed_even_across_restart() {
    let dir = temp_dir("nospace");
    let mut applier = open_applier(&dir);
    let mut index = 0;
    let mut apply = |applier: &mut Applier, request: Request| {
        index += 1;
        applier.apply(index, &entry(index, request)).unwrap().result
    };
    apply(&mut applier, put("a", "1")).unwrap();
    apply(
        &mut applier,
        alarm(AlarmAction::Activate, AlarmType::Nospace),
    )
    .unwrap();
    applier.checkpoint().unwrap();
    drop(applier);
    let mut applier = open_applier(&dir);
    assert_eq!(applier.alarms().len(), 1, "alarms survive a restart");
    let refused = apply(&mut applier, put("b", "1"));
    assert_eq!(refused, Err(ApplyError::NoSpace));
    assert_eq!(
        refused.unwrap_err().to_string(),
        "etcdserver: mvcc: database space exceeded"
    );
    let delete = Request::DeleteRange(basalt_proto::etcdserverpb::DeleteRangeRequest {
        key: b"a".to_vec().into(),
        ..Default::default()
    });
    apply(&mut applier, delete).expect("deletes still apply");
    let grant =
        |id| Request::LeaseGrant(basalt_proto::etcdserverpb::LeaseGrantRequest { ttl: 60, id });
    assert_eq!(
        apply(&mut applier, grant(5)),
        Err(ApplyError::NoSpace),
        "etcd 3.5.1 refuses LeaseGrant under NOSPACE"
    );
    apply(
        &mut applier,
        alarm(AlarmAction::Deactivate, AlarmType::Nospace),
    )
    .unwrap();
    apply(&mut applier, put("b", "1")).expect("writes apply again once disarmed");
    apply(&mut applier, grant(5)).expect("leases are granted again once disarmed");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn membership_follows_the_log_and_survives_a_reopen() {
    use basalt_proto::basaltpb::{member_change::Kind, MemberChange};
    use basalt_proto::etcdserverpb::Member;
    let dir = temp_dir("members");
    let member = |id: u64, is_learner: bool| Member {
        id,
        name: format!("m{id}"),
        peer_ur_ls: vec![format!("http://127.0.0.1:{id}")],
        is_learner,
        ..Default::default()
    };
    let change = |id, kind: Kind, member: Member| {
        MemberChange {
            id,
            kind: kind as i32,
            member: Some(member),
        }
        .encode_to_vec()
    };
    let mut applier = open_applier(&dir);
    applier.bootstrap(1, &[member(1, false), member(2, false)]);
    let added = applier.apply_conf_change(2, &change(77, Kind::Add, member(3, true)));
    assert_eq!(added.map(|o| o.id), Some(77));
    applier.apply_conf_change(3, &change(0, Kind::Promote, member(3, false)));
    applier.apply_conf_change(4, &change(0, Kind::Remove, member(1, false)));
    assert_eq!(
        applier.apply_conf_change(4, &[]),
        None,
        "a replay applies nothing"
    );
    let attributes = Member {
        id: 2,
        name: "renamed".into(),
        client_ur_ls: vec!["http://127.0.0.1:9".into()],
        ..Default::default()
    };
    applier.apply(5, &entry(0, Request::MemberAttributes(attributes)));
    applier.checkpoint().unwrap();
    drop(applier);

    let applier = open_applier(&dir);
    let members = applier.members();
    let summary: Vec<(u64, &str, bool, usize)> = members
        .iter()
        .map(|m| (m.id, m.name.as_str(), m.is_learner, m.client_ur_ls.len()))
        .collect();
    assert_eq!(summary, vec![(2, "renamed", false, 1), (3, "m3", false, 0)]);
    assert!(applier.is_removed(1));
    assert!(!applier.is_removed(2));
    assert_eq!(applier.applied_index(), 5);
}
