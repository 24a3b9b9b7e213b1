//! Logging in through OpenID Connect providers. The `openidconnect` crate does discovery,
//! the authorization URL with PKCE, the code exchange and the ID token's signature and
//! claim checks; this module adds what it leaves to its user: lazy discovery that survives
//! an IdP that is down at start, a JWKS refreshed when an unknown `kid` appears (never per
//! login), an asymmetric-only algorithm allow-list, `azp` and `iat` checks, and the mapping
//! of claims to a jitgate identity.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode,
    CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse, CoreSubjectIdentifierType,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, EmptyExtraTokenFields, EndSessionUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    IdToken, IdTokenFields, IdTokenVerifier, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, ProviderMetadata, RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardErrorResponse,
    StandardTokenResponse, TokenResponse,
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::config::OidcConfig;

/// Clock skew tolerated on `exp` and `iat`.
const SKEW: Duration = Duration::from_secs(60);
/// An ID token issued longer ago than this was not issued for the login at hand.
const MAX_ID_TOKEN_AGE: Duration = Duration::from_secs(600);
/// Discovery is redone after this, so endpoint changes at the IdP are picked up.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// An unknown `kid` refetches the JWKS at most this often.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(1);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Signature algorithms accepted on ID tokens: asymmetric only. With HS256 allowed, a token
/// MACed with the client secret (or, in the key-confusion attack, with the public key)
/// would be checked against a shared key instead of the IdP's public key.
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Every claim the standard set does not name (groups, custom user claims), kept as JSON.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraClaims {
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}
impl AdditionalClaims for ExtraClaims {}

/// The discovery fields beyond the core set that logins use.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraMetadata {
    end_session_endpoint: Option<EndSessionUrl>,
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
    /// RFC 9207: the IdP names itself (`iss`) in every authorization response.
    authorization_response_iss_parameter_supported: Option<bool>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;
type Fields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type IdpTokenResponse = StandardTokenResponse<Fields, CoreTokenType>;
type IdpIdToken = IdToken<ExtraClaims, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;
type IdpClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    IdpTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("no identity provider named {0:?}")]
    UnknownProvider(String),
    #[error("the identity provider {idp} is unreachable or misbehaving: {detail}")]
    Unavailable { idp: String, detail: String },
    #[error("the identity provider refused: {0}")]
    Refused(String),
    #[error("the ID token was rejected: {0}")]
    BadIdToken(String),
    #[error("{0}")]
    NotAllowed(String),
}

/// Who the IdP says logged in, mapped to jitgate's terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdpIdentity {
    pub user: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub subject: String,
}

/// A finished login at the IdP: who, and the refresh token that can re-check them later.
pub struct IdpLogin {
    pub who: IdpIdentity,
    pub refresh_token: Option<String>,
}

