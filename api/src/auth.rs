//! Authentication: argon2id password hashes, HS256 access tokens, opaque refresh tokens,
//! and the [`Caller`] extractor that every protected handler takes.

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use berth_core::config::AuthConfig;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, FieldError};
use crate::extract::{ClientAddr, ValidJson};

/// Issuer and audience of berth's tokens.
const ISSUER: &str = "berth";

/// Signing keys and token lifetimes.
pub struct AuthKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// A real argon2id hash of a random password, verified when the user does not exist so
    /// that response time does not reveal which usernames exist.
    dummy_hash: String,
}

impl AuthKeys {
    /// Fails only for a secret the signer refuses (the config loader already requires 16+
    /// characters).
    pub fn new(config: &AuthConfig) -> Result<AuthKeys, jsonwebtoken::errors::Error> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        validation.leeway = 5;
        let mut random = [0u8; 16];
        rand::fill(&mut random);
        Ok(AuthKeys {
            encoding: EncodingKey::from_secret(config.jwt_secret.as_bytes())?,
            decoding: DecodingKey::from_secret(config.jwt_secret.as_bytes())?,
            validation,
            access_ttl: config.access_token_ttl,
            refresh_ttl: config.refresh_token_ttl,
            dummy_hash: hash_password(&hex(&random)).expect("argon2 hashing a fixed-size input"),
        })
    }

    pub fn issue(&self, user: &UserRow) -> Result<String, ApiError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user.id,
            tid: user.tenant_id,
            tenant: user.tenant_name.clone(),
            role: user.role.clone(),
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
            iss: ISSUER.into(),
            jti: Uuid::new_v4(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("signing token: {e}")))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|d| d.claims).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            ApiError::Unauthorized(
                match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::InvalidSignature => "token signature invalid",
                    _ => "token malformed",
                }
                .into(),
            )
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An argon2id PHC string with a random salt and the crate's default (OWASP) parameters.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("hashing password: {e}")))
}

/// Constant-work check of a password against a PHC string; a malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub tid: Uuid,
    pub tenant: String,
    pub role: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub jti: Uuid,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: Uuid,
    pub tenant_id: Uuid,
    pub tenant: String,
    pub role: String,
    /// An admin of the system tenant: administers the platform.
    pub platform_admin: bool,
    /// When the access token expires (Unix seconds): streams end then.
    pub expires_at: i64,
}

impl Caller {
    /// Verifies the request's bearer token.
    pub fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing Authorization header".into()))?;
        let value = header.to_str().map_err(|_| ApiError::Unauthorized("Authorization header is not text".into()))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("expected 'Authorization: Bearer <token>'".into()))?;
        let c = state.auth.verify(token)?;
        let platform_admin = is_platform_admin(&c.role, &c.tenant, state);
        Ok(Caller {
            user_id: c.sub,
            tenant_id: c.tid,
            tenant: c.tenant,
            role: c.role,
            platform_admin,
            expires_at: c.exp,
        })
    }
}

/// Platform administration belongs to the admins of the system tenant (DESIGN.md §3).
pub fn is_platform_admin(role: &str, tenant: &str, state: &AppState) -> bool {
    role == "admin" && tenant == state.config.bootstrap.system_tenant
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// The caller [`crate::rbac::enforce`] authenticated, or (outside it) the token's.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Caller>() {
            Some(c) => Ok(c.clone()),
            None => Caller::authenticate(parts, state),
        }
    }
}

/// A user joined with its tenant, as login needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub tenant_name: String,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub full_name: Option<String>,
    pub role: String,
    pub status: String,
    pub tenant_status: String,
    pub created_at: Option<DateTime<Utc>>,
}

/// The seed's User schema.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = User)]
pub struct UserView {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub username: String,
    pub email: String,
    pub full_name: Option<String>,
    pub role: String,
    pub status: String,
    pub created_at: Option<DateTime<Utc>>,
}

