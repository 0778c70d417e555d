use super::*;
use basalt_proto::authpb::permission::Type;
use basalt_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget},
    Compare, RequestOp,
};

fn user_add(name: &str) -> AuthUserAddRequest {
    AuthUserAddRequest {
        name: name.into(),
        hashed_password: "$2a$10$not-a-real-hash".into(),
        ..Default::default()
    }
}

fn grant(role: &str, kind: Type, key: &str, range_end: &str) -> AuthRoleGrantPermissionRequest {
    AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(Permission {
            perm_type: kind as i32,
            key: key.as_bytes().to_vec().into(),
            range_end: range_end.as_bytes().to_vec().into(),
        }),
    }
}

/// root (with the root role) and alice (role "r": read-write on the prefix "foo"), auth on.
fn enabled_store() -> AuthStore {
    let mut store = AuthStore::default();
    store.user_add(&user_add("root")).unwrap();
    store.user_grant_role("root", ROOT_ROLE).unwrap();
    store.user_add(&user_add("alice")).unwrap();
    store.role_add("r").unwrap();
    store
        .role_grant_permission(&grant("r", Type::Readwrite, "foo", "fop"))
        .unwrap();
    store.user_grant_role("alice", "r").unwrap();
    store.enable().unwrap();
    store
}

#[test]
fn enabling_needs_a_root_user_with_the_root_role() {
    let mut store = AuthStore::default();
    assert_eq!(store.enable(), Err(AuthError::RootUserNotExist));
    store.user_add(&user_add("root")).unwrap();
    assert_eq!(store.enable(), Err(AuthError::RootRoleNotExist));
    store.user_grant_role("root", ROOT_ROLE).unwrap();
    let revision = store.snapshot().revision();
    assert_eq!(store.enable(), Ok(vec![AuthRecord::State]));
    assert!(store.snapshot().is_enabled());
    assert_eq!(
        store.snapshot().revision(),
        revision,
        "enable keeps the revision"
    );
    assert_eq!(store.enable(), Ok(vec![]), "enabling twice changes nothing");
}

#[test]
fn management_requests_are_refused_as_etcd_refuses_them() {
    type Case = (
        &'static str,
        fn(&mut AuthStore) -> Result<Vec<AuthRecord>, AuthError>,
        AuthError,
    );
    let cases: &[Case] = &[
        (
            "empty user name",
            |s| s.user_add(&user_add("")),
            AuthError::UserEmpty,
        ),
        (
            "user twice",
            |s| s.user_add(&user_add("alice")),
            AuthError::UserAlreadyExist,
        ),
        (
            "delete root while on",
            |s| s.user_delete("root"),
            AuthError::InvalidAuthMgmt,
        ),
        (
            "delete nobody",
            |s| s.user_delete("bob"),
            AuthError::UserNotFound,
        ),
        (
            "revoke root's root role",
            |s| s.user_revoke_role("root", "root"),
            AuthError::InvalidAuthMgmt,
        ),
        (
            "revoke a role not held",
            |s| s.user_revoke_role("alice", "root"),
            AuthError::RoleNotGranted,
        ),
        (
            "grant a missing role",
            |s| s.user_grant_role("alice", "nope"),
            AuthError::RoleNotFound,
        ),
        (
            "grant to nobody",
            |s| s.user_grant_role("bob", "r"),
            AuthError::UserNotFound,
        ),
        ("empty role name", |s| s.role_add(""), AuthError::RoleEmpty),
        (
            "role twice",
            |s| s.role_add("r"),
            AuthError::RoleAlreadyExist,
        ),
        (
            "delete the root role while on",
            |s| s.role_delete("root"),
            AuthError::InvalidAuthMgmt,
        ),
        (
            "delete a missing role",
            |s| s.role_delete("nope"),
            AuthError::RoleNotFound,
        ),
        (
            "permission of a missing role",
            |s| s.role_grant_permission(&grant("nope", Type::Read, "a", "")),
            AuthError::RoleNotFound,
        ),
        (
            "revoke a permission not granted",
            |s| {
                s.role_revoke_permission(&AuthRoleRevokePermissionRequest {
                    role: "r".into(),
                    key: b"foo".to_vec().into(),
                    range_end: b"foq".to_vec().into(),
                })
            },
            AuthError::PermissionNotGranted,
        ),
    ];
    for (name, act, error) in cases {
        let mut store = enabled_store();
        let before = store.snapshot().clone();
        assert_eq!(act(&mut store), Err(error.clone()), "{name}");
        assert_eq!(
            store.snapshot().revision(),
            before.revision(),
            "{name}: revision moved"
        );
        assert_eq!(store.snapshot().user_names(), before.user_names(), "{name}");
    }
}

