//! Auth tokens as etcd's two providers make them (`--auth-token`).
//!
//! - `simple`: a random prefix chosen by the proposer, then `.` and the index of the
//!   Authenticate entry. Every member registers it when it applies that entry, so any member
//!   accepts it; each use pushes its expiry `--auth-token-ttl` further (etcd's keeper). They
//!   live in memory only: a restart logs every client out, as in etcd.
//! - `jwt`: a signed JWT with etcd's claims (`username`, `revision`, `exp`). Nothing is stored;
//!   any member with the public key checks it. The claimed revision is the auth revision at
//!   login, so any later auth change makes the token stale, as in etcd.
//!
//! Must never: accept an expired or unknown simple token, or a JWT whose signature, algorithm
//! or expiry does not check.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use basalt_engine::auth::AuthInfo;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// etcd's default `--auth-token-ttl`.
pub const SIMPLE_TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(300);
/// etcd's default `ttl=` of a JWT.
const JWT_TTL_DEFAULT: Duration = Duration::from_secs(300);
/// Letters in the random part of a simple token (etcd's `defaultSimpleTokenLength`).
const SIMPLE_TOKEN_LETTERS: usize = 16;
/// Simple tokens held before expired ones are swept on the next login.
const SIMPLE_TOKENS_SWEEP_AT: usize = 4096;

/// How tokens are made, from `--auth-token` and `--auth-token-ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenOptions {
    Simple {
        ttl: Duration,
    },
    Jwt {
        sign_method: Algorithm,
        /// PEM of the public key (or the secret, for HS*).
        public_key_pem: Vec<u8>,
        /// PEM of the private key; None: this member only verifies.
        private_key_pem: Option<Vec<u8>>,
        ttl: Duration,
    },
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions::Simple {
            ttl: SIMPLE_TOKEN_TTL_DEFAULT,
        }
    }
}

/// Reads Go's duration text as etcd's `ttl=` takes it (`5m`, `300s`, `1h30m`, `500ms`).
fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let amount: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let per = match &rest[..unit] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return None,
        };
        total += per * u32::try_from(amount).ok()?;
        rest = &rest[unit..];
    }
    Some(total)
}

impl TokenOptions {
    /// `--auth-token` as etcd reads it: `simple`, or
    /// `jwt,pub-key=<file>,priv-key=<file>,sign-method=<alg>[,ttl=<duration>]`.
    pub fn parse(spec: &str, simple_ttl: Duration) -> Result<TokenOptions, String> {
        let mut parts = spec.split(',');
        match parts.next() {
            Some("simple") => Ok(TokenOptions::Simple { ttl: simple_ttl }),
            Some("jwt") => {
                let mut options: HashMap<&str, &str> = HashMap::new();
                for part in parts {
                    let (name, value) = part
                        .split_once('=')
                        .ok_or_else(|| format!("invalid auth token option {part:?}"))?;
                    options.insert(name, value);
                }
                let sign_method: Algorithm = options
                    .get("sign-method")
                    .ok_or("jwt: sign-method is missing")?
                    .parse()
                    .map_err(|e| format!("jwt: sign-method: {e}"))?;
                let read = |name: &str| -> Result<Option<Vec<u8>>, String> {
                    options
                        .get(name)
                        .map(|path| {
                            std::fs::read(path).map_err(|e| format!("jwt: {name} {path}: {e}"))
                        })
                        .transpose()
                };
                let public_key_pem = read("pub-key")?.ok_or("jwt: pub-key is missing")?;
                let ttl = match options.get("ttl") {
                    Some(ttl) => parse_go_duration(ttl).ok_or(format!("jwt: bad ttl {ttl:?}"))?,
                    None => JWT_TTL_DEFAULT,
                };
                let options = TokenOptions::Jwt {
                    sign_method,
                    public_key_pem,
                    private_key_pem: read("priv-key")?,
                    ttl,
                };
                Tokens::new(&options)?;
                Ok(options)
            }
            _ => Err(format!("unknown token type {spec:?}")),
        }
    }
}

