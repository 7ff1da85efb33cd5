//! API errors: one [`ApiError`] with a kind, a message naming what was wrong and the offending field, rendered in
//! the shape of the API that was called: LoRAX `{"error", "error_type"}` or OpenAI `{"error": {"message", "type",
//! "param", "code"}}`. 5xx bodies are generic; their cause is logged here, at the boundary.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Seconds a client is told to wait after a 429 or 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Which API's error shape to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// LoRAX / TGI: `{"error": "...", "error_type": "..."}`.
    Lorax,
    /// OpenAI: `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
}

/// What kind of failure, which decides the status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed JSON, an invalid adapter id: 400.
    BadRequest,
    /// A field out of range or of the wrong type: 422 on LoRAX routes, 400 on OpenAI routes.
    Validation,
    /// The prompt is longer than the limit: 422.
    PromptTooLong,
    /// Unknown adapter or model: 404.
    NotFound,
    /// Body over the size limit: 413.
    PayloadTooLarge,
    /// Body not sent as JSON: 415.
    UnsupportedMediaType,
    /// The queue is full: 429 with Retry-After.
    Overloaded,
    /// The client went over one of its limits (rate, concurrent generations): 429 with Retry-After.
    RateLimited,
    /// The model is still loading or the engine stopped: 503 with Retry-After.
    NotReady,
    /// The adapter could not be loaded or fetched: 424 (the request was fine, its adapter is not).
    AdapterLoad,
    /// The request took longer than the server's timeout: 408.
    Timeout,
    /// Anything else: 500, generic message.
    Internal,
}

impl ErrorKind {
    /// The HTTP status for this kind on the given API.
    pub fn status(self, flavor: Flavor) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Validation if flavor == Flavor::OpenAi => StatusCode::BAD_REQUEST,
            Self::Validation | Self::PromptTooLong => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Overloaded | Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Self::AdapterLoad => StatusCode::FAILED_DEPENDENCY,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// LoRAX's `error_type` (the values lorax-client maps to its exception classes where one exists).
    pub fn lorax_type(self) -> &'static str {
        match self {
            Self::BadRequest | Self::Validation | Self::PromptTooLong => "validation",
            Self::NotFound => "not_found",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Overloaded => "overloaded",
            Self::RateLimited => "rate_limited",
            Self::NotReady => "not_ready",
            Self::AdapterLoad => "adapter_load",
            Self::Timeout => "timeout",
            Self::Internal => "generation",
        }
    }

    /// OpenAI's `type` and `code`.
    fn openai_type_and_code(self) -> (&'static str, &'static str) {
        match self {
            Self::BadRequest => ("invalid_request_error", "invalid_request"),
            Self::Validation => ("invalid_request_error", "invalid_value"),
            Self::PromptTooLong => ("invalid_request_error", "context_length_exceeded"),
            Self::NotFound => ("invalid_request_error", "model_not_found"),
            Self::PayloadTooLarge => ("invalid_request_error", "payload_too_large"),
            Self::UnsupportedMediaType => ("invalid_request_error", "unsupported_media_type"),
            Self::Overloaded => ("rate_limit_error", "overloaded"),
            Self::RateLimited => ("rate_limit_error", "rate_limit_exceeded"),
            Self::NotReady => ("server_error", "model_not_ready"),
            Self::AdapterLoad => ("server_error", "adapter_load_failed"),
            Self::Timeout => ("server_error", "timeout"),
            Self::Internal => ("server_error", "internal_error"),
        }
    }
}

