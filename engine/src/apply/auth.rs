//! Auth entries of the log applied to the [`AuthStore`], and the permission check every entry
//! passes first (etcd's `authApplierV3`): the entry names who proposed it and the auth revision
//! their request was checked at, and apply checks again against the state of this moment, so
//! a change of auth between the proposer's check and apply cannot let a request through.
//!
//! Records live in the `auth`, `authUsers` and `authRoles` buckets (formats in
//! [`crate::auth`]). Simple tokens are not state: the Authenticate entry carries the random
//! part, and every member's server registers `<random>.<entry index>` from the outcome.

use basalt_proto::basaltpb::{internal_request::Request, AuthHeader};
use basalt_proto::etcdserverpb::{
    AuthDisableResponse, AuthEnableResponse, AuthRoleAddResponse, AuthRoleDeleteResponse,
    AuthRoleGetResponse, AuthRoleGrantPermissionResponse, AuthRoleListResponse,
    AuthRoleRevokePermissionResponse, AuthStatusResponse, AuthUserAddResponse,
    AuthUserChangePasswordResponse, AuthUserDeleteResponse, AuthUserGetResponse,
    AuthUserGrantRoleResponse, AuthUserListResponse, AuthUserRevokeRoleResponse, ResponseHeader,
};

use super::{storage, Applied, Applier, ApplyError};
use crate::auth::{
    decode_role, decode_state, decode_user, encode_role, encode_state, encode_user, AuthError,
    AuthInfo, AuthRecord, AuthStore,
};
use crate::mvcc::BtreeBackend;

pub(crate) const AUTH_BUCKET: &str = "auth";
pub(crate) const AUTH_USERS_BUCKET: &str = "authUsers";
pub(crate) const AUTH_ROLES_BUCKET: &str = "authRoles";
pub(crate) const AUTH_STATE_KEY: &[u8] = b"state";

/// What an auth entry produced, with what the server needs besides the response.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthApplied {
    Enable(AuthEnableResponse),
    /// Every token is forgotten.
    Disable(AuthDisableResponse),
    Status(AuthStatusResponse),
    /// `name` logged in: register `simple_token` (the simple provider) or sign a token for
    /// `name` at `revision` (JWT).
    Authenticate {
        name: String,
        simple_token: String,
        revision: u64,
        header: ResponseHeader,
    },
    UserAdd(AuthUserAddResponse),
    /// The user's tokens are forgotten.
    UserDelete(String, AuthUserDeleteResponse),
    /// The user's tokens are forgotten.
    UserChangePassword(String, AuthUserChangePasswordResponse),
    UserGet(AuthUserGetResponse),
    UserList(AuthUserListResponse),
    UserGrantRole(AuthUserGrantRoleResponse),
    UserRevokeRole(AuthUserRevokeRoleResponse),
    RoleAdd(AuthRoleAddResponse),
    RoleGet(AuthRoleGetResponse),
    RoleList(AuthRoleListResponse),
    RoleDelete(AuthRoleDeleteResponse),
    RoleGrantPermission(AuthRoleGrantPermissionResponse),
    RoleRevokePermission(AuthRoleRevokePermissionResponse),
}

/// The auth store as its buckets hold it.
pub(super) fn open_auth(backend: &BtreeBackend) -> Result<AuthStore, ApplyError> {
    let bad = |reason: String| ApplyError::Storage(format!("auth buckets: {reason}"));
    let state = backend
        .records(AUTH_BUCKET)
        .map_err(storage)?
        .get(AUTH_STATE_KEY)
        .map(|record| decode_state(record))
        .transpose()
        .map_err(bad)?;
    let users = backend
        .records(AUTH_USERS_BUCKET)
        .map_err(storage)?
        .values()
        .map(|record| decode_user(record))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let roles = backend
        .records(AUTH_ROLES_BUCKET)
        .map_err(storage)?
        .values()
        .map(|record| decode_role(record))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    Ok(AuthStore::restore(state, users, roles))
}

fn who(header: Option<&AuthHeader>) -> Option<AuthInfo> {
    header.map(|h| AuthInfo {
        username: h.username.clone(),
        revision: h.auth_revision,
    })
}

impl Applier {
    /// The auth state now, as client cores check requests against it.
    pub fn auth(&self) -> &AuthStore {
        &self.auth
    }

