//! Session passwords: hashed by the server only, with the server's own argon2id
//! parameters. A stored hash with any other parameters is refused without running it, so
//! nobody can make a verification cost more than the server chose.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("hashing failed: {0}")]
    Hash(String),
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// Hash a password with the server's parameters (PHC string).
pub fn hash(password: &str) -> Result<String, PasswordError> {
    hasher()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `stored` is a hash this server could have produced: argon2id, version 19,
/// exactly the server's cost parameters.
pub fn is_own_hash(stored: &str) -> bool {
    let Ok(h) = PasswordHash::new(stored) else {
        return false;
    };
    let p = Params::default();
    let get = |k: &str| h.params.get_decimal(k);
    h.algorithm.as_str() == "argon2id"
        && h.version == Some(0x13)
        && get("m") == Some(p.m_cost())
        && get("t") == Some(p.t_cost())
        && get("p") == Some(p.p_cost())
}

/// Check `password` against a stored hash. A foreign hash never verifies (and never runs).
pub fn verify(stored: &str, password: &str) -> bool {
    if !is_own_hash(stored) {
        return false;
    }
    let Ok(h) = PasswordHash::new(stored) else {
        return false;
    };
    hasher().verify_password(password.as_bytes(), &h).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_hashes_verify_and_foreign_ones_are_refused() {
        let h = hash("s3cret").unwrap();
        assert!(is_own_hash(&h));
        assert!(verify(&h, "s3cret"));
        assert!(!verify(&h, "wrong"));
        // Same password, a huge work factor: refused before any work is done.
        let huge = h
            .replacen("m=19456", "m=4000000", 1)
            .replacen("t=2", "t=9999", 1);
        assert_ne!(huge, h);
        assert!(!is_own_hash(&huge));
        let t = std::time::Instant::now();
        assert!(!verify(&huge, "s3cret"));
        assert!(t.elapsed() < std::time::Duration::from_millis(50));
        assert!(!verify("$argon2i$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA", "x"));
        assert!(!verify("not a hash", "x"));
    }
}
