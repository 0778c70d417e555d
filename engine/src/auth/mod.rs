//! etcd's auth store: users, roles, their key permissions, the enabled flag and the auth
//! revision, changed only by applied log entries, and the permission checks every request
//! passes when auth is on.
//!
//! Owns: the rules of each Auth request (etcd 3.5's `server/auth/store.go`), the immutable
//! [`AuthSnapshot`] that client cores check requests against without a hop to the writer (a new
//! one after each change, with its merged permission intervals rebuilt: etcd's permission cache
//! invalidated by revision), and the records of the `auth`, `authUsers` and `authRoles`
//! buckets. Must never: hold or compare a clear password (the proposer hashes with bcrypt and
//! checks passwords; only hashes arrive here), or change state outside [`AuthStore`]'s
//! methods, which the applier calls in log order.

mod perm;
mod records;

pub use perm::{Intervals, UserPerms};
pub use records::{decode_role, decode_state, decode_user, encode_role, encode_state, encode_user};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use basalt_proto::authpb::{Permission, Role, User, UserAddOptions};
use basalt_proto::etcdserverpb::{
    request_op::Request as Op, AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest,
    AuthUserAddRequest, AuthUserChangePasswordRequest, DeleteRangeRequest, PutRequest,
    RangeRequest, TxnRequest,
};

/// The user whose existence (with the root role) auth enable requires, and whom it cannot lose.
pub const ROOT_USER: &str = "root";
/// The role that may do anything; it exists implicitly for granting.
pub const ROOT_ROLE: &str = "root";

/// etcd's auth errors, each with etcd's exact text (gRPC codes are mapped at the edge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// A login with a password as a `--no-password` user (etcd 3.5.1 sends this text with
    /// gRPC's Unknown code).
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
}

/// Who sends a request and the auth revision it was checked at (etcd's `AuthInfo`). A
/// revision of 0 means no user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    pub revision: u64,
}

/// What a permission check asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The auth state at one auth revision, immutable; cheap to share between threads.
#[derive(Debug, Clone, Default)]
pub struct AuthSnapshot {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Each user's merged permissions, rebuilt with every snapshot.
    perms: HashMap<String, UserPerms>,
}