    /// etcd's `authApplierV3`: the admin requests need the root role; a user may get itself
    /// and its own roles; KV writes and lease revokes need the permissions they use.
    pub(super) fn authorize(
        &self,
        header: Option<&AuthHeader>,
        request: &Option<Request>,
    ) -> Result<(), ApplyError> {
        let auth = self.auth.snapshot();
        if !auth.is_enabled() {
            return Ok(());
        }
        let who = who(header);
        let who = who.as_ref();
        let checked = match request {
            Some(
                Request::AuthEnable(_)
                | Request::AuthDisable(_)
                | Request::AuthStatus(_)
                | Request::AuthUserAdd(_)
                | Request::AuthUserDelete(_)
                | Request::AuthUserChangePassword(_)
                | Request::AuthUserGrantRole(_)
                | Request::AuthUserRevokeRole(_)
                | Request::AuthUserList(_)
                | Request::AuthRoleAdd(_)
                | Request::AuthRoleDelete(_)
                | Request::AuthRoleGrantPermission(_)
                | Request::AuthRoleRevokePermission(_)
                | Request::AuthRoleList(_),
            ) => auth.check_admin(who),
            Some(Request::AuthUserGet(req)) => auth.check_admin(who).or_else(|e| match who {
                Some(who) if who.username == req.name => Ok(()),
                _ => Err(e),
            }),
            Some(Request::AuthRoleGet(req)) => auth.check_admin(who).or_else(|e| match who {
                Some(who) if auth.has_role(&who.username, &req.role) => Ok(()),
                _ => Err(e),
            }),
            Some(Request::Range(req)) => auth.check_range(who, req),
            Some(Request::Put(req)) => auth
                .check_put(who, req)
                .and_then(|()| self.check_lease_puts(who, req.lease)),
            Some(Request::DeleteRange(req)) => auth.check_delete_range(who, req),
            Some(Request::Txn(req)) => auth.check_txn(who, req),
            Some(Request::LeaseRevoke(req)) => self.check_lease_puts(who, req.id),
            _ => Ok(()),
        };
        checked.map_err(ApplyError::Auth)
    }

    /// etcd's `checkLeasePuts`: revoking a lease deletes its keys, and attaching a key to it
    /// ties the key's life to those keys, so both need write access to every attached key.
    fn check_lease_puts(&self, who: Option<&AuthInfo>, lease: i64) -> Result<(), AuthError> {
        if lease == 0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let Some(attached) = self.lessor.time_to_live(lease, true, now) else {
            return Ok(());
        };
        let auth = self.auth.snapshot();
        attached
            .keys
            .iter()
            .try_for_each(|key| auth.check(who, key, &[], crate::auth::Access::Write))
    }