/// What a browser login needs to carry to the callback.
pub struct LoginStart {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

pub struct DeviceStart {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub interval: Duration,
    pub expires_in: Duration,
}

pub enum DevicePoll {
    Pending,
    SlowDown,
    Done(IdpLogin),
}

struct Discovered {
    client: IdpClient,
    jwks_uri: String,
    jwks: Arc<CoreJsonWebKeySet>,
    issuer: IssuerUrl,
    end_session: Option<EndSessionUrl>,
    device_url: Option<DeviceAuthorizationUrl>,
    token_url: Option<String>,
    sends_iss: bool,
    discovered_at: Instant,
    jwks_fetched_at: Instant,
}

pub struct Provider {
    pub config: OidcConfig,
    http: reqwest::Client,
    redirect_uri: RedirectUrl,
    state: Mutex<Option<Arc<Discovered>>>,
}

/// The configured providers, in configuration order.
pub struct Providers {
    list: Vec<Arc<Provider>>,
}

impl Providers {
    /// `callback` is the proxy's `/auth/callback` URL, registered at each IdP.
    pub fn new(configs: &[OidcConfig], callback: &str) -> Result<Providers, String> {
        // No redirects: an IdP endpoint that redirects elsewhere is misconfigured, and
        // following it would let the IdP's answers steer the proxy's requests.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client for the IdPs: {e}"))?;
        let redirect_uri =
            RedirectUrl::new(callback.to_owned()).map_err(|e| format!("callback URL {callback:?}: {e}"))?;
        let list = configs
            .iter()
            .map(|c| {
                Arc::new(Provider {
                    config: c.clone(),
                    http: http.clone(),
                    redirect_uri: redirect_uri.clone(),
                    state: Mutex::new(None),
                })
            })
            .collect();
        Ok(Providers { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn all(&self) -> &[Arc<Provider>] {
        &self.list
    }

    /// The named provider, or the only one when `name` is None.
    pub fn pick(&self, name: Option<&str>) -> Result<&Arc<Provider>, OidcError> {
        match name {
            Some(n) => self
                .list
                .iter()
                .find(|p| p.config.name == n)
                .ok_or_else(|| OidcError::UnknownProvider(n.to_owned())),
            None if self.list.len() == 1 => Ok(&self.list[0]),
            None if self.list.is_empty() => Err(OidcError::UnknownProvider(
                "(none configured; log in with --user for a local account)".into(),
            )),
            None => Err(OidcError::UnknownProvider(format!(
                "(several configured: pick one of {})",
                self.list
                    .iter()
                    .map(|p| p.config.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

impl Provider {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn unavailable(&self, detail: impl std::fmt::Display) -> OidcError {
        OidcError::Unavailable {
            idp: self.config.name.clone(),
            detail: detail.to_string(),
        }
    }

    /// The discovered metadata, fetched on first use and again after `METADATA_TTL`. A
    /// failure is not cached: the next login tries again.
    async fn discovered(&self) -> Result<Arc<Discovered>, OidcError> {
        let mut slot = self.state.lock().await;
        if let Some(d) = slot.as_ref().filter(|d| d.discovered_at.elapsed() < METADATA_TTL) {
            return Ok(Arc::clone(d));
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| self.unavailable(e))?;
        // The crate checks that the document names the issuer we asked for.
        let metadata = Metadata::discover_async(issuer.clone(), &self.http)
            .await
            .map_err(|e| self.unavailable(format!("discovery at {}: {}", self.config.issuer, error_chain(&e))))?;
        let extra = metadata.additional_metadata().clone();
        let jwks_uri = metadata.jwks_uri().url().to_string();
        let token_url = metadata.token_endpoint().map(|u| u.url().to_string());
        let jwks = Arc::new(metadata.jwks().clone());
        let client: IdpClient = Client::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(self.config.client_secret.expose_secret().to_owned())),
        )
        .set_redirect_uri(self.redirect_uri.clone());
        let d = Arc::new(Discovered {
            client,
            jwks_uri,
            jwks,
            issuer,
            end_session: extra.end_session_endpoint,
            device_url: extra.device_authorization_endpoint,
            token_url,
            sends_iss: extra.authorization_response_iss_parameter_supported == Some(true),
            discovered_at: Instant::now(),
            jwks_fetched_at: Instant::now(),
        });
        *slot = Some(Arc::clone(&d));
        tracing::info!(idp = %self.config.name, issuer = %self.config.issuer, "discovered identity provider");
        Ok(d)
    }

    /// Replaces the JWKS after an unknown `kid`, unless another login just did.
    async fn refresh_jwks(&self, seen: &Arc<Discovered>) -> Result<Arc<Discovered>, OidcError> {
        let mut slot = self.state.lock().await;
        let current = slot.clone().unwrap_or_else(|| Arc::clone(seen));
        if !Arc::ptr_eq(&current, seen) {
            // Another login refreshed the keys while this one waited for the lock.
            return Ok(current);
        }
        // Unknown kids arriving in a burst wait their turn instead of each fetching.
        let since = current.jwks_fetched_at.elapsed();
        if since < JWKS_MIN_REFETCH {
            tokio::time::sleep(JWKS_MIN_REFETCH - since).await;
        }
        let url = openidconnect::JsonWebKeySetUrl::new(current.jwks_uri.clone()).map_err(|e| self.unavailable(e))?;
        let jwks: CoreJsonWebKeySet = CoreJsonWebKeySet::fetch_async(&url, &self.http)
            .await
            .map_err(|e| self.unavailable(format!("fetching the JWKS: {}", error_chain(&e))))?;
        tracing::info!(idp = %self.config.name, keys = jwks.keys().len(), "refreshed the IdP's signing keys");
        let d = Arc::new(Discovered {
            client: current.client.clone(),
            jwks_uri: current.jwks_uri.clone(),
            jwks: Arc::new(jwks),
            issuer: current.issuer.clone(),
            end_session: current.end_session.clone(),
            device_url: current.device_url.clone(),
            token_url: current.token_url.clone(),
            sends_iss: current.sends_iss,
            discovered_at: current.discovered_at,
            jwks_fetched_at: Instant::now(),
        });
        *slot = Some(Arc::clone(&d));
        Ok(d)
    }

    /// The IdP's authorization URL for a new login, with fresh state, nonce and PKCE S256.
    pub async fn begin(&self) -> Result<LoginStart, OidcError> {
        let d = self.discovered().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = d.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in self.config.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        Ok(LoginStart {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Redeems `code` and checks the ID token it brings; the code is spent either way.
    pub async fn finish(&self, code: &str, pkce_verifier: &str, nonce: &str) -> Result<IdpLogin, OidcError> {
        let d = self.discovered().await?;
        let exchange = d
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| self.unavailable(e))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()));
        let response = exchange.request_async(&self.http).await.map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => OidcError::Refused(format!(
                "{}{}",
                r.error(),
                r.error_description().map(|d| format!(": {d}")).unwrap_or_default()
            )),
            other => self.unavailable(format!("redeeming the code: {}", error_chain(&other))),
        })?;
        let token = response
            .id_token()
            .ok_or_else(|| OidcError::BadIdToken("the token response has no id_token".into()))?;
        let who = self.verify_token(d, token, Some(nonce)).await?;
        Ok(IdpLogin {
            who,
            refresh_token: response.refresh_token().map(|t| t.secret().clone()),
        })
    }

    /// Asks the IdP again about a user it logged in before, with the refresh token it gave
    /// then: a user disabled or removed at the IdP is refused here, and changed groups show.
    /// The fresh ID token must name the same subject.
    pub async fn refresh(&self, refresh_token: &str, subject: &str) -> Result<IdpLogin, OidcError> {
        let d = self.discovered().await?;
        let response = d
            .client
            .exchange_refresh_token(&RefreshToken::new(refresh_token.to_owned()))
            .map_err(|e| self.unavailable(e))?
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => OidcError::Refused(format!(
                    "{}{}",
                    r.error(),
                    r.error_description().map(|d| format!(": {d}")).unwrap_or_default()
                )),
                other => self.unavailable(format!("refreshing: {}", error_chain(&other))),
            })?;
        // Without a fresh ID token there is nothing that re-asserts who the user is.
        let token = response.id_token().ok_or_else(|| {
            OidcError::BadIdToken(
                "the IdP's refresh answer has no id_token, so it cannot re-check the user; set [auth] token_refresh = false".into(),
            )
        })?;
        let who = self.verify_token(d, token, None).await?;
        if who.subject != subject {
            return Err(OidcError::BadIdToken(format!(
                "the refreshed ID token names subject {:?}, not {subject:?}",
                who.subject
            )));
        }
        Ok(IdpLogin {
            who,
            refresh_token: Some(
                response
                    .refresh_token()
                    .map_or_else(|| refresh_token.to_owned(), |t| t.secret().clone()),
            ),
        })
    }

    /// Checks a raw ID token; see `verify_token`.
    async fn verify(&self, d: Arc<Discovered>, raw: &str, nonce: Option<&str>) -> Result<IdpIdentity, OidcError> {
        let token = IdpIdToken::from_str(raw).map_err(|e| OidcError::BadIdToken(format!("malformed: {e}")))?;
        self.verify_token(d, &token, nonce).await
    }

    /// Checks an ID token (signature, algorithm, iss, aud, azp, exp, iat, nonce) and maps its
    /// claims; an unknown `kid` refreshes the JWKS once and tries again.
    async fn verify_token(
        &self,
        d: Arc<Discovered>,
        token: &IdpIdToken,
        nonce: Option<&str>,
    ) -> Result<IdpIdentity, OidcError> {
        match self.check(&d, token, nonce, Utc::now()) {
            Err(CheckError::UnknownKey) => {
                let fresh = self.refresh_jwks(&d).await?;
                match self.check(&fresh, token, nonce, Utc::now()) {
                    Err(CheckError::UnknownKey) => Err(OidcError::BadIdToken(
                        "it is signed with a key the IdP does not publish".into(),
                    )),
                    Err(CheckError::Bad(e)) => Err(OidcError::BadIdToken(e)),
                    Ok(claims) => self.map_claims(&claims),
                }
            }
            Err(CheckError::Bad(e)) => Err(OidcError::BadIdToken(e)),
            Ok(claims) => self.map_claims(&claims),
        }
    }

    fn check(
        &self,
        d: &Discovered,
        token: &IdpIdToken,
        nonce: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<serde_json::Value, CheckError> {
        let skew = chrono::Duration::from_std(SKEW).unwrap_or_default();
        let max_age = chrono::Duration::from_std(MAX_ID_TOKEN_AGE).unwrap_or_default();
        let verifier: IdTokenVerifier<'_, CoreJsonWebKey> = IdTokenVerifier::new_public_client(
            ClientId::new(self.config.client_id.clone()),
            d.issuer.clone(),
            (*d.jwks).clone(),
        )
        .set_allowed_algs(ALLOWED_ALGS)
        .set_time_fn(move || now - skew)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > now + skew {
                Err(format!("issued in the future ({iat})"))
            } else if iat < now - max_age - skew {
                Err(format!("issued too long ago ({iat})"))
            } else {
                Ok(())
            }
        });
        use openidconnect::{ClaimsVerificationError as C, SignatureVerificationError as S};
        let claims = match nonce {
            Some(n) => token.claims(&verifier, &Nonce::new(n.to_owned())),
            // The device grant carries no nonce; a nonce the token brings anyway is moot.
            None => token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
        }
        .map_err(|e| match e {
            C::SignatureVerification(S::NoMatchingKey) => CheckError::UnknownKey,
            other => CheckError::Bad(error_chain(&other)),
        })?;
        // openidconnect leaves azp to its user: when present it must name us.
        if let Some(azp) = claims.authorized_party() {
            if azp.as_str() != self.config.client_id {
                return Err(CheckError::Bad(format!("azp {:?} is not this client", azp.as_str())));
            }
        }
        serde_json::to_value(claims).map_err(|e| CheckError::Bad(e.to_string()))
    }

    /// Turns verified claims into an identity, enforcing the user claim's presence and
    /// the email domain allow-list.
    fn map_claims(&self, claims: &serde_json::Value) -> Result<IdpIdentity, OidcError> {
        let c = &self.config;
        let subject = claims["sub"].as_str().unwrap_or_default().to_owned();
        let email = claims.get("email").and_then(|v| v.as_str()).map(str::to_owned);
        // An address names a person only once the IdP has verified it: wherever the user's
        // name or the domain check rests on it, `email_verified` must say so (some IdPs send
        // the string "true").
        let verified = match claims.get("email_verified") {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => s == "true",
            _ => false,
        };
        let relies_on_email = c.user_claim == "email" || !c.allowed_email_domains.is_empty();
        if let Some(e) = email.as_deref().filter(|_| relies_on_email && !verified) {
            return Err(OidcError::NotAllowed(format!(
                "the IdP has not verified the email address {e:?} (email_verified is not true); \
                 an unverified address cannot name a user here"
            )));
        }
        if !c.allowed_email_domains.is_empty() {
            let e = email.as_deref().ok_or_else(|| {
                OidcError::NotAllowed("the IdP sent no email address, and only some email domains may log in".into())
            })?;
            let domain = email_domain(e).ok_or_else(|| {
                OidcError::NotAllowed(format!(
                    "{e:?} is not a plain email address (one '@', a domain after it)"
                ))
            })?;
            if !c.allowed_email_domains.contains(&domain) {
                return Err(OidcError::NotAllowed(format!(
                    "{e:?}: the domain {domain} may not log in here"
                )));
            }
        }
        let user = match claims.get(&c.user_claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(OidcError::NotAllowed(format!(
                    "the ID token has no {:?} claim to name the user by",
                    c.user_claim
                )))
            }
        };
        if subject.is_empty() {
            return Err(OidcError::BadIdToken("the ID token has no sub".into()));
        }
        if user.len() > 256 || user.chars().any(|ch| ch.is_control() || ch.is_whitespace()) {
            return Err(OidcError::NotAllowed(format!("{user:?} is not usable as a user name")));
        }
        let groups = match claims.get(&c.groups_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|g| g.as_str())
                .filter(|g| !g.is_empty() && g.len() <= 256)
                .map(|g| format!("{}{g}", c.groups_prefix))
                .collect(),
            Some(serde_json::Value::String(s)) => vec![format!("{}{s}", c.groups_prefix)],
            Some(_) => {
                return Err(OidcError::BadIdToken(format!(
                    "the {:?} claim is neither a list nor a string",
                    c.groups_claim
                )))
            }
        };
        Ok(IdpIdentity {
            user,
            // Passed on to apps (header and assertion) as the user's address: only once the
            // IdP has verified it, whatever the user is named by.
            email: email.filter(|_| verified),
            groups,
            subject,
        })
    }