impl From<&UserRow> for UserView {
    fn from(u: &UserRow) -> Self {
        UserView {
            id: u.id,
            tenant_id: u.tenant_id,
            username: u.username.clone(),
            email: u.email.clone(),
            full_name: u.full_name.clone(),
            role: u.role.clone(),
            status: u.status.clone(),
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub tenant_name: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub user: UserView,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/me", axum::routing::get(me))
}

/// The user columns joined with the tenant, for every query that builds a [`UserRow`].
const USER_ROW: &str =
    "select u.id, u.tenant_id, t.name as tenant_name, u.username, u.email, u.password_hash, u.full_name,
        u.role, u.status, t.status as tenant_status, u.created_at
     from users u join tenants t on t.id = u.tenant_id";

/// Candidates checked when a username exists in several tenants and no tenant is named: the
/// password picks the account, and a bound keeps the work per request bounded.
const MAX_LOGIN_CANDIDATES: i64 = 8;
const MAX_CREDENTIAL_LEN: usize = 1024;

#[utoipa::path(post, path = "/v1/auth/login", tag = "Authentication", summary = "Log in", request_body = LoginRequest,
    responses((status = 200, description = "Logged in", body = LoginResponse), (status = 401, description = "Wrong credentials", body = crate::openapi::Error), (status = 403, description = "The tenant or account is suspended", body = crate::openapi::Error), (status = 429, description = "Too many attempts; see Retry-After", body = crate::openapi::Error, headers(("Retry-After" = u64, description = "Seconds to wait")))))]
async fn login(
    State(s): State<AppState>,
    ClientAddr(addr): ClientAddr,
    ValidJson(req): ValidJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let mut bad = Vec::new();
    if req.username.is_empty() {
        bad.push(FieldError::new("username", "must not be empty"));
    }
    if req.password.is_empty() {
        bad.push(FieldError::new("password", "must not be empty"));
    }
    if req.username.len() > MAX_CREDENTIAL_LEN || req.password.len() > MAX_CREDENTIAL_LEN {
        bad.push(FieldError::new(
            "password",
            format!("username and password must be at most {MAX_CREDENTIAL_LEN} bytes"),
        ));
    }
    // PostgreSQL text cannot hold NUL; such a name can match no account.
    for (field, v) in [("username", Some(&req.username)), ("tenant_name", req.tenant_name.as_ref())] {
        if v.is_some_and(|v| v.contains('\0') || v.len() > MAX_CREDENTIAL_LEN) {
            bad.push(FieldError::new(field, format!("must be at most {MAX_CREDENTIAL_LEN} bytes, without NUL")));
        }
    }
    if !bad.is_empty() {
        return Err(ApiError::invalid(bad));
    }
    // Rate limits come before any password work, so refused attempts cost no argon2.
    let limits = &s.config.auth;
    // One bucket per username, whichever tenant is named, so naming tenants buys no guesses.
    let user_key = format!("login:user:{}", req.username.to_lowercase());
    let too_many = |retry_after| ApiError::TooManyRequests { what: "login attempts", retry_after };
    if let Some(addr) = addr
        && let Some(wait) = s
            .queue
            .rate_limit(&format!("login:addr:{addr}"), limits.login_attempts_per_address, limits.login_window, true)
            .await?
    {
        return Err(too_many(wait));
    }
    // Counted before the password is checked, so simultaneous guesses cannot all slip under
    // the limit; a success takes its count back, so only failures add up.
    if let Some(wait) = s.queue.rate_limit(&user_key, limits.login_failures_per_user, limits.login_window, true).await?
    {
        return Err(too_many(wait));
    }
    let candidates: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{USER_ROW} where u.username = $1 and ($2::text is null or t.name = $2) order by u.created_at limit $3"
    )))
    .bind(&req.username)
    .bind(&req.tenant_name)
    .bind(MAX_LOGIN_CANDIDATES)
    .fetch_all(&s.pool)
    .await?;

    let dummy = s.auth.dummy_hash.clone();
    let password = req.password;
    let hashes: Vec<String> = candidates.iter().map(|u| u.password_hash.clone()).collect();
    // argon2 is deliberately slow: keep it off the async workers.
    let matched = tokio::task::spawn_blocking(move || {
        if hashes.is_empty() {
            verify_password(&password, &dummy);
            return None;
        }
        hashes.iter().position(|h| verify_password(&password, h))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("password check: {e}")))?;

    let Some(user) = matched.map(|i| &candidates[i]).filter(|u| u.status == "active" && u.tenant_status == "active")
    else {
        return Err(ApiError::Unauthorized("invalid username or password".into()));
    };
    s.queue.rate_forgive(&user_key).await?;

    let mut tx = s.pool.begin().await?;
    let response = session(&s, &mut tx, user, Uuid::new_v4()).await?;
    sqlx::query("update users set last_login_at = now() where id = $1").bind(user.id).execute(&mut *tx).await?;
    tx.commit().await?;
    tracing::info!(user = %user.id, tenant = %user.tenant_name, "login");
    Ok(Json(response))
}