    fn auth_header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: self.store.current_revision(),
            ..Default::default()
        }
    }

    /// Applies one auth request (already authorized) at log `index`.
    pub(super) fn apply_auth(
        &mut self,
        index: u64,
        request: Request,
    ) -> Result<Applied, ApplyError> {
        let header = Some(self.auth_header());
        let changed =
            |records: Result<Vec<AuthRecord>, AuthError>| records.map_err(ApplyError::Auth);
        let applied = match request {
            Request::AuthEnable(_) => {
                let records = changed(self.auth.enable())?;
                self.persist(records);
                AuthApplied::Enable(AuthEnableResponse { header })
            }
            Request::AuthDisable(_) => {
                let records = changed(self.auth.disable())?;
                self.persist(records);
                AuthApplied::Disable(AuthDisableResponse { header })
            }
            Request::AuthStatus(_) => AuthApplied::Status(AuthStatusResponse {
                header,
                enabled: self.auth.snapshot().is_enabled(),
                auth_revision: self.auth.snapshot().revision(),
            }),
            Request::Authenticate(req) => {
                self.auth
                    .authenticate(&req.name)
                    .map_err(ApplyError::Auth)?;
                AuthApplied::Authenticate {
                    simple_token: format!("{}.{index}", req.simple_token),
                    revision: self.auth.snapshot().revision(),
                    name: req.name,
                    header: self.auth_header(),
                }
            }
            Request::AuthUserAdd(req) => {
                let records = changed(self.auth.user_add(&req))?;
                self.persist(records);
                AuthApplied::UserAdd(AuthUserAddResponse { header })
            }
            Request::AuthUserDelete(req) => {
                let records = changed(self.auth.user_delete(&req.name))?;
                self.persist(records);
                AuthApplied::UserDelete(req.name, AuthUserDeleteResponse { header })
            }
            Request::AuthUserChangePassword(req) => {
                let records = changed(self.auth.user_change_password(&req))?;
                self.persist(records);
                AuthApplied::UserChangePassword(req.name, AuthUserChangePasswordResponse { header })
            }
            Request::AuthUserGet(req) => AuthApplied::UserGet(AuthUserGetResponse {
                header,
                roles: self.auth.user_get(&req.name).map_err(ApplyError::Auth)?,
            }),
            Request::AuthUserList(_) => AuthApplied::UserList(AuthUserListResponse {
                header,
                users: self.auth.snapshot().user_names(),
            }),
            Request::AuthUserGrantRole(req) => {
                let records = changed(self.auth.user_grant_role(&req.user, &req.role))?;
                self.persist(records);
                AuthApplied::UserGrantRole(AuthUserGrantRoleResponse { header })
            }
            Request::AuthUserRevokeRole(req) => {
                let records = changed(self.auth.user_revoke_role(&req.name, &req.role))?;
                self.persist(records);
                AuthApplied::UserRevokeRole(AuthUserRevokeRoleResponse { header })
            }
            Request::AuthRoleAdd(req) => {
                let records = changed(self.auth.role_add(&req.name))?;
                self.persist(records);
                AuthApplied::RoleAdd(AuthRoleAddResponse { header })
            }
            Request::AuthRoleGet(req) => AuthApplied::RoleGet(AuthRoleGetResponse {
                header,
                perm: self
                    .auth
                    .snapshot()
                    .role_permissions(&req.role)
                    .map_err(ApplyError::Auth)?,
            }),
            Request::AuthRoleList(_) => AuthApplied::RoleList(AuthRoleListResponse {
                header,
                roles: self.auth.snapshot().role_names(),
            }),
            Request::AuthRoleDelete(req) => {
                let records = changed(self.auth.role_delete(&req.role))?;
                self.persist(records);
                AuthApplied::RoleDelete(AuthRoleDeleteResponse { header })
            }
            Request::AuthRoleGrantPermission(req) => {
                let records = changed(self.auth.role_grant_permission(&req))?;
                self.persist(records);
                AuthApplied::RoleGrantPermission(AuthRoleGrantPermissionResponse { header })
            }
            Request::AuthRoleRevokePermission(req) => {
                let records = changed(self.auth.role_revoke_permission(&req))?;
                self.persist(records);
                AuthApplied::RoleRevokePermission(AuthRoleRevokePermissionResponse { header })
            }
            other => {
                return Err(ApplyError::Undecodable {
                    index,
                    reason: format!("not an auth request: {other:?}"),
                })
            }
        };
        Ok(Applied::Auth(applied))
    }

    /// Writes the changed records with the entry's commit.
    fn persist(&mut self, changed: Vec<AuthRecord>) {
        let auth = self.auth.snapshot().clone();
        let backend = self.store.backend_mut();
        for record in changed {
            match record {
                AuthRecord::State => backend.set_record(
                    AUTH_BUCKET,
                    AUTH_STATE_KEY,
                    Some(&encode_state(auth.is_enabled(), auth.revision())),
                ),
                AuthRecord::User(name) => backend.set_record(
                    AUTH_USERS_BUCKET,
                    name.as_bytes(),
                    auth.user(&name).map(encode_user).as_deref(),
                ),
                AuthRecord::Role(name) => backend.set_record(
                    AUTH_ROLES_BUCKET,
                    name.as_bytes(),
                    auth.role(&name).map(encode_role).as_deref(),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use basalt_proto::authpb::{permission::Type, Permission};
    use basalt_proto::basaltpb::InternalRequest;
    use basalt_proto::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthRoleGetRequest, AuthRoleGrantPermissionRequest,
        AuthUserAddRequest, AuthUserGetRequest, AuthUserGrantRoleRequest, AuthUserListRequest,
    };
    use prost::Message;

    use super::super::tests::{open_applier, put, temp_dir};
    use super::*;

    /// Who proposed an entry: a user name and the auth revision it was checked at.
    type Proposer<'a> = Option<(&'a str, u64)>;

    /// Applies `request` as proposed by `user`, returning its result.
    fn apply_as(
        applier: &mut Applier,
        user: Proposer<'_>,
        request: Request,
    ) -> Result<Applied, ApplyError> {
        let index = applier.applied_index() + 1;
        let data = InternalRequest {
            id: index,
            request: Some(request),
            auth_header: user.map(|(username, auth_revision)| AuthHeader {
                username: username.into(),
                auth_revision,
            }),
        }
        .encode_to_vec();
        applier.apply(index, &data).expect("a request entry").result
    }

    fn user_add(name: &str) -> Request {
        Request::AuthUserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: "$2b$04$hash".into(),
            ..Default::default()
        })
    }

    fn grant_role(user: &str, role: &str) -> Request {
        Request::AuthUserGrantRole(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
    }

    /// root, and alice with role "r" (read-write on the prefix "foo"); auth on.
    fn enabled(applier: &mut Applier) -> u64 {
        for request in [
            user_add("root"),
            grant_role("root", "root"),
            user_add("alice"),
            Request::AuthRoleAdd(AuthRoleAddRequest { name: "r".into() }),
            Request::AuthRoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: "r".into(),
                perm: Some(Permission {
                    perm_type: Type::Readwrite as i32,
                    key: b"foo".to_vec().into(),
                    range_end: b"fop".to_vec().into(),
                }),
            }),
            grant_role("alice", "r"),
            Request::AuthEnable(AuthEnableRequest {}),
        ] {
            apply_as(applier, None, request).unwrap();
        }
        applier.auth().snapshot().revision()
    }

    #[test]
    fn apply_checks_every_entry_against_the_auth_state_of_its_moment() {
        let dir = temp_dir("auth-checks");
        let mut applier = open_applier(&dir);
        let revision = enabled(&mut applier);
        let denied = |e: AuthError| Err(ApplyError::Auth(e));
        let alice = Some(("alice", revision));
        let root = Some(("root", revision));
        let cases: Vec<(&str, Proposer<'_>, Request, Result<(), ApplyError>)> = vec![
            ("granted put", alice, put("foo1", "v"), Ok(())),
            (
                "put outside",
                alice,
                put("b", "v"),
                denied(AuthError::PermissionDenied),
            ),
            (
                "no user",
                None,
                put("foo1", "v"),
                denied(AuthError::UserEmpty),
            ),
            (
                "stale revision",
                Some(("alice", revision - 1)),
                put("foo1", "v"),
                denied(AuthError::AuthOldRevision),
            ),
            (
                "unknown user",
                Some(("mallory", revision)),
                put("foo1", "v"),
                denied(AuthError::PermissionDenied),
            ),
            (
                "admin by a user",
                alice,
                user_add("eve"),
                denied(AuthError::PermissionDenied),
            ),
            (
                "admin by nobody",
                None,
                Request::AuthUserList(AuthUserListRequest {}),
                denied(AuthError::UserEmpty),
            ),
            ("admin by root", root, user_add("eve"), Ok(())),
            (
                "get oneself",
                alice,
                Request::AuthUserGet(AuthUserGetRequest {
                    name: "alice".into(),
                }),
                Ok(()),
            ),
            (
                "get another",
                alice,
                Request::AuthUserGet(AuthUserGetRequest {
                    name: "root".into(),
                }),
                denied(AuthError::PermissionDenied),
            ),
            (
                "get one's role",
                alice,
                Request::AuthRoleGet(AuthRoleGetRequest { role: "r".into() }),
                Ok(()),
            ),
            (
                "grant oneself root",
                alice,
                grant_role("alice", "root"),
                denied(AuthError::PermissionDenied),
            ),
        ];
        for (name, user, request, want) in cases {
            let revision_before = applier.auth().snapshot().revision();
            let got = apply_as(&mut applier, user, request).map(|_| ());
            assert_eq!(got, want, "{name}");
            if want.is_err() {
                assert_eq!(
                    applier.auth().snapshot().revision(),
                    revision_before,
                    "{name}"
                );
            }
        }
        let stored = applier
            .store()
            .range(&basalt_proto::etcdserverpb::RangeRequest {
                key: b"b".to_vec().into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(stored.count, 0, "a refused put wrote nothing");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn auth_state_survives_a_reopen() {
        let dir = temp_dir("auth-reopen");
        let mut applier = open_applier(&dir);
        let revision = enabled(&mut applier);
        applier.checkpoint().unwrap();
        drop(applier);
        let reopened = open_applier(&dir);
        let auth = reopened.auth().snapshot();
        assert!(auth.is_enabled());
        assert_eq!(auth.revision(), revision);
        assert_eq!(auth.user_names(), ["alice", "root"]);
        assert!(auth.has_role("alice", "r"));
        assert_eq!(auth.role_permissions("r").unwrap().len(), 1);
        let alice = auth.info("alice");
        assert_eq!(
            auth.check(Some(&alice), b"foo2", b"", crate::auth::Access::Write),
            Ok(())
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