impl AuthSnapshot {
    fn new(
        enabled: bool,
        revision: u64,
        users: BTreeMap<String, User>,
        roles: BTreeMap<String, Role>,
    ) -> Self {
        let perms = users
            .iter()
            .map(|(name, user)| {
                let granted = user
                    .roles
                    .iter()
                    .filter_map(|role| roles.get(role))
                    .flat_map(|role| &role.key_permission);
                (name.clone(), UserPerms::merge(granted))
            })
            .collect();
        AuthSnapshot {
            enabled,
            revision,
            users,
            roles,
            perms,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// The identity of a user authenticated now (a valid simple token): checked at this
    /// revision.
    pub fn info(&self, username: &str) -> AuthInfo {
        AuthInfo {
            username: username.to_owned(),
            revision: self.revision,
        }
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    pub fn has_role(&self, username: &str, role: &str) -> bool {
        self.users
            .get(username)
            .is_some_and(|user| user.roles.iter().any(|r| r == role))
    }

    /// etcd's `isOpPermitted`: with auth on, a request needs a user, a current revision, and
    /// the root role or a granted range covering the request.
    pub fn check(
        &self,
        who: Option<&AuthInfo>,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let who = who
            .filter(|who| who.revision != 0)
            .ok_or(AuthError::UserEmpty)?;
        if who.revision < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        if self.has_role(&who.username, ROOT_ROLE) {
            return Ok(());
        }
        let perms = self
            .perms
            .get(&who.username)
            .ok_or(AuthError::PermissionDenied)?;
        let granted = match access {
            Access::Read => &perms.read,
            Access::Write => &perms.write,
        };
        if granted.allows(key, range_end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// etcd's `IsAdminPermitted`: with auth on, only a user with the root role.
    pub fn check_admin(&self, who: Option<&AuthInfo>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let who = who
            .filter(|who| !who.username.is_empty())
            .ok_or(AuthError::UserEmpty)?;
        let user = self
            .users
            .get(&who.username)
            .ok_or(AuthError::UserNotFound)?;
        if user.roles.iter().any(|r| r == ROOT_ROLE) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    pub fn check_range(&self, who: Option<&AuthInfo>, req: &RangeRequest) -> Result<(), AuthError> {
        self.check(who, &req.key, &req.range_end, Access::Read)
    }

    /// A put writes its key; asking for the previous value reads it too.
    pub fn check_put(&self, who: Option<&AuthInfo>, req: &PutRequest) -> Result<(), AuthError> {
        self.check(who, &req.key, &[], Access::Write)?;
        if req.prev_kv {
            self.check(who, &req.key, &[], Access::Read)?;
        }
        Ok(())
    }

    /// A delete writes its range; asking for the previous values reads it too.
    pub fn check_delete_range(
        &self,
        who: Option<&AuthInfo>,
        req: &DeleteRangeRequest,
    ) -> Result<(), AuthError> {
        if req.prev_kv {
            self.check(who, &req.key, &req.range_end, Access::Read)?;
        }
        self.check(who, &req.key, &req.range_end, Access::Write)
    }

    /// etcd's `checkTxnAuth`: every compare reads its range, every op of both branches is
    /// checked as on its own. Nested txns are checked all the way down (etcd 3.5.1 skipped
    /// them; later releases check them as here).
    pub fn check_txn(&self, who: Option<&AuthInfo>, txn: &TxnRequest) -> Result<(), AuthError> {
        for compare in &txn.compare {
            self.check(who, &compare.key, &compare.range_end, Access::Read)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match &op.request {
                Some(Op::RequestRange(req)) => self.check_range(who, req)?,
                Some(Op::RequestPut(req)) => self.check_put(who, req)?,
                Some(Op::RequestDeleteRange(req)) => self.check_delete_range(who, req)?,
                Some(Op::RequestTxn(nested)) => self.check_txn(who, nested)?,
                None => {}
            }
        }
        Ok(())
    }

    /// The response-side views of the state.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// etcd 3.5.1's RoleGet: the permissions granted, none shown for the root role (which
    /// needs none).
    pub fn role_permissions(&self, role: &str) -> Result<Vec<Permission>, AuthError> {
        let found = self.roles.get(role).ok_or(AuthError::RoleNotFound)?;
        Ok(found.key_permission.clone())
    }
}

/// One change to the auth buckets, for the applier to write with the entry's commit.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthRecord {
    /// The enabled flag and the auth revision.
    State,
    User(String),
    Role(String),
}

/// The writer's auth state: the newest snapshot, replaced whole by each change.
#[derive(Debug, Clone, Default)]
pub struct AuthStore {
    current: Arc<AuthSnapshot>,
}

/// The password a user is stored with: none for a `--no-password` user, else the bcrypt hash
/// the proposer computed (etcd's `hashedPassword`; Basalt's entries carry the hash itself).
fn stored_password(no_password: bool, hashed: &str) -> Vec<u8> {
    if no_password {
        Vec::new()
    } else {
        hashed.as_bytes().to_vec()
    }
}

impl AuthStore {
    /// The store as its buckets held it (a new store: disabled, revision 1 as etcd starts).
    pub fn restore(
        state: Option<(bool, u64)>,
        users: impl IntoIterator<Item = User>,
        roles: impl IntoIterator<Item = Role>,
    ) -> Self {
        let (enabled, revision) = state.unwrap_or((false, 1));
        let users = users
            .into_iter()
            .map(|u| (String::from_utf8_lossy(&u.name).into_owned(), u))
            .collect();
        let roles = roles
            .into_iter()
            .map(|r| (String::from_utf8_lossy(&r.name).into_owned(), r))
            .collect();
        AuthStore {
            current: Arc::new(AuthSnapshot::new(enabled, revision, users, roles)),
        }
    }

    /// The state now; the applier publishes it after each change.
    pub fn snapshot(&self) -> &Arc<AuthSnapshot> {
        &self.current
    }

    fn change(
        &mut self,
        f: impl FnOnce(
            &mut bool,
            &mut BTreeMap<String, User>,
            &mut BTreeMap<String, Role>,
        ) -> Result<Vec<AuthRecord>, AuthError>,
    ) -> Result<Vec<AuthRecord>, AuthError> {
        let mut enabled = self.current.enabled;
        let mut users = self.current.users.clone();
        let mut roles = self.current.roles.clone();
        let mut changed = f(&mut enabled, &mut users, &mut roles)?;
        // Every change moves the revision on (etcd's commitRevision), invalidating requests
        // checked against the old state.
        let revision = self.current.revision + 1;
        changed.push(AuthRecord::State);
        self.current = Arc::new(AuthSnapshot::new(enabled, revision, users, roles));
        Ok(changed)
    }

    /// etcd's AuthEnable: the root user must exist and hold the root role. Enabling an enabled
    /// store changes nothing (and keeps the revision).
    pub fn enable(&mut self) -> Result<Vec<AuthRecord>, AuthError> {
        if self.current.enabled {
            return Ok(Vec::new());
        }
        let root = self
            .current
            .users
            .get(ROOT_USER)
            .ok_or(AuthError::RootUserNotExist)?;
        if !root.roles.iter().any(|r| r == ROOT_ROLE) {
            return Err(AuthError::RootRoleNotExist);
        }
        let mut next = (*self.current).clone();
        next.enabled = true;
        self.current = Arc::new(next);
        Ok(vec![AuthRecord::State])
    }

    /// etcd's AuthDisable: a disabled store changes nothing.
    pub fn disable(&mut self) -> Result<Vec<AuthRecord>, AuthError> {
        if !self.current.enabled {
            return Ok(Vec::new());
        }
        self.change(|enabled, _, _| {
            *enabled = false;
            Ok(Vec::new())
        })
    }

    pub fn user_add(&mut self, req: &AuthUserAddRequest) -> Result<Vec<AuthRecord>, AuthError> {
        if req.name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        self.change(|_, users, _| {
            if users.contains_key(&req.name) {
                return Err(AuthError::UserAlreadyExist);
            }
            let options = req.options.unwrap_or(UserAddOptions { no_password: false });
            users.insert(
                req.name.clone(),
                User {
                    name: req.name.as_bytes().to_vec().into(),
                    password: stored_password(options.no_password, &req.hashed_password).into(),
                    roles: Vec::new(),
                    options: Some(options),
                },
            );
            Ok(vec![AuthRecord::User(req.name.clone())])
        })
    }

    pub fn user_delete(&mut self, name: &str) -> Result<Vec<AuthRecord>, AuthError> {
        if self.current.enabled && name == ROOT_USER {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.change(|_, users, _| {
            users.remove(name).ok_or(AuthError::UserNotFound)?;
            Ok(vec![AuthRecord::User(name.to_owned())])
        })
    }

    pub fn user_change_password(
        &mut self,
        req: &AuthUserChangePasswordRequest,
    ) -> Result<Vec<AuthRecord>, AuthError> {
        self.change(|_, users, _| {
            let user = users.get_mut(&req.name).ok_or(AuthError::UserNotFound)?;
            let no_password = user.options.is_some_and(|o| o.no_password);
            user.password = stored_password(no_password, &req.hashed_password).into();
            Ok(vec![AuthRecord::User(req.name.clone())])
        })
    }

    /// Granting a role the user holds already changes nothing, the revision included (etcd
    /// returns before committing).
    pub fn user_grant_role(
        &mut self,
        user: &str,
        role: &str,
    ) -> Result<Vec<AuthRecord>, AuthError> {
        let found = self
            .current
            .users
            .get(user)
            .ok_or(AuthError::UserNotFound)?;
        if role != ROOT_ROLE && !self.current.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        if found.roles.iter().any(|r| r == role) {
            return Ok(Vec::new());
        }
        self.change(|_, users, _| {
            let roles = &mut users.get_mut(user).expect("checked above").roles;
            roles.push(role.to_owned());
            roles.sort();
            Ok(vec![AuthRecord::User(user.to_owned())])
        })
    }

    pub fn user_revoke_role(
        &mut self,
        user: &str,
        role: &str,
    ) -> Result<Vec<AuthRecord>, AuthError> {
        if self.current.enabled && user == ROOT_USER && role == ROOT_ROLE {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.change(|_, users, _| {
            let found = users.get_mut(user).ok_or(AuthError::UserNotFound)?;
            let before = found.roles.len();
            found.roles.retain(|r| r != role);
            if found.roles.len() == before {
                return Err(AuthError::RoleNotGranted);
            }
            Ok(vec![AuthRecord::User(user.to_owned())])
        })
    }

    pub fn user_get(&self, name: &str) -> Result<Vec<String>, AuthError> {
        let user = self
            .current
            .users
            .get(name)
            .ok_or(AuthError::UserNotFound)?;
        Ok(user.roles.clone())
    }

    pub fn role_add(&mut self, name: &str) -> Result<Vec<AuthRecord>, AuthError> {
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        self.change(|_, _, roles| {
            if roles.contains_key(name) {
                return Err(AuthError::RoleAlreadyExist);
            }
            roles.insert(
                name.to_owned(),
                Role {
                    name: name.as_bytes().to_vec().into(),
                    key_permission: Vec::new(),
                },
            );
            Ok(vec![AuthRecord::Role(name.to_owned())])
        })
    }

    /// Deleting a role takes it from every user holding it.
    pub fn role_delete(&mut self, name: &str) -> Result<Vec<AuthRecord>, AuthError> {
        if self.current.enabled && name == ROOT_ROLE {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.change(|_, users, roles| {
            roles.remove(name).ok_or(AuthError::RoleNotFound)?;
            let mut changed = vec![AuthRecord::Role(name.to_owned())];
            for (user_name, user) in users.iter_mut() {
                let before = user.roles.len();
                user.roles.retain(|r| r != name);
                if user.roles.len() != before {
                    changed.push(AuthRecord::User(user_name.clone()));
                }
            }
            Ok(changed)
        })
    }

    /// A permission on the same key and range end replaces the old one's type; permissions
    /// stay sorted by key.
    pub fn role_grant_permission(
        &mut self,
        req: &AuthRoleGrantPermissionRequest,
    ) -> Result<Vec<AuthRecord>, AuthError> {
        let perm = req.perm.as_ref().ok_or(AuthError::PermissionNotGiven)?;
        self.change(|_, _, roles| {
            let role = roles.get_mut(&req.name).ok_or(AuthError::RoleNotFound)?;
            let perms = &mut role.key_permission;
            match perms
                .iter_mut()
                .find(|p| p.key == perm.key && p.range_end == perm.range_end)
            {
                Some(existing) => existing.perm_type = perm.perm_type,
                None => {
                    let at = perms.partition_point(|p| p.key <= perm.key);
                    perms.insert(at, perm.clone());
                }
            }
            Ok(vec![AuthRecord::Role(req.name.clone())])
        })
    }

    pub fn role_revoke_permission(
        &mut self,
        req: &AuthRoleRevokePermissionRequest,
    ) -> Result<Vec<AuthRecord>, AuthError> {
        self.change(|_, _, roles| {
            let role = roles.get_mut(&req.role).ok_or(AuthError::RoleNotFound)?;
            let before = role.key_permission.len();
            role.key_permission
                .retain(|p| p.key != req.key || p.range_end != req.range_end);
            if role.key_permission.len() == before {
                return Err(AuthError::PermissionNotGranted);
            }
            Ok(vec![AuthRecord::Role(req.role.clone())])
        })
    }

    /// etcd's Authenticate at apply: the password was checked by the proposer; here only
    /// that auth is on and the user may log in with a password.
    pub fn authenticate(&self, name: &str) -> Result<(), AuthError> {
        if !self.current.enabled {
            return Err(AuthError::AuthNotEnabled);
        }
        let user = self.current.users.get(name).ok_or(AuthError::AuthFailed)?;
        if user.options.is_some_and(|o| o.no_password) {
            return Err(AuthError::AuthFailed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
