//! Proxy-issued tokens: ES256 JWTs with `iss` = the proxy URL, `aud` = "jitgate", a `kid`
//! that names the signing key in `/.well-known/jwks.json`, and a `jti` that logout can
//! revoke. Verification accepts ES256 and this key only.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::access::Identity;
use crate::time::Timestamp;

pub const AUDIENCE: &str = "jitgate";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub groups: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// Where the identity came from: "local" or an `[[oidc]]` provider's name.
    #[serde(default = "local")]
    pub idp: String,
    /// For a token minted from a login token (a cluster's kubectl credential): the login
    /// token's `jti`, so that logging out ends it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

fn local() -> String {
    "local".into()
}

/// A short-lived signed value for another purpose than API access (a pre-login cookie):
/// its audience keeps it from ever passing as a token, and a token from passing as it.
#[derive(Serialize, Deserialize)]
struct Sealed<T> {
    iss: String,
    aud: String,
    exp: i64,
    #[serde(flatten)]
    value: T,
}

impl Claims {
    pub fn identity(&self) -> Identity {
        Identity {
            user: self.sub.clone(),
            groups: self.groups.clone(),
        }
    }

    pub fn expires_at(&self) -> Timestamp {
        Timestamp::from_millis(self.exp.saturating_mul(1000))
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token is not signed with ES256")]
    WrongAlgorithm,
    #[error("the token names an unknown signing key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired; run `jitgate login` again")]
    Expired,
    #[error("the token was issued for another audience")]
    WrongAudience,
    #[error("the token was issued by another proxy")]
    WrongIssuer,
    #[error("the token was revoked (logged out); run `jitgate login` again")]
    Revoked,
}

pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    issuer: String,
    lifetime: Duration,
    jwks: serde_json::Value,
}

