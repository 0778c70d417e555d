//! The Auth service and the identity and permission check of every call when auth is on.
//!
//! Owns: who a call is (etcd's `AuthInfoFromCtx`: the `token` metadata, else the verified
//! client certificate's CN under `--client-cert-auth`), the checks made on the client core
//! before a request runs (against the newest published [`AuthSnapshot`], no hop to the raft
//! core), password hashing and checking with bcrypt (on a blocking thread, never on the raft
//! core), the per-user slowdown after failed logins, and the Auth RPCs, which go through the
//! log. Must never: let a request run whose check failed, hold a clear password beyond the
//! call, or decide auth state (the engine's applier does, in log order, and checks writes
//! again there).
//!
//! Behaviour kept from etcd 3.5.1 on purpose: a watch is checked once, at create; revoking a
//! role later does not cancel it. Tightened on purpose: nested txns and the whole from-key
//! range of a watch are checked (etcd 3.5.1 checked neither), and a put asking for prev_kv in
//! a txn needs read access; and repeated failed logins of a user are slowed down (etcd has no
//! such delay).

mod token;

pub use token::{TokenOptions, Tokens, SIMPLE_TOKEN_TTL_DEFAULT};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use basalt_engine::apply::{Applied, ApplyError, AuthApplied};
use basalt_engine::auth::{AuthError, AuthInfo, AuthSnapshot};
use basalt_proto::basaltpb::{internal_request::Request, Authenticate};
use basalt_proto::etcdserverpb::{AuthenticateRequest, AuthenticateResponse, ResponseHeader};

use crate::kv::KvService;
use crate::service::ServerCall;
use crate::status::{Code, Status};

/// etcd's default `--bcrypt-cost` (Go's bcrypt.DefaultCost); costs outside bcrypt's range fall
/// back to it, as in etcd.
pub const BCRYPT_COST_DEFAULT: u32 = 10;
const BCRYPT_COST_MIN: u32 = 4;
const BCRYPT_COST_MAX: u32 = 31;
/// Delay added per recent failed login of a user before its next password check...
const LOGIN_FAILURE_DELAY_STEP: Duration = Duration::from_millis(100);
/// ...up to this much.
const LOGIN_FAILURE_DELAY_MAX: Duration = Duration::from_secs(1);
/// A failure older than this no longer slows the user down.
const LOGIN_FAILURE_MEMORY: Duration = Duration::from_secs(60);
/// Users with remembered failures; past it the oldest memories are dropped wholesale.
const LOGIN_FAILURE_USERS_MAX: usize = 10_000;
/// How long a simple token from a login this member has not applied yet is waited for (etcd
/// waits for its index too, up to the request's deadline)...
const SIMPLE_TOKEN_APPLY_WAIT: Duration = Duration::from_secs(2);
/// ...looking again this often.
const SIMPLE_TOKEN_APPLY_POLL: Duration = Duration::from_millis(5);
/// Logins retried when auth changed between the password check and apply (etcd retries
/// without bound).
const AUTHENTICATE_ATTEMPTS_MAX: usize = 3;

/// The auth flags of a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthOptions {
    /// `--auth-token` (with `--auth-token-ttl` for simple tokens).
    pub tokens: TokenOptions,
    /// `--bcrypt-cost`.
    pub bcrypt_cost: u32,
    /// `--client-cert-auth`: a call without a token is the user its certificate's CN names.
    pub client_cert_auth: bool,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            tokens: TokenOptions::default(),
            bcrypt_cost: BCRYPT_COST_DEFAULT,
            client_cert_auth: false,
        }
    }
}

/// A member's auth state as every core sees it: the newest snapshot the applier published,
/// the tokens, and the login slowdown.
pub struct AuthShared {
    snapshot: ArcSwap<AuthSnapshot>,
    tokens: Tokens,
    bcrypt_cost: u32,
    client_cert_auth: bool,
    /// user → (recent failures, time of the last).
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// The newest entry the raft core applied, as far as tokens need to know.
    applied_index: AtomicU64,
}

impl AuthShared {
    pub fn new(options: &AuthOptions) -> Result<AuthShared, String> {
        let bcrypt_cost = if (BCRYPT_COST_MIN..=BCRYPT_COST_MAX).contains(&options.bcrypt_cost) {
            options.bcrypt_cost
        } else {
            BCRYPT_COST_DEFAULT
        };
        Ok(AuthShared {
            snapshot: ArcSwap::from_pointee(AuthSnapshot::default()),
            tokens: Tokens::new(&options.tokens)?,
            bcrypt_cost,
            client_cert_auth: options.client_cert_auth,
            failures: Mutex::new(HashMap::new()),
            applied_index: AtomicU64::new(0),
        })
    }

