//! Request extractors whose rejections are [`ApiError`]s naming the offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Unlike `axum::Json`, a type error names the field's path
/// (`resource_requests.gpu: invalid type ...`), and any content type is accepted so that a
/// plain `curl -d` works.
#[derive(Debug, Clone)]
pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            // axum reports an over-limit body as 413 or, when the limit error reaches it
            // wrapped, as a 400 whose text says so; both are the body limit.
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE
                || e.body_text().contains("length limit exceeded")
            {
                ApiError::TooLarge(e.body_text())
            } else {
                ApiError::field("(body)", e.body_text())
            }
        })?;
        parse_json(&bytes).map(ValidJson)
    }
}

/// Parses JSON, reporting the path of the first error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at_root = path == "." || path.is_empty();
        // serde's messages end with " at line L column C"; the field path says more.
        let msg = inner.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        // "missing field `name`" is reported at the parent; name the field itself.
        if let Some(name) = msg.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
            let field = if at_root { name.to_string() } else { format!("{path}.{name}") };
            return ApiError::field(field, "is required");
        }
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::field("(body)", format!("malformed JSON: {msg}"));
        }
        ApiError::field(if at_root { "(body)".to_string() } else { path }, msg)
    })
}

/// Query parameters, collected with every problem named before any is reported.
#[derive(Debug, Default)]
pub struct QueryCheck {
    errs: Vec<crate::error::FieldError>,
}

/// The largest page number accepted; beyond it the offset would mean nothing useful.
const MAX_PAGE: i64 = 1_000_000;
/// The seed's default and largest page sizes.
const DEFAULT_PAGE_SIZE: i64 = 20;
const MAX_PAGE_SIZE: i64 = 100;

impl QueryCheck {
    fn int(&mut self, name: &str, raw: Option<&str>, default: i64, max: i64) -> i64 {
        match raw {
            None => default,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    self.errs
                        .push(crate::error::FieldError::new(name, format!("must be an integer between 1 and {max}")));
                    default
                }
            },
        }
    }

    /// `page` (≥ 1, default 1) and `page_size` (1–100, default 20).
    pub fn page(&mut self, page: Option<&str>, page_size: Option<&str>) -> Page {
        Page {
            page: self.int("page", page, 1, MAX_PAGE),
            size: self.int("page_size", page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
        }
    }

    /// An optional value parsed by `parse`; empty counts as absent.
    pub fn parse<T, E: std::fmt::Display>(
        &mut self,
        name: &str,
        raw: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        match raw.filter(|s| !s.is_empty()) {
            None => None,
            Some(v) => match parse(v) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.errs.push(crate::error::FieldError::new(name, e.to_string()));
                    None
                }
            },
        }
    }

    /// An optional value that must be one of `allowed`.
    pub fn one_of(&mut self, name: &str, raw: Option<&str>, allowed: &[&str]) -> Option<String> {
        self.parse(name, raw, |v| {
            if allowed.contains(&v) {
                Ok(v.to_owned())
            } else {
                let (last, rest) = allowed.split_last().unwrap_or((&"", &[]));
                Err(if rest.is_empty() {
                    format!("must be {last}")
                } else {
                    format!("must be {} or {last}", rest.join(", "))
                })
            }
        })
    }

    /// An optional UUID.
    pub fn uuid(&mut self, name: &str, raw: Option<&str>) -> Option<uuid::Uuid> {
        self.parse(name, raw, |v| uuid::Uuid::parse_str(v).map_err(|_| "must be a UUID"))
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.errs.is_empty() {
            Ok(())
        } else {
            Err(ApiError::BadRequest { error: "Invalid query parameters".into(), fields: self.errs })
        }
    }
}

/// One page of a list.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub page: i64,
    pub size: i64,
}

impl Page {
    pub fn offset(&self) -> i64 {
        (self.page - 1) * self.size
    }

    /// The seed's Pagination object.
    pub fn json(&self, total: i64) -> serde_json::Value {
        serde_json::json!({ "page": self.page, "page_size": self.size, "total": total, "total_pages": (total + self.size - 1) / self.size })
    }
}

/// A path id that must be a UUID.
pub fn path_id(raw: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| ApiError::BadRequest {
        error: format!("Invalid {what} ID"),
        fields: vec![crate::error::FieldError::new("id", "must be a UUID")],
    })
}

/// The client's IP address, when the server knows it (not under `oneshot` in tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())))
    }
}

/// Query parameters deserialized into `T`. Unlike `axum::extract::Query`, a malformed query
/// (a repeated parameter, bad percent-encoding) is the API's JSON 400, not a text/plain one.
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(t)) => Ok(Query(t)),
            Err(e) => Err(ApiError::BadRequest {
                error: "Invalid query parameters".into(),
                fields: vec![crate::error::FieldError::new(
                    "(query)",
                    e.body_text().trim_start_matches("Failed to deserialize query string: ").to_owned(),
                )],
            }),
        }
    }
}