impl TokenIssuer {
    /// `key_pem` is a PKCS#8 P-256 private key; `public_raw` its SEC1 uncompressed point.
    pub fn new(key_pem: &str, public_raw: &[u8], issuer: String, lifetime: Duration) -> Result<Self, String> {
        if public_raw.len() != 65 || public_raw[0] != 4 {
            return Err("the token-signing key is not an uncompressed P-256 point".into());
        }
        let encoding = EncodingKey::from_ec_pem(key_pem.as_bytes()).map_err(|e| format!("token-signing key: {e}"))?;
        let x = URL_SAFE_NO_PAD.encode(&public_raw[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&public_raw[33..65]);
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| format!("token-signing key: {e}"))?;
        let kid = hex::encode(&Sha256::digest(public_raw)[..8]);
        let jwks = serde_json::json!({
            "keys": [{ "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid, "x": x, "y": y }]
        });
        Ok(TokenIssuer {
            encoding,
            decoding,
            kid,
            issuer,
            lifetime,
            jwks,
        })
    }

    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs `value` for `audience`, valid for `ttl`.
    pub fn seal<T: Serialize>(&self, audience: &str, ttl: Duration, value: T) -> Result<String, String> {
        let exp = Timestamp::now().as_millis() / 1000 + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let sealed = Sealed {
            iss: self.issuer.clone(),
            aud: audience.to_owned(),
            exp,
            value,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &sealed, &self.encoding).map_err(|e| format!("signing a value: {e}"))
    }

    /// The `X-Jitgate-Assertion` an app's upstream gets: who calls, under which grant,
    /// for that app only (`aud`), for at most `ttl`. Verifiable with the JWKS.
    pub fn assertion(
        &self,
        audience: &str,
        who: &Identity,
        email: Option<&str>,
        grant_id: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<String, String> {
        let iat = now.as_millis() / 1000;
        let claims = serde_json::json!({
            "iss": self.issuer,
            "aud": audience,
            "sub": who.user,
            "email": email,
            "groups": who.groups,
            "grant": grant_id,
            "jti": random_id("a-"),
            "iat": iat,
            "exp": iat + i64::try_from(ttl.as_secs()).unwrap_or(60),
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| format!("signing an assertion: {e}"))
    }

    /// Opens what `seal` signed for `audience`, if it is unexpired and untouched.
    pub fn open<T: DeserializeOwned>(&self, audience: &str, sealed: &str) -> Result<T, TokenError> {
        self.decode::<Sealed<T>>(sealed, audience, &["exp", "iss", "aud"])
            .map(|s| s.value)
    }

    pub fn issue(&self, who: &Identity, idp: &str, now: Timestamp) -> Result<(String, Claims), String> {
        let iat = now.as_millis() / 1000;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: AUDIENCE.into(),
            sub: who.user.clone(),
            groups: who.groups.clone(),
            iat,
            exp: iat + i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX / 2),
            jti: random_id(""),
            idp: idp.to_owned(),
            parent: None,
        };
        self.sign(claims)
    }

    /// A token for another audience than the API (`kube:{cluster}`), minted from a login
    /// token's claims: the same identity, never outliving the login, at most `ttl`.
    pub fn derive(
        &self,
        login: &Claims,
        audience: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<(String, Claims), String> {
        let iat = now.as_millis() / 1000;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: audience.to_owned(),
            sub: login.sub.clone(),
            groups: login.groups.clone(),
            iat,
            exp: (iat + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2)).min(login.exp),
            jti: random_id(""),
            idp: login.idp.clone(),
            parent: Some(login.jti.clone()),
        };
        self.sign(claims)
    }

    /// Checks a token minted by `derive` for `audience`.
    pub fn verify_for(&self, token: &str, audience: &str) -> Result<Claims, TokenError> {
        self.decode(token, audience, &["exp", "iss", "aud", "sub"])
    }

    fn sign(&self, claims: Claims) -> Result<(String, Claims), String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| format!("signing a token: {e}"))?;
        Ok((token, claims))
    }

    /// Checks algorithm, key, signature, expiry, issuer and audience. Revocation is the
    /// caller's to check, against the store.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.decode(token, AUDIENCE, &["exp", "iss", "aud", "sub"])
    }

    fn decode<T: DeserializeOwned>(&self, token: &str, audience: &str, required: &[&str]) -> Result<T, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_error(token))?;
        if header.alg != Algorithm::ES256 {
            return Err(TokenError::WrongAlgorithm);
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(TokenError::UnknownKey);
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[audience]);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(required);
        v.leeway = 0;
        use jsonwebtoken::errors::ErrorKind as K;
        jsonwebtoken::decode::<T>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::InvalidAudience => TokenError::WrongAudience,
                K::InvalidIssuer => TokenError::WrongIssuer,
                K::InvalidSignature => TokenError::BadSignature,
                K::InvalidAlgorithm => TokenError::WrongAlgorithm,
                _ => TokenError::Malformed,
            })
    }
}

/// Why a header did not parse: an algorithm jsonwebtoken does not even know (`none`) is
/// still the wrong algorithm, and worth saying so.
fn header_error(token: &str) -> TokenError {
    let alg = token
        .split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .and_then(|h| h.get("alg").and_then(|a| a.as_str()).map(str::to_owned));
    match alg {
        Some(a) if a != "ES256" => TokenError::WrongAlgorithm,
        _ => TokenError::Malformed,
    }
}