    pub fn current(&self) -> Arc<AuthSnapshot> {
        self.snapshot.load_full()
    }

    /// Makes the applier's snapshot every core's (cheap when it did not change).
    pub fn publish(&self, applier_snapshot: &Arc<AuthSnapshot>) {
        if !Arc::ptr_eq(&self.snapshot.load(), applier_snapshot) {
            self.snapshot.store(applier_snapshot.clone());
        }
    }

    /// Called by the raft core after each applied entry, before its caller is answered: the
    /// applier's snapshot becomes every core's, and logins, deleted users and auth disable
    /// change the tokens on every member.
    pub fn observe(
        &self,
        applier_snapshot: &Arc<AuthSnapshot>,
        result: &Result<Applied, ApplyError>,
        applied_index: u64,
    ) {
        self.publish(applier_snapshot);
        self.applied_index.store(applied_index, Ordering::Release);
        let Ok(Applied::Auth(applied)) = result else {
            return;
        };
        match applied {
            AuthApplied::Authenticate {
                name, simple_token, ..
            } => self
                .tokens
                .register_simple(simple_token.clone(), name.clone(), Instant::now()),
            AuthApplied::UserDelete(name, _) | AuthApplied::UserChangePassword(name, _) => {
                self.tokens.forget_user(name)
            }
            AuthApplied::Disable(_) => self.tokens.forget_all(),
            _ => {}
        }
    }

    /// etcd's `AuthInfoFromCtx`: a token that does not check is refused even with auth off;
    /// without a token, the certificate's CN under `--client-cert-auth`; else nobody. A simple
    /// token from a login this member has not applied yet (made on another member) is waited
    /// for, as etcd's `isValidSimpleToken` waits for its index.
    pub async fn identify(
        &self,
        token: Option<&str>,
        client_cert_common_name: Option<&str>,
    ) -> Result<Option<AuthInfo>, Status> {
        let Some(token) = token else {
            if !self.client_cert_auth {
                return Ok(None);
            }
            let auth = self.snapshot.load();
            return Ok(client_cert_common_name.map(|cn| auth.info(cn)));
        };
        let deadline = Instant::now() + SIMPLE_TOKEN_APPLY_WAIT;
        loop {
            let revision = self.snapshot.load().revision();
            if let Some(who) = self.tokens.info(token, revision, Instant::now()) {
                return Ok(Some(who));
            }
            let pending = self
                .tokens
                .simple_index(token)
                .is_some_and(|index| index > self.applied_index.load(Ordering::Acquire));
            if !pending || Instant::now() >= deadline {
                return Err(AuthError::InvalidAuthToken.into());
            }
            glommio::timer::sleep(SIMPLE_TOKEN_APPLY_POLL).await;
        }
    }

    async fn hash_password(&self, password: String) -> Result<String, Status> {
        let cost = self.bcrypt_cost;
        glommio::executor()
            .spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Status::internal(format!("basalt: bcrypt: {e}")))
    }

    /// The slowdown a user's recent failed logins earned.
    fn login_delay(&self, name: &str, now: Instant) -> Duration {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(name) {
            Some(&(count, last)) if now.duration_since(last) < LOGIN_FAILURE_MEMORY => {
                (LOGIN_FAILURE_DELAY_STEP * count).min(LOGIN_FAILURE_DELAY_MAX)
            }
            _ => Duration::ZERO,
        }
    }

    fn record_login(&self, name: &str, succeeded: bool, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if succeeded {
            failures.remove(name);
            return;
        }
        if failures.len() >= LOGIN_FAILURE_USERS_MAX {
            failures.retain(|_, (_, last)| now.duration_since(*last) < LOGIN_FAILURE_MEMORY);
            if failures.len() >= LOGIN_FAILURE_USERS_MAX {
                failures.clear();
            }
        }
        let entry = failures.entry(name.to_owned()).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
    }

    /// etcd's `CheckPassword`, on a blocking thread: the auth revision the password matched at.
    async fn check_password(&self, name: &str, password: String) -> Result<u64, Status> {
        let auth = self.current();
        if !auth.is_enabled() {
            return Err(AuthError::AuthNotEnabled.into());
        }
        let now = Instant::now();
        let delay = self.login_delay(name, now);
        if !delay.is_zero() {
            glommio::timer::sleep(delay).await;
        }
        let user = auth.user(name).ok_or(AuthError::AuthFailed)?;
        if user.options.is_some_and(|o| o.no_password) {
            return Err(AuthError::NoPasswordUser.into());
        }
        let hash = String::from_utf8_lossy(&user.password).into_owned();
        let matched = glommio::executor()
            .spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await;
        self.record_login(name, matched, Instant::now());
        if matched {
            Ok(auth.revision())
        } else {
            Err(AuthError::AuthFailed.into())
        }
    }
}