/// A new access token and a new refresh token of `family`, stored in `tx`.
async fn session(
    s: &AppState,
    tx: &mut sqlx::PgConnection,
    user: &UserRow,
    family: Uuid,
) -> Result<LoginResponse, ApiError> {
    let access_token = s.auth.issue(user)?;
    let refresh_token = new_refresh_token();
    let expires_at = Utc::now() + chrono::Duration::from_std(s.auth.refresh_ttl).unwrap_or(chrono::Duration::days(30));
    sqlx::query("insert into refresh_tokens (user_id, family_id, token_hash, expires_at) values ($1, $2, $3, $4)")
        .bind(user.id)
        .bind(family)
        .bind(refresh_token_hash(&refresh_token))
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
    Ok(LoginResponse {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: s.auth.access_ttl.as_secs(),
        user: user.into(),
    })
}

/// A stored refresh token.
#[derive(sqlx::FromRow)]
struct RefreshRow {
    id: Uuid,
    user_id: Uuid,
    family_id: Uuid,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    rotated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Rotates a refresh token: the presented one is spent, a new one of the same family is
/// returned with a new access token. Presenting a spent token again means it leaked (or the
/// client raced itself): the whole family is revoked, and its holder must log in again.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "Authentication", summary = "Rotate a refresh token", request_body = RefreshRequest,
    responses((status = 200, description = "A new token pair; the presented refresh token is spent", body = LoginResponse), (status = 401, description = "Invalid, expired or reused (which revokes its family)", body = crate::openapi::Error)))]
async fn refresh(
    State(s): State<AppState>,
    ValidJson(req): ValidJson<RefreshRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let invalid = || ApiError::Unauthorized("refresh token invalid or expired".into());
    if req.refresh_token.is_empty() || req.refresh_token.len() > MAX_CREDENTIAL_LEN {
        return Err(invalid());
    }
    let mut tx = s.pool.begin().await?;
    let row: Option<RefreshRow> = sqlx::query_as(
        "select id, user_id, family_id, expires_at, revoked_at, rotated_at from refresh_tokens where token_hash = $1 for update",
    )
    .bind(refresh_token_hash(&req.refresh_token))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(RefreshRow { id, user_id, family_id: family, expires_at, revoked_at, rotated_at }) = row else {
        return Err(invalid());
    };
    if revoked_at.is_some() || expires_at <= Utc::now() {
        return Err(invalid());
    }
    if rotated_at.is_some() {
        sqlx::query("update refresh_tokens set revoked_at = now() where family_id = $1 and revoked_at is null")
            .bind(family)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::warn!(user = %user_id, %family, "refresh token reused; family revoked");
        return Err(ApiError::Unauthorized("refresh token already used; the session is revoked, log in again".into()));
    }
    let user: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{USER_ROW} where u.id = $1")))
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
    let user = user.filter(|u| u.status == "active" && u.tenant_status == "active").ok_or_else(invalid)?;
    sqlx::query("update refresh_tokens set rotated_at = now() where id = $1").bind(id).execute(&mut *tx).await?;
    let response = session(&s, &mut tx, &user, family).await?;
    tx.commit().await?;
    Ok(Json(response))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// Ends sessions: the presented refresh token's family, or without one every session of the
/// caller. Access tokens are not stored, so one already issued stays valid until it expires
/// (`auth.access_token_ttl`).
#[utoipa::path(post, path = "/v1/auth/logout", tag = "Authentication", summary = "End sessions", request_body(content = Option<LogoutRequest>, description = "The refresh token whose session ends; without it, every session of the caller"),
    responses((status = 200, description = "Logged out", body = crate::openapi::LogoutResponse)))]
