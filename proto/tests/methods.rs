//! `METHODS` is the server's routing truth: it must list exactly the gRPC
//! methods etcd 3.5 serves, each with etcd's streaming shape.

use basalt_proto::{method_by_path, METHODS};

/// Every method etcd 3.5 serves: (path, client_streaming, server_streaming).
const ETCD_3_5_METHODS: &[(&str, bool, bool)] = &[
    ("/etcdserverpb.KV/Range", false, false),
    ("/etcdserverpb.KV/Put", false, false),
    ("/etcdserverpb.KV/DeleteRange", false, false),
    ("/etcdserverpb.KV/Txn", false, false),
    ("/etcdserverpb.KV/Compact", false, false),
    ("/etcdserverpb.Watch/Watch", true, true),
    ("/etcdserverpb.Lease/LeaseGrant", false, false),
    ("/etcdserverpb.Lease/LeaseRevoke", false, false),
    ("/etcdserverpb.Lease/LeaseKeepAlive", true, true),
    ("/etcdserverpb.Lease/LeaseTimeToLive", false, false),
    ("/etcdserverpb.Lease/LeaseLeases", false, false),
    ("/etcdserverpb.Cluster/MemberAdd", false, false),
    ("/etcdserverpb.Cluster/MemberRemove", false, false),
    ("/etcdserverpb.Cluster/MemberUpdate", false, false),
    ("/etcdserverpb.Cluster/MemberList", false, false),
    ("/etcdserverpb.Cluster/MemberPromote", false, false),
    ("/etcdserverpb.Maintenance/Alarm", false, false),
    ("/etcdserverpb.Maintenance/Status", false, false),
    ("/etcdserverpb.Maintenance/Defragment", false, false),
    ("/etcdserverpb.Maintenance/Hash", false, false),
    ("/etcdserverpb.Maintenance/HashKV", false, false),
    ("/etcdserverpb.Maintenance/Snapshot", false, true),
    ("/etcdserverpb.Maintenance/MoveLeader", false, false),
    ("/etcdserverpb.Maintenance/Downgrade", false, false),
    ("/etcdserverpb.Auth/AuthEnable", false, false),
    ("/etcdserverpb.Auth/AuthDisable", false, false),
    ("/etcdserverpb.Auth/AuthStatus", false, false),
    ("/etcdserverpb.Auth/Authenticate", false, false),
    ("/etcdserverpb.Auth/UserAdd", false, false),
    ("/etcdserverpb.Auth/UserGet", false, false),
    ("/etcdserverpb.Auth/UserList", false, false),
    ("/etcdserverpb.Auth/UserDelete", false, false),
    ("/etcdserverpb.Auth/UserChangePassword", false, false),
    ("/etcdserverpb.Auth/UserGrantRole", false, false),
    ("/etcdserverpb.Auth/UserRevokeRole", false, false),
    ("/etcdserverpb.Auth/RoleAdd", false, false),
    ("/etcdserverpb.Auth/RoleGet", false, false),
    ("/etcdserverpb.Auth/RoleList", false, false),
    ("/etcdserverpb.Auth/RoleDelete", false, false),
    ("/etcdserverpb.Auth/RoleGrantPermission", false, false),
    ("/etcdserverpb.Auth/RoleRevokePermission", false, false),
    ("/v3electionpb.Election/Campaign", false, false),
    ("/v3electionpb.Election/Proclaim", false, false),
    ("/v3electionpb.Election/Leader", false, false),
    ("/v3electionpb.Election/Observe", false, true),
    ("/v3electionpb.Election/Resign", false, false),
    ("/v3lockpb.Lock/Lock", false, false),
    ("/v3lockpb.Lock/Unlock", false, false),
];

#[test]
fn methods_table_lists_exactly_etcd_3_5_methods_with_their_streaming_shape() {
    let mut expected: Vec<(&str, bool, bool)> = ETCD_3_5_METHODS.to_vec();
    expected.sort();
    let actual: Vec<(&str, bool, bool)> = METHODS
        .iter()
        .map(|info| (info.path, info.client_streaming, info.server_streaming))
        .collect();
    assert_eq!(actual, expected);
}

#[test]
fn method_path_is_slash_service_slash_method() {
    for info in METHODS {
        assert_eq!(info.path, format!("/{}/{}", info.service, info.method));
        assert!(
            info.service.contains('.'),
            "{} is not package-qualified",
            info.service
        );
    }
}

#[test]
fn method_by_path_finds_every_method() {
    for info in METHODS {
        assert_eq!(method_by_path(info.path), Some(info));
    }
}

#[test]
fn method_by_path_rejects_paths_no_service_declares() {
    let unknown_paths = [
        "",
        "/",
        "/etcdserverpb.KV",
        "/etcdserverpb.KV/",
        "/etcdserverpb.KV/range",
        "/etcdserverpb.KV/Range/",
        "etcdserverpb.KV/Range",
        "/etcdserverpb.kv/Range",
        "/KV/Range",
        "/etcdserverpb.KV/Get",
        "/grpc.health.v1.Health/Check",
    ];
    for path in unknown_paths {
        assert_eq!(method_by_path(path), None, "{path:?}");
    }
}