/// The path prefix of the Auth service's methods.
pub(crate) const SERVICE_PREFIX: &str = "/etcdserverpb.Auth/";

/// Calls etcd serves without looking at their token.
const UNIDENTIFIED_PATHS: &[&str] = &[
    "/etcdserverpb.Auth/Authenticate",
    "/etcdserverpb.Maintenance/Status",
    "/grpc.health.v1.Health/Check",
];

/// Maintenance calls that need the root role when auth is on (etcd's `authMaintenanceServer`,
/// which hands the auth package's error to gRPC unconverted: code Unknown, text `auth: ...`).
const MAINTENANCE_ADMIN_PATHS: &[&str] = &[
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/Snapshot",
];

/// Membership changes need the root role too (with etcd's `etcdserver: ...` errors); the Auth
/// service's own calls are checked at apply. Compact is not an admin call in etcd 3.5.1.
const ADMIN_PATHS: &[&str] = &[
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Cluster/MemberPromote",
];

/// The checks a call passes on its client core, against the snapshot of its start.
pub(crate) struct Gate {
    snapshot: Option<Arc<AuthSnapshot>>,
    who: Option<AuthInfo>,
}

impl Gate {
    /// The gate of a call of `path` to `kv`; a store without auth lets everything through.
    /// Refuses a call whose token does not check, and an admin call of a user without the root
    /// role.
    pub(crate) async fn open<K: KvService>(
        kv: &K,
        path: &str,
        call: &ServerCall,
    ) -> Result<Gate, Status> {
        let open = Gate {
            snapshot: None,
            who: None,
        };
        let Some(shared) = kv.auth() else {
            return Ok(open);
        };
        // The common case costs one snapshot load: auth off and no token to check.
        if UNIDENTIFIED_PATHS.contains(&path)
            || (call.token.is_none() && !shared.snapshot.load().is_enabled())
        {
            return Ok(open);
        }
        let maintenance = MAINTENANCE_ADMIN_PATHS.contains(&path);
        let unconverted = |status: Status| match status.message.strip_prefix("etcdserver: ") {
            Some(text) if maintenance => Status::new(Code::Unknown, format!("auth: {text}")),
            _ => status,
        };
        let who = shared
            .identify(
                call.token.as_deref(),
                call.client_cert_common_name.as_deref(),
            )
            .await
            .map_err(unconverted)?;
        let gate = Gate {
            snapshot: Some(shared.current()),
            who,
        };
        if maintenance || ADMIN_PATHS.contains(&path) {
            gate.admin().map_err(unconverted)?;
        }
        Ok(gate)
    }

    pub(crate) fn who(&self) -> Option<&AuthInfo> {
        self.who.as_ref()
    }

    fn check(
        &self,
        f: impl FnOnce(&AuthSnapshot, Option<&AuthInfo>) -> Result<(), AuthError>,
    ) -> Result<(), Status> {
        match &self.snapshot {
            Some(snapshot) => f(snapshot, self.who.as_ref()).map_err(Status::from),
            None => Ok(()),
        }
    }

    pub(crate) fn range(
        &self,
        req: &basalt_proto::etcdserverpb::RangeRequest,
    ) -> Result<(), Status> {
        self.check(|auth, who| auth.check_range(who, req))
    }

    pub(crate) fn put(&self, req: &basalt_proto::etcdserverpb::PutRequest) -> Result<(), Status> {
        self.check(|auth, who| auth.check_put(who, req))
    }

    pub(crate) fn delete_range(
        &self,
        req: &basalt_proto::etcdserverpb::DeleteRangeRequest,
    ) -> Result<(), Status> {
        self.check(|auth, who| auth.check_delete_range(who, req))
    }

    pub(crate) fn txn(&self, req: &basalt_proto::etcdserverpb::TxnRequest) -> Result<(), Status> {
        self.check(|auth, who| auth.check_txn(who, req))
    }

    /// etcd's `IsAdminPermitted`.
    fn admin(&self) -> Result<(), Status> {
        self.check(|auth, who| auth.check_admin(who))
    }

    /// A watch may open on a range the user may read.
    pub(crate) fn watch(&self, key: &[u8], range_end: &[u8]) -> bool {
        self.check(|auth, who| auth.check(who, key, range_end, basalt_engine::auth::Access::Read))
            .is_ok()
    }