async fn logout(
    State(s): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: LogoutRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutRequest::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    let revoked = match req.refresh_token {
        Some(token) => sqlx::query(
            "update refresh_tokens set revoked_at = now()
             where revoked_at is null and user_id = $2
               and family_id = (select family_id from refresh_tokens where token_hash = $1 and user_id = $2)",
        )
        .bind(refresh_token_hash(&token))
        .bind(caller.user_id)
        .execute(&s.pool)
        .await?
        .rows_affected(),
        None => sqlx::query("update refresh_tokens set revoked_at = now() where user_id = $1 and revoked_at is null")
            .bind(caller.user_id)
            .execute(&s.pool)
            .await?
            .rows_affected(),
    };
    Ok(Json(serde_json::json!({ "message": "Logged out", "revoked_tokens": revoked })))
}

/// The caller's own account.
#[utoipa::path(get, path = "/v1/me", tag = "Authentication", summary = "The caller's account",
    responses((status = 200, description = "The caller", body = crate::openapi::MeResponse)))]
async fn me(State(s): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let user: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{USER_ROW} where u.id = $1")))
        .bind(caller.user_id)
        .fetch_optional(&s.pool)
        .await?;
    let user = user.ok_or_else(|| ApiError::Unauthorized("the token's user no longer exists".into()))?;
    let mut v = serde_json::to_value(UserView::from(&user)).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["tenant_name"] = serde_json::json!(user.tenant_name);
    v["platform_admin"] = serde_json::json!(caller.platform_admin);
    Ok(Json(serde_json::json!({ "data": v })))
}

/// 32 random bytes, base64url: opaque to clients, stored only as a hash.
fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn refresh_token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("S3cret", &h));
        assert!(!verify_password("s3cret", "not a hash"));
    }

    fn user() -> UserRow {
        UserRow {
            id: Uuid::new_v4(),
            tenant_id: Uuid::new_v4(),
            tenant_name: "demo".into(),
            username: "u".into(),
            email: "u@x".into(),
            password_hash: String::new(),
            full_name: None,
            role: "user".into(),
            status: "active".into(),
            tenant_status: "active".into(),
            created_at: None,
        }
    }

    #[test]
    fn tokens_round_trip_and_forgeries_fail() {
        let keys = AuthKeys::new(&AuthConfig::default()).unwrap();
        let u = user();
        let t = keys.issue(&u).unwrap();
        let c = keys.verify(&t).unwrap();
        assert_eq!((c.sub, c.tid, c.role.as_str()), (u.id, u.tenant_id, "user"));

        let other =
            AuthKeys::new(&AuthConfig { jwt_secret: "another-secret-of-16+".into(), ..AuthConfig::default() }).unwrap();
        assert!(matches!(other.verify(&t), Err(ApiError::Unauthorized(m)) if m == "token signature invalid"));
        assert!(keys.verify("not.a.token").is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let keys = AuthKeys::new(&AuthConfig::default()).unwrap();
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: Uuid::nil(),
            tid: Uuid::nil(),
            tenant: "t".into(),
            role: "user".into(),
            iat: now - 7200,
            exp: now - 3600,
            iss: ISSUER.into(),
            jti: Uuid::nil(),
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        assert!(matches!(keys.verify(&t), Err(ApiError::Unauthorized(m)) if m == "token expired"));
    }
}
