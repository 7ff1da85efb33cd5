//! The server's configuration: command-line flags with environment-variable fallbacks.

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the server listens unless told otherwise (cargo-leptos passes `LEPTOS_SITE_ADDR`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:3000";
/// Default folder for the database and the downloaded default model.
pub const DEFAULT_DATA_DIR: &str = "data";
/// Default log filter.
pub const DEFAULT_LOG_FILTER: &str = "server=info,engine=info,tower_http=info";
/// Default upper bound on prompt length, in tokens.
pub const DEFAULT_MAX_INPUT_TOKENS: usize = 2048;
/// Default upper bound on `max_new_tokens`.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 512;
/// Default upper bound on a request body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Loopback and the private ranges (RFC 1918, IPv6 unique local): where a reverse proxy in front usually is.
pub const DEFAULT_TRUSTED_PROXIES: &str = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7";

/// Default timeout of a non-streaming request, in seconds.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 600;
/// Default bound on requests waiting or running in the engine.
pub const DEFAULT_MAX_QUEUE: usize = engine::config::DEFAULT_MAX_QUEUE;

/// `loraland serve`: the web app and the API.
#[derive(Args, Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "LORALAND_ADDR")]
    pub addr: Option<SocketAddr>,

    /// Folder for the default SQLite database and the downloaded default model.
    #[arg(long, env = "LORALAND_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Database URL: `sqlite://<file>` (one process), or `postgres://<user>:<password>@<host>/<database>`, which
    /// any number of replicas share [default: sqlite://<data-dir>/loraland.db].
    #[arg(long, env = "LORALAND_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Base model: a GGUF file or a Hugging Face model folder. Without it, the embedded default
    /// (SmolLM2-135M-Instruct) is used, fetched into <data-dir>/models on first start.
    #[arg(long, env = "LORALAND_MODEL")]
    pub model: Option<PathBuf>,

    /// GGUF quantization handling: keep the file's, requantize Q4 to Q8_0 (faster on CPU), or dequantize.
    #[arg(long, env = "LORALAND_QUANT", value_enum, default_value = "q8")]
    pub quant: crate::args::QuantArg,

    /// Device and dtype.
    #[command(flatten)]
    pub device: crate::args::DeviceArgs,

    /// Folder of local LoRA adapters (one PEFT folder per adapter id).
    #[arg(long, env = "LORALAND_ADAPTERS_DIR", default_value = "adapters")]
    pub adapters_dir: PathBuf,

    /// Longest prompt accepted, in tokens.
    #[arg(long, env = "LORALAND_MAX_INPUT_TOKENS", default_value_t = DEFAULT_MAX_INPUT_TOKENS)]
    pub max_input_tokens: usize,

    /// Largest `max_new_tokens` accepted.
    #[arg(long, env = "LORALAND_MAX_NEW_TOKENS", default_value_t = DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "LORALAND_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Most requests waiting or running; beyond it requests get 429 with Retry-After.
    #[arg(long, env = "LORALAND_MAX_QUEUE", default_value_t = DEFAULT_MAX_QUEUE)]
    pub max_queue: usize,

    /// Most tokens in one engine step (decode rows plus prompt chunks): a long prompt is prefilled in chunks of
    /// this size between the running streams' tokens [default: 64 on the CPU, 512 on a GPU].
    #[arg(long, env = "LORALAND_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<std::num::NonZeroUsize>,

    /// Seconds a non-streaming request may take before it is answered 408 (streams are never cut).
    #[arg(long, env = "LORALAND_REQUEST_TIMEOUT", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout: u64,

    /// Seconds a request may wait for its adapter to load (a hub download included) before it fails.
    #[arg(long, env = "LORALAND_ADAPTER_LOAD_TIMEOUT", default_value_t = engine::config::DEFAULT_ADAPTER_LOAD_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub adapter_load_timeout: u64,

    /// Seconds without a heartbeat from the engine's batching loop after which /health answers 503 (stalled).
    #[arg(long, env = "LORALAND_STALL_AFTER", default_value_t = engine::config::DEFAULT_STALL_AFTER.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_after: u64,

    /// Origins allowed to call the API from a browser (CORS), comma-separated; `*` for any. Off when empty.
    #[arg(long, env = "LORALAND_CORS_ALLOW_ORIGIN", value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,

    /// Let adapter ids of the form owner/name that are not local be downloaded from the Hugging Face hub
    /// (honours HF_HOME, HF_ENDPOINT, HF_TOKEN).
    #[arg(long, env = "LORALAND_ALLOW_HUB")]
    pub allow_hub: bool,

    /// Largest adapter file downloaded from the hub, in bytes (checked from the hub's metadata first).
    #[arg(long, env = "LORALAND_HUB_MAX_ADAPTER_BYTES", default_value_t = engine::registry::HubLimits::default().max_bytes)]
    pub hub_max_adapter_bytes: u64,

    /// Seconds a hub download may take.
    #[arg(long, env = "LORALAND_HUB_TIMEOUT", default_value_t = engine::registry::HubLimits::default().timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub hub_timeout: u64,

    /// Generation requests a minute one client address may make (API requests and web runs); 0 turns it off.
    #[arg(long, env = "LORALAND_CLIENT_REQUESTS_PER_MINUTE", default_value_t = app::limits::DEFAULT_REQUESTS_PER_MINUTE)]
    pub client_requests_per_minute: u32,

    /// Generations one client address may have running at once; 0 turns it off.
    #[arg(long, env = "LORALAND_CLIENT_CONCURRENCY", default_value_t = app::limits::DEFAULT_CONCURRENT_PER_CLIENT)]
    pub client_concurrency: usize,

    /// Panes one visitor session may have generating at once; 0 turns it off.
    #[arg(long, env = "LORALAND_SESSION_CONCURRENCY", default_value_t = app::limits::DEFAULT_CONCURRENT_PER_SESSION)]
    pub session_concurrency: usize,

    /// Take the client's address from the last entry of X-Forwarded-For, the one the reverse proxy in front
    /// appends (nginx's `$proxy_add_x_forwarded_for`), when the request comes from one of `--trusted-proxies`;
    /// otherwise the peer's address is the client's. Per-client limits are kept per address.
    #[arg(long, env = "LORALAND_TRUST_PROXY")]
    pub trust_proxy: bool,

    /// The peers whose X-Forwarded-For `--trust-proxy` believes, as address ranges (CIDR); a request from any other
    /// peer is that peer's, whatever it sends. By default loopback and the private ranges, where a reverse proxy
    /// in front of the replicas sits.
    #[arg(long, env = "LORALAND_TRUSTED_PROXIES", value_delimiter = ',', default_value = DEFAULT_TRUSTED_PROXIES)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Training jobs (the web app's Train page) trained at once; 0 turns training off.
    #[arg(long, env = "LORALAND_TRAIN_WORKERS", default_value_t = 1)]
    pub train_workers: usize,

    /// Compute threads the training jobs share [default: half the cores, at least one].
    #[arg(long, env = "LORALAND_TRAIN_THREADS", value_parser = clap::value_parser!(u64).range(1..))]
    pub train_threads: Option<u64>,

    /// Largest training upload, in bytes.
    #[arg(long, env = "LORALAND_TRAIN_MAX_UPLOAD_BYTES", default_value_t = app::train::worker::TrainSettings::default().max_upload_bytes)]
    pub train_max_upload_bytes: usize,

    /// Most examples in a training upload.
    #[arg(long, env = "LORALAND_TRAIN_MAX_EXAMPLES", default_value_t = app::train::worker::TrainSettings::default().max_examples)]
    pub train_max_examples: usize,

    /// Most optimizer steps a training job may ask for.
    #[arg(long, env = "LORALAND_TRAIN_MAX_STEPS", default_value_t = app::train::worker::TrainSettings::default().max_steps)]
    pub train_max_steps: usize,

    /// Training jobs one visitor session may have queued or running.
    #[arg(long, env = "LORALAND_TRAIN_JOBS_PER_SESSION", default_value_t = app::train::worker::TrainSettings::default().jobs_per_session)]
    pub train_jobs_per_session: usize,

    /// Training jobs one visitor session may keep in all (finished ones hold an adapter on disk).
    #[arg(long, env = "LORALAND_TRAIN_KEPT_PER_SESSION", default_value_t = app::train::worker::TrainSettings::default().kept_per_session)]
    pub train_kept_per_session: usize,

    /// Training jobs queued on the whole server; past it, new jobs are refused until the queue shortens.
    #[arg(long, env = "LORALAND_TRAIN_MAX_QUEUED", default_value_t = app::train::worker::TrainSettings::default().max_queued)]
    pub train_max_queued: usize,

    /// Panic the engine thread at this step, to test what the server does when its engine fails (tests only).
    #[arg(long, env = "LORALAND_INJECT_PANIC_AT_STEP", hide = true)]
    pub inject_panic_at_step: Option<u64>,

    /// Sleep this many milliseconds in every engine step, a slow model for tests (tests only).
    #[arg(long, env = "LORALAND_INJECT_STEP_DELAY_MS", hide = true)]
    pub inject_step_delay_ms: Option<u64>,

    /// Sleep this many milliseconds after every training step, a slow trainer for tests (tests only).
    #[arg(long, env = "LORALAND_INJECT_TRAIN_STEP_DELAY_MS", hide = true)]
    pub inject_train_step_delay_ms: Option<u64>,

    /// Folder of the built site (the WASM bundle and CSS under pkg/).
    #[arg(long, env = "LEPTOS_SITE_ROOT", default_value = "target/site")]
    pub site_root: PathBuf,

    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "RUST_LOG", default_value = DEFAULT_LOG_FILTER)]
    pub log: String,
}