    /// etcd's `doSerialize` tail: a read served while auth changed is refused.
    pub(crate) fn still_current<K: KvService>(&self, kv: &K) -> Result<(), Status> {
        let (Some(who), Some(shared)) = (&self.who, kv.auth()) else {
            return Ok(());
        };
        if who.revision != 0 && who.revision != shared.current().revision() {
            return Err(AuthError::AuthOldRevision.into());
        }
        Ok(())
    }
}

/// The Auth service: one call of `/etcdserverpb.Auth/<method>`.
pub(crate) async fn serve<K: KvService>(
    kv: &K,
    shared: &AuthShared,
    fill: &dyn Fn(&mut Option<ResponseHeader>),
    method: &str,
    call: ServerCall,
) -> Option<Code> {
    use basalt_proto::etcdserverpb as pb;
    macro_rules! through_log {
        ($req:ty, $variant:ident, |$r:ident| $prepare:expr, $applied:pat => $resp:expr) => {
            crate::service::unary(call, |req: $req| async move {
                let $r = req;
                let request = $prepare;
                match kv.auth_request(Request::$variant(request)).await? {
                    $applied => {
                        let mut resp = $resp;
                        fill(&mut resp.header);
                        Ok(resp)
                    }
                    other => Err(Status::internal(format!(
                        "basalt: auth apply answered {other:?}"
                    ))),
                }
            })
            .await
        };
    }
    match method {
        "AuthEnable" => {
            through_log!(pb::AuthEnableRequest, AuthEnable, |r| r, AuthApplied::Enable(resp) => resp)
        }
        "AuthDisable" => {
            through_log!(pb::AuthDisableRequest, AuthDisable, |r| r, AuthApplied::Disable(resp) => resp)
        }
        "AuthStatus" => {
            through_log!(pb::AuthStatusRequest, AuthStatus, |r| r, AuthApplied::Status(resp) => resp)
        }
        "UserAdd" => through_log!(pb::AuthUserAddRequest, AuthUserAdd, |r| {
            let mut r = r;
            if !r.options.is_some_and(|o| o.no_password) {
                r.hashed_password = shared.hash_password(std::mem::take(&mut r.password)).await?;
            }
            r.password.clear();
            r
        }, AuthApplied::UserAdd(resp) => resp),
        "UserGet" => {
            through_log!(pb::AuthUserGetRequest, AuthUserGet, |r| r, AuthApplied::UserGet(resp) => resp)
        }
        "UserList" => {
            through_log!(pb::AuthUserListRequest, AuthUserList, |r| r, AuthApplied::UserList(resp) => resp)
        }
        "UserDelete" => {
            through_log!(pb::AuthUserDeleteRequest, AuthUserDelete, |r| r, AuthApplied::UserDelete(_, resp) => resp)
        }
        "UserChangePassword" => {
            through_log!(pb::AuthUserChangePasswordRequest, AuthUserChangePassword, |r| {
            let mut r = r;
            r.hashed_password = shared.hash_password(std::mem::take(&mut r.password)).await?;
            r
        }, AuthApplied::UserChangePassword(_, resp) => resp)
        }
        "UserGrantRole" => {
            through_log!(pb::AuthUserGrantRoleRequest, AuthUserGrantRole, |r| r, AuthApplied::UserGrantRole(resp) => resp)
        }
        "UserRevokeRole" => {
            through_log!(pb::AuthUserRevokeRoleRequest, AuthUserRevokeRole, |r| r, AuthApplied::UserRevokeRole(resp) => resp)
        }
        "RoleAdd" => {
            through_log!(pb::AuthRoleAddRequest, AuthRoleAdd, |r| r, AuthApplied::RoleAdd(resp) => resp)
        }
        "RoleGet" => {
            through_log!(pb::AuthRoleGetRequest, AuthRoleGet, |r| r, AuthApplied::RoleGet(resp) => resp)
        }
        "RoleList" => {
            through_log!(pb::AuthRoleListRequest, AuthRoleList, |r| r, AuthApplied::RoleList(resp) => resp)
        }
        "RoleDelete" => {
            through_log!(pb::AuthRoleDeleteRequest, AuthRoleDelete, |r| r, AuthApplied::RoleDelete(resp) => resp)
        }
        "RoleGrantPermission" => {
            through_log!(pb::AuthRoleGrantPermissionRequest, AuthRoleGrantPermission, |r| r, AuthApplied::RoleGrantPermission(resp) => resp)
        }
        "RoleRevokePermission" => {
            through_log!(pb::AuthRoleRevokePermissionRequest, AuthRoleRevokePermission, |r| r, AuthApplied::RoleRevokePermission(resp) => resp)
        }
        "Authenticate" => {
            crate::service::unary(call, |req: AuthenticateRequest| async move {
                let mut resp = authenticate(kv, shared, req).await?;
                fill(&mut resp.header);
                Ok(resp)
            })
            .await
        }
        _ => {
            let status = crate::service::unserved(&format!("/etcdserverpb.Auth/{method}"));
            call.sink.finish(&status);
            Some(status.code)
        }
    }
}