/// An API failure.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// The kind.
    pub kind: ErrorKind,
    /// What was wrong, for the client.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// Seconds to wait before retrying, when it is not the default.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A failure of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), param: None, retry_after: None }
    }

    /// A field that is out of range or not allowed; the message starts with the field's name.
    pub fn invalid(param: &str, reason: impl std::fmt::Display) -> Self {
        let message = format!("`{param}` {reason}");
        Self { kind: ErrorKind::Validation, message, param: Some(param.to_string()), retry_after: None }
    }

    /// A field asking for something this server does not implement.
    pub fn unsupported(param: &str, what: &str) -> Self {
        Self::invalid(param, format!("is not supported by this server: {what}"))
    }

    /// An internal failure: logged in full, answered generically.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {cause}");
        Self::new(ErrorKind::Internal, "internal error while generating; see the server log")
    }

    /// Sets the field at fault.
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    /// The status code on `flavor`'s routes.
    pub fn status(&self, flavor: Flavor) -> StatusCode {
        self.kind.status(flavor)
    }

    /// The JSON body in `flavor`'s shape (also the data of a final SSE error event).
    pub fn body(&self, flavor: Flavor) -> serde_json::Value {
        match flavor {
            Flavor::Lorax => json!({ "error": self.message, "error_type": self.kind.lorax_type() }),
            Flavor::OpenAi => {
                let (kind, code) = self.kind.openai_type_and_code();
                json!({ "error": { "message": self.message, "type": kind, "param": self.param, "code": code } })
            }
        }
    }

    /// The response on `flavor`'s routes.
    pub fn into_response_as(self, flavor: Flavor) -> Response {
        let mut res = (self.status(flavor), axum::Json(self.body(flavor))).into_response();
        if matches!(self.kind, ErrorKind::Overloaded | ErrorKind::NotReady | ErrorKind::RateLimited) {
            let secs = self.retry_after.unwrap_or(RETRY_AFTER_SECS);
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

impl From<app::limits::LimitError> for ApiError {
    fn from(e: app::limits::LimitError) -> Self {
        let retry_after = Some(e.retry_after_secs());
        Self { retry_after, ..Self::new(ErrorKind::RateLimited, e.to_string()) }
    }
}

impl From<engine::Error> for ApiError {
    fn from(e: engine::Error) -> Self {
        use engine::Error as E;
        let kind = match &e {
            E::Overloaded { .. } => ErrorKind::Overloaded,
            E::PromptTooLong { .. } => ErrorKind::PromptTooLong,
            E::MaxNewTokens { .. } | E::EmptyPrompt | E::TokenOutOfRange { .. } | E::SequenceTooLong { .. } => {
                ErrorKind::Validation
            }
            E::UnknownAdapter(_) => ErrorKind::NotFound,
            E::InvalidAdapterId(_) => ErrorKind::BadRequest,
            E::AdapterLoad { .. } | E::AdapterFetch { .. } | E::RankLimit { .. } | E::AdapterTooLarge { .. } => {
                ErrorKind::AdapterLoad
            }
            E::EngineStopped | E::AdapterLoadTimeout { .. } => ErrorKind::NotReady,
            E::Template(_) => ErrorKind::Validation,
            _ => return Self::internal(&e),
        };
        let message = match &e {
            E::UnknownAdapter(id) => format!("adapter `{id}` not found"),
            _ => e.to_string(),
        };
        Self::new(kind, message)
    }
}

/// An [`ApiError`] answered in LoRAX's shape.
#[derive(Debug)]
pub struct LoraxError(pub ApiError);

/// An [`ApiError`] answered in OpenAI's shape.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl<E: Into<ApiError>> From<E> for LoraxError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl<E: Into<ApiError>> From<E> for OpenAiError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for LoraxError {
    fn into_response(self) -> Response {
        self.0.into_response_as(Flavor::Lorax)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        self.0.into_response_as(Flavor::OpenAi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_statuses_follow_the_api() {
        let e = ApiError::invalid("parameters.temperature", "must be >= 0, got -1");
        assert_eq!(e.status(Flavor::Lorax), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.status(Flavor::OpenAi), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body(Flavor::Lorax),
            json!({"error": "`parameters.temperature` must be >= 0, got -1", "error_type": "validation"})
        );
        let body = e.body(Flavor::OpenAi);
        assert_eq!(body["error"]["param"], "parameters.temperature");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn engine_errors_map_to_statuses() {
        let overloaded = ApiError::from(engine::Error::Overloaded { waiting: 3 });
        let res = overloaded.into_response_as(Flavor::Lorax);
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        let long = ApiError::from(engine::Error::PromptTooLong { len: 10, max: 4 });
        assert_eq!(long.status(Flavor::OpenAi), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(long.message.contains("limit of 4"), "{}", long.message);
        let id = engine::AdapterId::new("nope").unwrap();
        let missing = ApiError::from(engine::Error::UnknownAdapter(id));
        assert_eq!(missing.status(Flavor::Lorax), StatusCode::NOT_FOUND);
        assert_eq!(missing.message, "adapter `nope` not found");
        let internal = ApiError::from(engine::Error::Generation("secret detail".into()));
        assert_eq!(internal.status(Flavor::OpenAi), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!internal.message.contains("secret"));
    }
}