    /// Whether this IdP names itself in its authorization responses (RFC 9207), so that an
    /// answer without `iss` is not from it.
    pub async fn sends_iss(&self) -> bool {
        self.discovered().await.is_ok_and(|d| d.sends_iss)
    }

    /// Where to send the browser after logout, if the IdP publishes an end_session_endpoint.
    pub async fn end_session_url(&self, post_logout_redirect: &str) -> Option<String> {
        let d = self.discovered().await.ok()?;
        let mut url = d.end_session.as_ref()?.url().clone();
        url.query_pairs_mut()
            .append_pair("client_id", &self.config.client_id)
            .append_pair("post_logout_redirect_uri", post_logout_redirect);
        Some(url.to_string())
    }

    /// Starts a device authorization at the IdP, with the proxy's own client credentials.
    pub async fn device_start(&self) -> Result<DeviceStart, OidcError> {
        let d = self.discovered().await?;
        let url = d.device_url.clone().ok_or_else(|| {
            OidcError::NotAllowed(format!(
                "the identity provider {} does not offer the device grant; log in without --device",
                self.config.name
            ))
        })?;
        let client = d.client.clone().set_device_authorization_url(url);
        let mut req = client.exchange_device_code();
        for s in &self.config.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let details: openidconnect::core::CoreDeviceAuthorizationResponse =
            req.request_async(&self.http).await.map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => OidcError::Refused(r.error().to_string()),
                other => self.unavailable(format!("device authorization: {}", error_chain(&other))),
            })?;
        Ok(DeviceStart {
            device_code: details.device_code().secret().clone(),
            user_code: details.user_code().secret().clone(),
            verification_uri: details.verification_uri().to_string(),
            verification_uri_complete: details.verification_uri_complete().map(|u| u.secret().clone()),
            interval: details.interval(),
            expires_in: details.expires_in(),
        })
    }

    /// Asks the IdP once whether the user has finished the device login. The crate's own
    /// device-token call polls in a loop until done; the proxy instead answers each CLI poll
    /// with one request, so no task has to live on one replica for the whole login.
    pub async fn device_poll(&self, device_code: &str) -> Result<DevicePoll, OidcError> {
        let d = self.discovered().await?;
        let token_url = d
            .token_url
            .clone()
            .ok_or_else(|| self.unavailable("the IdP publishes no token endpoint"))?;
        let response = self
            .http
            .post(&token_url)
            .basic_auth(
                form_encode(&self.config.client_id),
                Some(form_encode(self.config.client_secret.expose_secret())),
            )
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code),
            ])
            .send()
            .await
            .map_err(|e| self.unavailable(format!("polling the token endpoint: {}", error_chain(&e))))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| self.unavailable(format!("the token endpoint answered {status} without JSON: {e}")))?;
        if let Some(error) = body.get("error").and_then(|e| e.as_str()) {
            return match error {
                "authorization_pending" => Ok(DevicePoll::Pending),
                "slow_down" => Ok(DevicePoll::SlowDown),
                "expired_token" => Err(OidcError::Refused("the device code expired; log in again".into())),
                "access_denied" => Err(OidcError::Refused(
                    "the login was denied at the identity provider".into(),
                )),
                other => Err(OidcError::Refused(other.to_owned())),
            };
        }
        let raw = body
            .get("id_token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| OidcError::BadIdToken("the token response has no id_token".into()))?;
        let who = self.verify(d, raw, None).await?;
        Ok(DevicePoll::Done(IdpLogin {
            who,
            refresh_token: body.get("refresh_token").and_then(|t| t.as_str()).map(str::to_owned),
        }))
    }
}

