//! Library side of the OpenAI-compatible server (`examples/serve.rs`): routes, request and
//! response shapes, errors, chat templates and the reasoning parser. Feature `server` (default).
//!
//! - [`routes`]: the axum router and [`routes::serve`];
//! - [`openai`]: request bodies and their sampling parameters;
//! - [`error`]: OpenAI-style error JSON with HTTP statuses;
//! - [`chat_template`]: `tokenizer_config.json` chat templates via minijinja;
//! - [`reasoning`]: `--reasoning-parser deepseek-r1`;
//! - [`launch`]: checks of SGLang launch flags this build cannot honour yet;
//! - [`state`]: what the handlers share;
//! - [`client`]: the blocking HTTP/SSE client of the benchmark examples.

pub mod app;
pub mod chat_template;
pub mod client;
pub mod error;
pub mod launch;
pub mod openai;
pub mod reasoning;
pub mod routes;
pub mod state;

pub use app::{build_cpu_state, build_state, build_state_for};
pub use routes::{router, serve};
pub use state::{AppState, ServerConfig, ServerState};
