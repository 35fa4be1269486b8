//! Who a client is. A token is one of:
//! - a JWT signed HS256 with `JAM_JWT_SECRET`;
//! - a JWT signed RS256/ES256 with `JAM_JWT_PUBLIC_KEY` or a key of `JAM_JWKS_URL` (by `kid`);
//! - an opaque bearer token, mapped to a user by `JAM_INTROSPECTION_URL`.
//!
//! A token's algorithm must belong to the key that checks it: `alg: none` never parses, an
//! HS token is checked only against the HS secret (never against a public key), and an
//! RS/ES token only against public keys. `exp` is required, `nbf` honoured, `aud`/`iss`
//! required when configured.

pub mod introspect;
pub mod jwks;
pub mod origin;
pub mod sources;

use std::collections::HashSet;

use jam_shared::auth::{identity, AuthError, Identity};
use jam_shared::config::Config;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// A verified token: whose it is and until when (ms since the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub identity: Identity,
    pub expires_at: Option<i64>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    exp: u64,
}

pub struct Authenticator {
    hs: Option<DecodingKey>,
    public_key: Option<DecodingKey>,
    jwks: Option<jwks::KeySet>,
    introspect: Option<introspect::Introspector>,
    audience: Option<String>,
    issuer: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("JAM_JWT_PUBLIC_KEY: {0}")]
    PublicKey(String),
}

impl Authenticator {
    /// From the configuration; `hs_secret` is the HS256 secret in use (the development
    /// one in standalone), if any.
    pub fn new(cfg: &Config, hs_secret: Option<&str>) -> Result<Self, SetupError> {
        let a = &cfg.auth;
        let public_key = a.public_key.as_deref().map(load_public_key).transpose()?;
        Ok(Self {
            hs: hs_secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            public_key,
            jwks: a
                .jwks_url
                .clone()
                .map(|u| jwks::KeySet::new(u, a.jwks_refresh)),
            introspect: a
                .introspection_url
                .clone()
                .map(|u| introspect::Introspector::new(u, a.introspection_cache)),
            audience: a.audience.clone(),
            issuer: a.issuer.clone(),
        })
    }

    /// An authenticator that knows only the HS256 secret (tests, tools).
    pub fn hs256(secret: &str) -> Self {
        Self {
            hs: Some(DecodingKey::from_secret(secret.as_bytes())),
            public_key: None,
            jwks: None,
            introspect: None,
            audience: None,
            issuer: None,
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            // Not a JWT (or an algorithm we never accept, such as `none`).
            Err(e) => {
                return match &self.introspect {
                    Some(i) if !looks_like_jwt(token) => i.verify(token).await,
                    _ => Err(AuthError::Invalid(e.to_string())),
                }
            }
        };
        let key = self.key_for(header.alg, header.kid.as_deref()).await?;
        let mut v = Validation::new(header.alg);
        v.leeway = 5;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.required_spec_claims = required
            .into_iter()
            .map(String::from)
            .collect::<HashSet<_>>();
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let c = data.claims;
        Ok(Verified {
            identity: identity(c.sub, c.name, c.tenant)?,
            expires_at: i64::try_from(c.exp).ok().map(|s| s.saturating_mul(1000)),
        })
    }

    /// The key that may check a token signed with `alg`: the HS secret for HS256 only,
    /// public keys (configured, or from the JWKS by `kid`) for RS256/ES256 only.
    async fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        match alg {
            Algorithm::HS256 => self
                .hs
                .clone()
                .ok_or_else(|| AuthError::Invalid("HS256 tokens are not accepted here".into())),
            Algorithm::RS256 | Algorithm::ES256 => {
                if let (Some(set), Some(kid)) = (&self.jwks, kid) {
                    let (key, key_alg) = set.key(kid).await?;
                    if key_alg != alg {
                        return Err(AuthError::Invalid(format!(
                            "key {kid} is for {key_alg:?}, the token says {alg:?}"
                        )));
                    }
                    return Ok(key);
                }
                match &self.public_key {
                    Some(k) if k.family() == alg.family() => Ok(k.clone()),
                    Some(_) => Err(AuthError::Invalid(format!(
                        "the configured key does not verify {alg:?}"
                    ))),
                    None => Err(AuthError::Invalid(format!(
                        "{alg:?} tokens are not accepted here"
                    ))),
                }
            }
            other => Err(AuthError::Invalid(format!(
                "algorithm {other:?} is not accepted"
            ))),
        }
    }
}

/// Three base64url parts: a JWT, whatever its header says.
fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// A PEM (RSA or EC public key), inline or from a file.
fn load_public_key(v: &str) -> Result<DecodingKey, SetupError> {
    let pem = if v.contains("-----BEGIN") {
        v.to_string()
    } else {
        std::fs::read_to_string(v).map_err(|e| SetupError::PublicKey(format!("{v}: {e}")))?
    };
    DecodingKey::from_rsa_pem(pem.as_bytes())
        .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()))
        .map_err(|e| SetupError::PublicKey(e.to_string()))
}
