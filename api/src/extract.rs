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
