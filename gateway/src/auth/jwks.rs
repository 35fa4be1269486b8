//! A JWKS, fetched and cached: keys by `kid`, used for `JAM_JWKS_REFRESH_SECS`, fetched
//! again at once for an unknown `kid` (a rotation), but at most every 2 s so a flood
//! of made-up kids cannot turn the gateway into a load generator for the key server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jam_shared::auth::AuthError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Unknown kids trigger at most one fetch per this interval.
const MIN_REFETCH: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Cached {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

pub struct KeySet {
    url: String,
    refresh: Duration,
    client: reqwest::Client,
    cache: tokio::sync::Mutex<Cached>,
}

impl KeySet {
    pub fn new(url: String, refresh: Duration) -> Self {
        Self {
            url,
            refresh,
            client: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .expect("a plain HTTP client builds"),
            cache: tokio::sync::Mutex::new(Cached::default()),
        }
    }

    /// The key `kid` and the one algorithm it verifies.
    pub async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), AuthError> {
        // One fetch at a time; callers waiting meanwhile see its result.
        let mut c = self.cache.lock().await;
        let stale = c.fetched.is_none_or(|t| t.elapsed() >= self.refresh);
        let unknown = !c.keys.contains_key(kid);
        let may_fetch = c.attempted.is_none_or(|t| t.elapsed() >= MIN_REFETCH);
        if (stale || unknown) && may_fetch {
            c.attempted = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    metrics::counter!("jam_jwks_fetches_total", "outcome" => "ok").increment(1);
                    tracing::info!(keys = keys.len(), url = %self.url, "JWKS fetched");
                    c.keys = keys;
                    c.fetched = Some(Instant::now());
                }
                Err(e) => {
                    metrics::counter!("jam_jwks_fetches_total", "outcome" => "error").increment(1);
                    tracing::warn!(error = %e, url = %self.url, "JWKS fetch failed; keeping the keys we had");
                    if c.keys.is_empty() {
                        return Err(e);
                    }
                }
            }
        }
        c.keys
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::Invalid(format!("unknown key id {kid:?}")))
    }

    async fn fetch(&self) -> Result<HashMap<String, (DecodingKey, Algorithm)>, AuthError> {
        let unavailable = |e: reqwest::Error| AuthError::Unavailable(format!("JWKS: {e}"));
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        Ok(keys_of(&set))
    }
}

/// The usable keys of a set: RSA keys verify RS256, P-256 keys ES256. Symmetric keys and
/// anything else are skipped: a JWKS never makes an HS token acceptable.
pub fn keys_of(set: &JwkSet) -> HashMap<String, (DecodingKey, Algorithm)> {
    let mut out = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                if p.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            out.insert(kid, (key, alg));
        }
    }
    out
}