/// A random identifier with a prefix: 16 hex characters (64 bits) after it.
pub fn random_id(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(lifetime: Duration) -> TokenIssuer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        TokenIssuer::new(
            &key.serialize_pem(),
            key.public_key_raw(),
            "https://proxy".into(),
            lifetime,
        )
        .unwrap()
    }

    fn forge(header: &str, claims: &serde_json::Value, sig: &str) -> String {
        format!(
            "{}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn issued_tokens_verify_and_forgeries_do_not() {
        let iss = issuer(Duration::from_secs(600));
        let alice = Identity::new("alice", ["dba"]);
        let (token, claims) = iss.issue(&alice, "local", Timestamp::now()).unwrap();
        assert_eq!(iss.verify(&token).unwrap(), claims);
        assert_eq!(claims.identity(), alice);

        let body = serde_json::to_value(&claims).unwrap();
        let kid = iss.kid.clone();
        let none = forge(r#"{"alg":"none","typ":"JWT"}"#, &body, "");
        assert_eq!(iss.verify(&none), Err(TokenError::WrongAlgorithm));
        let hs = forge(&format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#), &body, "c2ln");
        assert_eq!(iss.verify(&hs), Err(TokenError::WrongAlgorithm));
        let other_kid = forge(r#"{"alg":"ES256","kid":"nope"}"#, &body, "c2ln");
        assert_eq!(iss.verify(&other_kid), Err(TokenError::UnknownKey));

        // Same header, changed claims: the signature no longer covers them.
        let parts: Vec<&str> = token.split('.').collect();
        let mut evil = body.clone();
        evil["sub"] = "mallory".into();
        let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(evil.to_string()), parts[2]);
        assert_eq!(iss.verify(&tampered), Err(TokenError::BadSignature));

        // A token signed by another key with our kid.
        let other = issuer(Duration::from_secs(600));
        let (foreign, _) = other.issue(&alice, "local", Timestamp::now()).unwrap();
        let fparts: Vec<&str> = foreign.split('.').collect();
        let resigned = format!("{}.{}.{}", parts[0], fparts[1], fparts[2]);
        assert_eq!(iss.verify(&resigned), Err(TokenError::BadSignature));
        assert_eq!(iss.verify("not.a.token"), Err(TokenError::Malformed));
    }

    #[test]
    fn expired_and_misaddressed_tokens_fail() {
        let iss = issuer(Duration::from_secs(60));
        let alice = Identity::new("alice", ["dba"]);
        let long_ago = Timestamp::from_millis(Timestamp::now().as_millis() - 3_600_000);
        let (old, _) = iss.issue(&alice, "local", long_ago).unwrap();
        assert_eq!(iss.verify(&old), Err(TokenError::Expired));

        let (good, claims) = iss.issue(&alice, "local", Timestamp::now()).unwrap();
        assert!(iss.verify(&good).is_ok());
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(iss.kid.clone());
        let sign = |c: &Claims| jsonwebtoken::encode(&header, c, &iss.encoding).unwrap();
        let wrong_aud = Claims {
            aud: "kubernetes".into(),
            ..claims.clone()
        };
        assert_eq!(iss.verify(&sign(&wrong_aud)), Err(TokenError::WrongAudience));
        let wrong_iss = Claims {
            iss: "https://evil".into(),
            ..claims.clone()
        };
        assert_eq!(iss.verify(&sign(&wrong_iss)), Err(TokenError::WrongIssuer));

        let mut elsewhere = issuer(Duration::from_secs(60));
        elsewhere.issuer = "https://other".into();
        elsewhere.kid.clone_from(&iss.kid);
        // Same kid but a different key and issuer: rejected either way.
        let (t, _) = elsewhere.issue(&alice, "local", Timestamp::now()).unwrap();
        assert!(iss.verify(&t).is_err());
    }

    #[test]
    fn a_derived_token_serves_only_its_audience_and_never_outlives_its_login() {
        let iss = issuer(Duration::from_secs(600));
        let alice = Identity::new("alice", ["dba"]);
        let now = Timestamp::now();
        let (login, claims) = iss.issue(&alice, "local", now).unwrap();
        let (kube, derived) = iss
            .derive(&claims, "kube:prod", Duration::from_secs(3600), now)
            .unwrap();
        assert_eq!(derived.exp, claims.exp, "capped at the login's expiry");
        assert_eq!(derived.parent.as_deref(), Some(claims.jti.as_str()));
        assert_eq!(iss.verify_for(&kube, "kube:prod").unwrap().sub, "alice");
        assert_eq!(iss.verify_for(&kube, "kube:staging"), Err(TokenError::WrongAudience));
        assert_eq!(iss.verify(&kube), Err(TokenError::WrongAudience));
        assert_eq!(iss.verify_for(&login, "kube:prod"), Err(TokenError::WrongAudience));
        let (_, short) = iss.derive(&claims, "kube:prod", Duration::from_secs(60), now).unwrap();
        assert_eq!(short.exp, short.iat + 60);
    }
}
