//! JWT verification and minting (HS256). Identity comes from the token only.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::DEFAULT_TENANT;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The display name.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub exp: u64,
}

/// Who a connection is, as established from its token.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user_id: String,
    pub user_name: String,
    pub tenant: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The key set or the introspection endpoint could not be reached: retry later.
    #[error("token check unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    pub fn retryable(&self) -> bool {
        matches!(self, AuthError::Unavailable(_))
    }
}

/// The identity a verified token names: `sub` (≤ 128 bytes, no `:`, newline or U+0000), the
/// display name (`name`, else `sub`, ≤ 64 chars, no U+0000) and the tenant (`[A-Za-z0-9_-]{1,64}`, else the
/// default tenant).
pub fn identity(
    sub: String,
    name: Option<String>,
    tenant: Option<String>,
) -> Result<Identity, AuthError> {
    if sub.is_empty() || sub.len() > 128 || sub.contains(['\n', ':', '\0']) {
        return Err(AuthError::Invalid("bad sub claim".into()));
    }
    let tenant = match tenant {
        Some(t) if !t.is_empty() => {
            if t.len() > 64
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(AuthError::Invalid("bad tenant claim".into()));
            }
            t
        }
        _ => DEFAULT_TENANT.to_string(),
    };
    if name.as_ref().is_some_and(|n| n.contains('\0')) {
        return Err(AuthError::Invalid("bad name claim".into()));
    }
    let name = name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| sub.clone());
    Ok(Identity {
        user_id: sub,
        user_name: name.chars().take(64).collect(),
        tenant,
    })
}

#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    enc: EncodingKey,
    validation: Validation,
}

impl JwtVerifier {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            enc: EncodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data =
            decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        identity(data.claims.sub, data.claims.name, data.claims.tenant)
    }

    /// Mint a token (the `gentoken` subcommand and tests).
    pub fn sign(&self, claims: &Claims) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &self.enc)
            .expect("HS256 encoding cannot fail")
    }
}

/// Claims for `sub` valid for `ttl_secs` from now.
pub fn claims_for(sub: &str, name: &str, tenant: Option<&str>, ttl_secs: i64) -> Claims {
    let exp = (crate::clock::now_ms() / 1000 + ttl_secs).max(0) as u64;
    Claims {
        sub: sub.to_string(),
        name: Some(name.to_string()),
        tenant: tenant.map(str::to_string),
        exp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let v = JwtVerifier::new("s3cret");
        let t = v.sign(&claims_for("alice", "Alice", Some("acme"), 60));
        let id = v.verify(&t).unwrap();
        assert_eq!(
            id,
            Identity {
                user_id: "alice".into(),
                user_name: "Alice".into(),
                tenant: "acme".into()
            }
        );
    }

    #[test]
    fn default_tenant_and_name() {
        let v = JwtVerifier::new("s");
        let mut c = claims_for("bob", "", None, 60);
        c.name = None;
        let id = v.verify(&v.sign(&c)).unwrap();
        assert_eq!(id.tenant, DEFAULT_TENANT);
        assert_eq!(id.user_name, "bob");
    }

    #[test]
    fn rejects_expired_and_foreign_keys() {
        let v = JwtVerifier::new("s");
        assert!(matches!(
            v.verify(&v.sign(&claims_for("a", "A", None, -3600))),
            Err(AuthError::Expired)
        ));
        let other = JwtVerifier::new("other");
        assert!(matches!(
            v.verify(&other.sign(&claims_for("a", "A", None, 60))),
            Err(AuthError::Invalid(_))
        ));
        assert!(v.verify("garbage").is_err());
    }

    #[test]
    fn rejects_nul_in_sub_and_name() {
        let v = JwtVerifier::new("s");
        let nul_sub = claims_for("a\0b", "A", None, 60);
        assert!(matches!(
            v.verify(&v.sign(&nul_sub)),
            Err(AuthError::Invalid(_))
        ));
        let nul_name = claims_for("a", "A\0", None, 60);
        assert!(matches!(
            v.verify(&v.sign(&nul_name)),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn rejects_bad_tenant() {
        let v = JwtVerifier::new("s");
        assert!(v
            .verify(&v.sign(&claims_for("a", "A", Some("a:b"), 60)))
            .is_err());
    }
}