enum CheckError {
    UnknownKey,
    Bad(String),
}

/// RFC 6749 §2.3.1: client credentials in Basic auth are form-urlencoded first.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The domain of a plain address `local@domain`, lower-cased; None for anything with more
/// or fewer than one '@' (`a@evil.com@example.com` must not pass as example.com).
pub fn email_domain(email: &str) -> Option<String> {
    let (local, domain) = email.split_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') || domain.contains(|c: char| c.is_whitespace()) {
        return None;
    }
    Some(domain.to_ascii_lowercase())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_addresses_have_a_domain() {
        assert_eq!(email_domain("alice@Example.com").as_deref(), Some("example.com"));
        assert_eq!(email_domain("a@evil.com@example.com"), None);
        assert_eq!(email_domain("@example.com"), None);
        assert_eq!(email_domain("alice@"), None);
        assert_eq!(email_domain("alice"), None);
        assert_eq!(email_domain("alice@exa mple.com"), None);
    }

    fn provider(user_claim: &str) -> Provider {
        let config = OidcConfig {
            name: "corp".into(),
            display_name: "Corp".into(),
            issuer: "https://idp.example.com".into(),
            client_id: "jitgate".into(),
            client_secret: String::from("s").into(),
            scopes: vec!["openid".into()],
            groups_claim: "groups".into(),
            groups_prefix: String::new(),
            user_claim: user_claim.into(),
            allowed_email_domains: Vec::new(),
        };
        let providers = Providers::new(&[config], "https://proxy.example.com/auth/callback").unwrap();
        let only = Arc::clone(&providers.all()[0]);
        drop(providers);
        Arc::into_inner(only).unwrap()
    }

    #[test]
    fn an_unverified_address_is_not_passed_on_even_where_it_names_nobody() {
        let p = provider("sub");
        let claims = |verified: serde_json::Value| serde_json::json!({ "sub": "u-1", "email": "boss@example.com", "email_verified": verified });
        for unverified in [
            serde_json::json!(false),
            serde_json::json!("false"),
            serde_json::Value::Null,
        ] {
            let id = p.map_claims(&claims(unverified.clone())).unwrap();
            assert_eq!(id.user, "u-1");
            assert_eq!(id.email, None, "email_verified {unverified}");
        }
        for verified in [serde_json::json!(true), serde_json::json!("true")] {
            let id = p.map_claims(&claims(verified)).unwrap();
            assert_eq!(id.email.as_deref(), Some("boss@example.com"));
        }
        // Where the address names the user, an unverified one refuses the login.
        let p = provider("email");
        let e = p.map_claims(&claims(serde_json::json!(false))).unwrap_err();
        assert!(e.to_string().contains("has not verified"), "{e}");
    }
}
