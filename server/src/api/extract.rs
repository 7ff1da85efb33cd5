//! JSON body extractors whose rejections are API errors in the route's shape: malformed JSON and invalid UTF-8
//! are 400, a field of the wrong type names the field (422 LoRAX, 400 OpenAI), a body over the limit is 413.

use super::error::{ApiError, ErrorKind, LoraxError, OpenAiError};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// What a body over `--max-body-bytes` is answered.
pub const BODY_TOO_LARGE: &str = "request body is larger than the server's limit (--max-body-bytes)";

/// A JSON body on a LoRAX route.
#[derive(Debug)]
pub struct LoraxJson<T>(pub T);

/// A JSON body on an OpenAI route.
#[derive(Debug)]
pub struct OpenAiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for LoraxJson<T> {
    type Rejection = LoraxError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parse(req, state).await?))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OpenAiJson<T> {
    type Rejection = OpenAiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parse(req, state).await?))
    }
}

async fn parse<S: Send + Sync, T: DeserializeOwned>(req: Request, state: &S) -> Result<T, ApiError> {
    match axum::Json::<T>::from_request(req, state).await {
        Ok(axum::Json(v)) => Ok(v),
        Err(rejection) => Err(rejection_error(&rejection)),
    }
}

/// The API error for a JSON rejection.
pub fn rejection_error(rejection: &JsonRejection) -> ApiError {
    const PREFIX: &str = "Failed to deserialize the JSON body into the target type: ";
    match rejection {
        JsonRejection::JsonDataError(e) => {
            let text = e.body_text();
            let detail = text.strip_prefix(PREFIX).unwrap_or(&text);
            // serde_path_to_error puts the field's path first: `parameters.temperature: invalid type ...`.
            match detail.split_once(": ").filter(|(path, _)| !path.contains(' ') && *path != ".") {
                Some((path, reason)) => ApiError::invalid(path, reason),
                None => ApiError::new(ErrorKind::Validation, format!("invalid request body: {detail}")),
            }
        }
        JsonRejection::JsonSyntaxError(e) => {
            let text = e.body_text();
            let detail = text.split_once(": ").map_or(text.as_str(), |(_, d)| d);
            ApiError::new(ErrorKind::BadRequest, format!("malformed JSON body: {detail}"))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorKind::UnsupportedMediaType,
            "the body must be JSON, sent with `content-type: application/json`",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(ErrorKind::PayloadTooLarge, BODY_TOO_LARGE)
        }
        other => ApiError::new(ErrorKind::BadRequest, format!("cannot read the request body: {}", other.body_text())),
    }
}
