//! OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::engine::SubmitError;

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let kind = if status.is_server_error() { "server_error" } else { "invalid_request_error" };
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn param(mut self, p: impl Into<String>) -> ApiError {
        self.param = Some(p.into());
        self
    }

    pub fn code(mut self, c: &'static str) -> ApiError {
        self.code = Some(c);
        self
    }

    pub fn model_not_found(name: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("The model `{name}` does not exist."))
            .param("model")
            .code("model_not_found")
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> ApiError {
        let msg = e.to_string();
        match e {
            SubmitError::InvalidParam { param, .. } => ApiError::bad_request(msg).param(param),
            SubmitError::ContextLength(_) => {
                ApiError::bad_request(msg).param("messages").code("context_length_exceeded")
            }
            SubmitError::Overloaded(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).code("overloaded"),
            SubmitError::ShuttingDown => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).code("shutting_down"),
            SubmitError::EngineGone(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).code("engine_unavailable"),
        }
    }
}