/// etcd's Authenticate: the password is checked here, then a log entry without it makes the
/// login known to every member; if auth changed in between, the login is tried again.
async fn authenticate<K: KvService>(
    kv: &K,
    shared: &AuthShared,
    req: AuthenticateRequest,
) -> Result<AuthenticateResponse, Status> {
    // etcd's linearizableReadNotify: a member behind the leader catches up on auth changes
    // (a follower that has not applied AuthEnable yet) before it checks the password.
    kv.range(basalt_proto::etcdserverpb::RangeRequest {
        key: vec![0].into(),
        count_only: true,
        ..Default::default()
    })
    .await?;
    for _ in 0..AUTHENTICATE_ATTEMPTS_MAX {
        let checked_revision = shared
            .check_password(&req.name, req.password.clone())
            .await?;
        let entry = Authenticate {
            name: req.name.clone(),
            simple_token: Tokens::new_simple_prefix().map_err(Status::internal)?,
        };
        let applied = kv.auth_request(Request::Authenticate(entry)).await?;
        let AuthApplied::Authenticate {
            name,
            simple_token,
            revision,
            header,
        } = applied
        else {
            return Err(Status::internal(format!(
                "basalt: login apply answered {applied:?}"
            )));
        };
        if revision == checked_revision {
            let token = shared
                .tokens
                .issue(&simple_token, &name, revision)
                .map_err(Status::internal)?;
            return Ok(AuthenticateResponse {
                header: Some(header),
                token,
            });
        }
    }
    Err(AuthError::AuthOldRevision.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_logins_slow_the_next_attempt_of_that_user_only() {
        let shared = AuthShared::new(&AuthOptions::default()).unwrap();
        let t0 = Instant::now();
        assert_eq!(shared.login_delay("alice", t0), Duration::ZERO);
        for _ in 0..3 {
            shared.record_login("alice", false, t0);
        }
        assert_eq!(
            shared.login_delay("alice", t0),
            LOGIN_FAILURE_DELAY_STEP * 3
        );
        assert_eq!(shared.login_delay("bob", t0), Duration::ZERO);
        for _ in 0..100 {
            shared.record_login("alice", false, t0);
        }
        assert_eq!(shared.login_delay("alice", t0), LOGIN_FAILURE_DELAY_MAX);
        let later = t0 + LOGIN_FAILURE_MEMORY;
        assert_eq!(
            shared.login_delay("alice", later),
            Duration::ZERO,
            "forgotten"
        );
        shared.record_login("alice", true, t0);
        assert_eq!(
            shared.login_delay("alice", t0),
            Duration::ZERO,
            "a success clears"
        );
    }

    #[test]
    fn out_of_range_bcrypt_costs_fall_back_to_etcds_default() {
        for (asked, used) in [
            (0, BCRYPT_COST_DEFAULT),
            (4, 4),
            (12, 12),
            (32, BCRYPT_COST_DEFAULT),
        ] {
            let options = AuthOptions {
                bcrypt_cost: asked,
                ..AuthOptions::default()
            };
            assert_eq!(
                AuthShared::new(&options).unwrap().bcrypt_cost,
                used,
                "{asked}"
            );
        }
    }

    #[test]
    fn a_token_that_does_not_check_is_refused_even_with_auth_off() {
        use futures_lite::future::block_on;
        let shared = AuthShared::new(&AuthOptions::default()).unwrap();
        let identify = |token, cn| block_on(shared.identify(token, cn));
        assert_eq!(identify(None, Some("cn")), Ok(None), "no cert auth asked");
        // A token naming an applied index is refused at once, never waited for.
        shared.observe(&shared.current(), &Err(ApplyError::NoSpace), 7);
        let refused = identify(Some("forged.7"), None).unwrap_err();
        assert_eq!(refused.code, Code::Unauthenticated);
        assert_eq!(refused.message, "etcdserver: invalid auth token");
        let cert_auth = AuthShared::new(&AuthOptions {
            client_cert_auth: true,
            ..AuthOptions::default()
        })
        .unwrap();
        let who = block_on(cert_auth.identify(None, Some("alice")))
            .unwrap()
            .unwrap();
        assert_eq!(who.username, "alice");
    }
}