#[test]
fn every_change_moves_the_revision_and_rebuilds_permissions() {
    let mut store = enabled_store();
    let alice = store.snapshot().info("alice");
    assert_eq!(
        store
            .snapshot()
            .check(Some(&alice), b"foo1", b"", Access::Write),
        Ok(())
    );
    store.user_revoke_role("alice", "r").unwrap();
    let now = store.snapshot();
    assert_eq!(now.revision(), alice.revision + 1);
    assert_eq!(
        now.check(Some(&alice), b"foo1", b"", Access::Write),
        Err(AuthError::AuthOldRevision),
        "a request checked before the change is stale"
    );
    assert_eq!(
        now.check(Some(&now.info("alice")), b"foo1", b"", Access::Write),
        Err(AuthError::PermissionDenied)
    );
}

#[test]
fn requests_are_checked_as_etcd_checks_them() {
    let store = enabled_store();
    let auth = store.snapshot();
    let alice = auth.info("alice");
    let root = auth.info("root");
    let ghost = auth.info("ghost");
    let put = |key: &str, prev_kv| PutRequest {
        key: key.as_bytes().to_vec().into(),
        prev_kv,
        ..Default::default()
    };
    let op_put = |key: &str| RequestOp {
        request: Some(Op::RequestPut(put(key, false))),
    };
    let txn = |compare_key: &str, op: RequestOp| TxnRequest {
        compare: vec![Compare {
            key: compare_key.as_bytes().to_vec().into(),
            target: CompareTarget::Version as i32,
            result: CompareResult::Equal as i32,
            ..Default::default()
        }],
        success: vec![op],
        ..Default::default()
    };
    let nested = |inner: TxnRequest| RequestOp {
        request: Some(Op::RequestTxn(inner)),
    };
    assert_eq!(auth.check_put(Some(&alice), &put("foo1", true)), Ok(()));
    assert_eq!(auth.check_put(Some(&root), &put("anything", true)), Ok(()));
    assert_eq!(
        auth.check_put(None, &put("foo1", false)),
        Err(AuthError::UserEmpty)
    );
    assert_eq!(
        auth.check_put(Some(&ghost), &put("foo1", false)),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(
        auth.check_put(Some(&alice), &put("bar", false)),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(
        auth.check_txn(Some(&alice), &txn("foo", op_put("foo2"))),
        Ok(())
    );
    for (name, request) in [
        ("compare outside", txn("bar", op_put("foo2"))),
        ("op outside", txn("foo", op_put("bar"))),
        (
            "nested op outside",
            txn("foo", nested(txn("foo", op_put("bar")))),
        ),
        (
            "nested compare outside",
            txn("foo", nested(txn("bar", op_put("foo")))),
        ),
    ] {
        assert_eq!(
            auth.check_txn(Some(&alice), &request),
            Err(AuthError::PermissionDenied),
            "{name}"
        );
    }
    assert_eq!(auth.check_admin(Some(&root)), Ok(()));
    assert_eq!(
        auth.check_admin(Some(&alice)),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(auth.check_admin(Some(&ghost)), Err(AuthError::UserNotFound));
    assert_eq!(auth.check_admin(None), Err(AuthError::UserEmpty));
}

#[test]
fn with_auth_off_everything_is_allowed_and_login_is_refused() {
    let mut store = enabled_store();
    store.disable().unwrap();
    let auth = store.snapshot();
    assert_eq!(auth.check(None, b"x", b"\0", Access::Write), Ok(()));
    assert_eq!(auth.check_admin(None), Ok(()));
    assert_eq!(store.authenticate("alice"), Err(AuthError::AuthNotEnabled));
    assert_eq!(
        store.user_delete("root").map(|_| ()),
        Ok(()),
        "root may go while auth is off"
    );
}

#[test]
fn no_password_users_cannot_log_in() {
    let mut store = enabled_store();
    store
        .user_add(&AuthUserAddRequest {
            name: "cert-only".into(),
            options: Some(UserAddOptions { no_password: true }),
            hashed_password: "ignored".into(),
            ..Default::default()
        })
        .unwrap();
    assert!(store
        .snapshot()
        .user("cert-only")
        .unwrap()
        .password
        .is_empty());
    assert_eq!(store.authenticate("cert-only"), Err(AuthError::AuthFailed));
    assert_eq!(store.authenticate("nobody"), Err(AuthError::AuthFailed));
    assert_eq!(store.authenticate("alice"), Ok(()));
}

#[test]
fn deleting_a_role_takes_it_from_its_users() {
    let mut store = enabled_store();
    let changed = store.role_delete("r").unwrap();
    assert!(changed.contains(&AuthRecord::User("alice".into())));
    assert_eq!(store.user_get("alice"), Ok(vec![]));
    assert_eq!(
        store.snapshot().role_permissions("r"),
        Err(AuthError::RoleNotFound)
    );
}