impl ServeConfig {
    /// The address to listen on: `--addr`, else cargo-leptos' `LEPTOS_SITE_ADDR`, else [`DEFAULT_ADDR`].
    pub fn listen_addr(&self) -> SocketAddr {
        self.addr
            .or_else(|| std::env::var("LEPTOS_SITE_ADDR").ok().and_then(|a| a.parse().ok()))
            .unwrap_or_else(|| DEFAULT_ADDR.parse().expect("DEFAULT_ADDR is a valid address"))
    }

    /// The HTTP options of the API routes.
    pub fn http_options(&self) -> HttpOptions {
        HttpOptions {
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_secs(self.request_timeout),
            cors_allow_origins: self.cors_allow_origin.clone(),
            trust_proxy: self.trust_proxy,
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }

    /// The engine's configuration; fails when `--device` names no usable device.
    pub fn engine_config(&self, model: PathBuf) -> anyhow::Result<engine::EngineConfig> {
        let mut cfg = engine::EngineConfig::new(model);
        cfg.load = self.device.load_options(self.quant.into())?;
        cfg.catalog = engine::Catalog {
            adapters_dir: Some(self.adapters_dir.clone()),
            namespaces: [(app::train::TRAINED_PREFIX.to_string(), self.trained_dir())].into(),
            allow_hub: self.allow_hub,
            ..Default::default()
        };
        cfg.hub = engine::registry::HubLimits {
            max_bytes: self.hub_max_adapter_bytes,
            timeout: Duration::from_secs(self.hub_timeout),
        };
        cfg.max_queue = self.max_queue;
        cfg.max_batch_tokens = self.max_batch_tokens.map(std::num::NonZeroUsize::get);
        cfg.max_input_tokens = self.max_input_tokens;
        cfg.max_new_tokens = self.max_new_tokens;
        cfg.adapter_load_timeout = Duration::from_secs(self.adapter_load_timeout);
        cfg.stall_after = Duration::from_secs(self.stall_after);
        cfg.faults.panic_at_step = self.inject_panic_at_step;
        cfg.faults.step_delay = self.inject_step_delay_ms.map(Duration::from_millis);
        Ok(cfg)
    }

    /// The per-client limits.
    pub fn limits(&self) -> app::limits::LimitSettings {
        app::limits::LimitSettings {
            requests_per_minute: self.client_requests_per_minute,
            concurrent_per_client: self.client_concurrency,
            concurrent_per_session: self.session_concurrency,
        }
    }

    /// Where the web app's trained adapters are kept: `<data-dir>/trained/<job>`, served as `trained/<job>`.
    pub fn trained_dir(&self) -> PathBuf {
        self.data_dir.join(app::train::TRAINED_PREFIX)
    }

    /// Training's settings, or `None` with `--train-workers 0`. An upload limit the body limit would cut off
    /// first is refused (the form would get a bare 413 instead of the upload's own error).
    pub fn train_settings(&self) -> anyhow::Result<Option<app::train::worker::TrainSettings>> {
        /// Room in the body for the form's other fields and the multipart boundaries.
        const FORM_FIELDS: usize = 16 << 10;
        if self.train_workers > 0 && self.train_max_upload_bytes + FORM_FIELDS > self.max_body_bytes {
            anyhow::bail!(
                "--train-max-upload-bytes {} does not fit in --max-body-bytes {} (the form needs {} more bytes for \
                 its other fields): raise --max-body-bytes or lower the upload limit",
                self.train_max_upload_bytes,
                self.max_body_bytes,
                FORM_FIELDS
            );
        }
        let defaults = app::train::worker::TrainSettings::default();
        Ok((self.train_workers > 0).then(|| app::train::worker::TrainSettings {
            workers: self.train_workers,
            threads: self.train_threads.map_or(defaults.threads, |t| t as usize),
            max_upload_bytes: self.train_max_upload_bytes,
            max_examples: self.train_max_examples,
            max_steps: self.train_max_steps,
            jobs_per_session: self.train_jobs_per_session,
            kept_per_session: self.train_kept_per_session,
            max_queued: self.train_max_queued,
            step_delay: self.inject_train_step_delay_ms.map(Duration::from_millis),
            ..defaults
        }))
    }

    /// The database URL: `--database-url`, else a file in the data folder.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("loraland.db").display()))
    }
}

/// How the API routes treat requests.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Largest request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Time allowed to produce a response's headers (408 after).
    pub request_timeout: Duration,
    /// CORS origins; empty turns CORS off.
    pub cors_allow_origins: Vec<String>,
    /// Whether the client's address comes from X-Forwarded-For.
    pub trust_proxy: bool,
    /// The peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: Duration::from_secs(DEFAULT_REQUEST_TIMEOUT_SECS),
            cors_allow_origins: Vec::new(),
            trust_proxy: false,
            trusted_proxies: DEFAULT_TRUSTED_PROXIES.split(',').map(|n| n.parse().expect("a valid range")).collect(),
        }
    }
}
