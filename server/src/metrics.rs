//! Prometheus metrics through the `metrics` facade and its Prometheus exporter: HTTP requests by route, status and
//! adapter; generation counts, tokens, time to first token, queue time and duration by adapter; and, read at each
//! scrape, the engine's gauges (running, waiting, batch size, KV tokens, adapter cache).

use engine::{EngineHandle, EngineStats, Finished};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Histogram buckets for latencies, in seconds.
const SECONDS_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle). `None` if another recorder was
/// installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("seconds".into()), SECONDS_BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!("metrics recorder not installed: {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// One finished HTTP request.
pub fn observe_http(route: &str, status: u16, adapter: &str, elapsed: Duration) {
    let labels = [("route", route.to_string()), ("status", status.to_string()), ("adapter", adapter.to_string())];
    counter!("loraland_http_requests_total", &labels).increment(1);
    histogram!("loraland_http_request_duration_seconds", "route" => route.to_string()).record(elapsed.as_secs_f64());
}

/// One finished generation.
pub fn observe_generation(adapter: &str, f: &Finished) {
    let a = adapter.to_string();
    let reason = f.reason.as_str();
    counter!("loraland_generations_total", "adapter" => a.clone(), "finish_reason" => reason).increment(1);
    counter!("loraland_prompt_tokens_total", "adapter" => a.clone()).increment(f.prompt_tokens as u64);
    counter!("loraland_generated_tokens_total", "adapter" => a.clone()).increment(f.generated_tokens as u64);
    let t = &f.timings;
    histogram!("loraland_time_to_first_token_seconds", "adapter" => a.clone())
        .record(t.time_to_first_token.as_secs_f64());
    histogram!("loraland_queue_time_seconds", "adapter" => a.clone()).record(t.queue.as_secs_f64());
    histogram!("loraland_generation_duration_seconds", "adapter" => a).record(t.total.as_secs_f64());
}

/// The Prometheus text, with the engine's gauges read now.
pub fn render(engine: Option<&EngineHandle>) -> String {
    let Some(handle) = install() else { return String::from("# metrics recorder unavailable\n") };
    gauge!("loraland_model_ready").set(if engine.is_some() { 1.0 } else { 0.0 });
    if let Some(bytes) = resident_memory_bytes() {
        gauge!("loraland_process_resident_memory_bytes").set(bytes as f64);
    }
    if let Some(engine) = engine {
        let s = engine.stats();
        let g = |v: &std::sync::atomic::AtomicU64| EngineStats::get(v) as f64;
        gauge!("loraland_engine_running_requests").set(g(&s.running));
        gauge!("loraland_engine_waiting_requests").set(g(&s.waiting));
        gauge!("loraland_engine_batch_size").set(g(&s.batch_size));
        gauge!("loraland_engine_kv_tokens").set(g(&s.kv_tokens));
        gauge!("loraland_adapters_resident").set(g(&s.adapters_resident));
        gauge!("loraland_adapter_last_load_seconds").set(g(&s.last_adapter_load_us) / 1e6);
        counter!("loraland_adapter_loads_total").absolute(EngineStats::get(&s.adapter_loads));
        counter!("loraland_adapter_load_failures_total").absolute(EngineStats::get(&s.adapter_load_failures));
        counter!("loraland_adapter_evictions_total").absolute(EngineStats::get(&s.adapter_evictions));
        counter!("loraland_engine_steps_total").absolute(EngineStats::get(&s.steps));
        counter!("loraland_engine_requests_total").absolute(EngineStats::get(&s.submitted));
        counter!("loraland_adapter_load_timeouts_total").absolute(EngineStats::get(&s.adapter_load_timeouts));
        gauge!("loraland_engine_heartbeat_age_seconds").set(s.liveness.age().as_secs_f64());
        gauge!("loraland_engine_up").set(if engine.health() == engine::Health::Ok { 1.0 } else { 0.0 });
    }
    handle.run_upkeep();
    handle.render()
}

/// This process's resident memory (Linux: `VmRSS` of /proc/self/status).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}