/// etcd's JWT claims.
#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

struct Jwt {
    sign_method: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    ttl: Duration,
}

/// A member's token provider.
pub struct Tokens {
    simple_ttl: Duration,
    /// token → (user name, expiry).
    simple: Mutex<HashMap<String, (String, Instant)>>,
    jwt: Option<Jwt>,
}

fn key_error(e: jsonwebtoken::errors::Error) -> String {
    format!("jwt key: {e}")
}

impl Tokens {
    pub fn new(options: &TokenOptions) -> Result<Tokens, String> {
        let (simple_ttl, jwt) = match options {
            TokenOptions::Simple { ttl } => (*ttl, None),
            TokenOptions::Jwt {
                sign_method,
                public_key_pem,
                private_key_pem,
                ttl,
            } => {
                use Algorithm::*;
                let (decoding, encoding) = match sign_method {
                    HS256 | HS384 | HS512 => (
                        DecodingKey::from_secret(public_key_pem),
                        Some(EncodingKey::from_secret(public_key_pem)),
                    ),
                    RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => (
                        DecodingKey::from_rsa_pem(public_key_pem).map_err(key_error)?,
                        private_key_pem
                            .as_deref()
                            .map(EncodingKey::from_rsa_pem)
                            .transpose()
                            .map_err(key_error)?,
                    ),
                    ES256 | ES384 => (
                        DecodingKey::from_ec_pem(public_key_pem).map_err(key_error)?,
                        private_key_pem
                            .as_deref()
                            .map(EncodingKey::from_ec_pem)
                            .transpose()
                            .map_err(key_error)?,
                    ),
                    EdDSA => (
                        DecodingKey::from_ed_pem(public_key_pem).map_err(key_error)?,
                        private_key_pem
                            .as_deref()
                            .map(EncodingKey::from_ed_pem)
                            .transpose()
                            .map_err(key_error)?,
                    ),
                };
                let jwt = Jwt {
                    sign_method: *sign_method,
                    encoding,
                    decoding,
                    ttl: *ttl,
                };
                (SIMPLE_TOKEN_TTL_DEFAULT, Some(jwt))
            }
        };
        Ok(Tokens {
            simple_ttl,
            simple: Mutex::new(HashMap::new()),
            jwt,
        })
    }

    fn simple(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        // A panic while holding this lock left at worst a stale token; keep serving.
        self.simple.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The random part of a simple token (etcd's `genTokenPrefix`): letters, never a `.`.
    pub fn new_simple_prefix() -> Result<String, String> {
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut random = [0u8; SIMPLE_TOKEN_LETTERS];
        getrandom::getrandom(&mut random).map_err(|e| format!("no randomness: {e}"))?;
        Ok(random
            .iter()
            .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
            .collect())
    }

    /// Registers a simple token applied from the log (every member does, provider or not, so
    /// that a member switched to simple tokens agrees with its peers).
    pub fn register_simple(&self, token: String, username: String, now: Instant) {
        let mut simple = self.simple();
        if simple.len() >= SIMPLE_TOKENS_SWEEP_AT {
            simple.retain(|_, (_, expiry)| *expiry > now);
        }
        simple.insert(token, (username, now + self.simple_ttl));
    }

    /// The token a client gets for a login applied at `revision`.
    pub fn issue(
        &self,
        simple_token: &str,
        username: &str,
        revision: u64,
    ) -> Result<String, String> {
        let Some(jwt) = &self.jwt else {
            return Ok(simple_token.to_owned());
        };
        let encoding = jwt
            .encoding
            .as_ref()
            .ok_or("jwt: this member has no private key to sign with")?;
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            username: username.to_owned(),
            revision,
            exp: now_s + jwt.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(jwt.sign_method), &claims, encoding)
            .map_err(|e| format!("jwt: {e}"))
    }

    /// Who a token names, with the auth revision to check its request at (`current` for a
    /// simple token; the login's for a JWT). None: unknown, expired or forged.
    pub fn info(&self, token: &str, current: u64, now: Instant) -> Option<AuthInfo> {
        if let Some(jwt) = &self.jwt {
            let mut validation = Validation::new(jwt.sign_method);
            validation.leeway = 0;
            validation.set_required_spec_claims(&["exp"]);
            let claims = jsonwebtoken::decode::<Claims>(token, &jwt.decoding, &validation).ok()?;
            return Some(AuthInfo {
                username: claims.claims.username,
                revision: claims.claims.revision,
            });
        }
        let mut simple = self.simple();
        let (username, expiry) = simple.get_mut(token)?;
        if *expiry <= now {
            simple.remove(token);
            return None;
        }
        *expiry = now + self.simple_ttl;
        Some(AuthInfo {
            username: username.clone(),
            revision: current,
        })
    }

    /// The log index a well-formed simple token names (None with JWT, or for other text).
    pub fn simple_index(&self, token: &str) -> Option<u64> {
        if self.jwt.is_some() {
            return None;
        }
        let (random, index) = token.rsplit_once('.')?;
        if random.is_empty() || random.contains('.') {
            return None;
        }
        index.parse().ok()
    }

    /// A deleted user, or one whose password changed, is logged out everywhere.
    pub fn forget_user(&self, username: &str) {
        self.simple().retain(|_, (user, _)| user != username);
    }

    /// Auth turned off: every simple token is gone.
    pub fn forget_all(&self) {
        self.simple().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_tokens_expire_unless_used_and_die_with_their_user() {
        let tokens = Tokens::new(&TokenOptions::Simple {
            ttl: Duration::from_secs(10),
        })
        .unwrap();
        let t0 = Instant::now();
        tokens.register_simple("abc.7".into(), "alice".into(), t0);
        tokens.register_simple("def.8".into(), "bob".into(), t0);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(tokens.info("abc.7", 3, at(9)).unwrap().username, "alice");
        assert_eq!(
            tokens.info("abc.7", 3, at(18)).unwrap().revision,
            3,
            "use refreshed it"
        );
        assert!(
            tokens.info("def.8", 3, at(10)).is_none(),
            "unused past its ttl"
        );
        assert!(
            tokens.info("def.8", 3, at(1)).is_none(),
            "an expired token stays gone"
        );
        assert!(tokens.info("forged.1", 3, at(1)).is_none());
        tokens.forget_user("alice");
        assert!(tokens.info("abc.7", 3, at(19)).is_none());
    }

    #[test]
    fn jwt_tokens_carry_user_and_revision_and_refuse_tampering() {
        let secret = b"not so secret".to_vec();
        let options = TokenOptions::Jwt {
            sign_method: Algorithm::HS256,
            public_key_pem: secret,
            private_key_pem: None,
            ttl: Duration::from_secs(60),
        };
        let tokens = Tokens::new(&options).unwrap();
        let token = tokens.issue("ignored.1", "alice", 5).unwrap();
        let info = tokens.info(&token, 9, Instant::now()).unwrap();
        assert_eq!((info.username.as_str(), info.revision), ("alice", 5));
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(tokens.info(&forged, 9, Instant::now()).is_none());
        assert!(tokens.info("garbage", 9, Instant::now()).is_none());
    }

    #[test]
    fn auth_token_flags_parse_as_etcd_reads_them() {
        let ttl = Duration::from_secs(7);
        assert_eq!(
            TokenOptions::parse("simple", ttl),
            Ok(TokenOptions::Simple { ttl })
        );
        assert!(TokenOptions::parse("bogus", ttl).is_err());
        assert!(TokenOptions::parse("jwt,sign-method=RS256", ttl).is_err());
        assert_eq!(parse_go_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration(""), None);
    }
}
