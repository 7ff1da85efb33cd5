//! Prometheus metrics through the `metrics` facade and its Prometheus exporter: HTTP requests by route, status and
//! adapter; generation counts, tokens, time to first token, queue time and duration by adapter; and, read at each
//! scrape, the engine's gauges (running, waiting, batch size, KV tokens, adapter cache). Beside ours, the metrics
//! of the Gateway API Inference Extension's model-server protocol under vLLM's names, which its endpoint picker
//! reads by default: `vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` (and
//! its older name `vllm:gpu_cache_usage_perc`), a fraction from 0 to 1, and `vllm:lora_requests_info` (see
//! [`lora_info`]).

use engine::{EngineHandle, EngineStats, Finished};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Histogram buckets for latencies, in seconds.
const SECONDS_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static LOG_DROPS: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Reports the log lines that the process's non-blocking log writer dropped (its reader fell behind) as
/// `loraland_log_lines_dropped_total`.
pub fn count_dropped_log_lines(dropped: tracing_appender::non_blocking::ErrorCounter) {
    let _ = LOG_DROPS.set(dropped);
}

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
    if let Some(dropped) = LOG_DROPS.get() {
        counter!("loraland_log_lines_dropped_total").absolute(dropped.dropped_lines() as u64);
    }
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
    let mut text = handle.render();
    if let Some(engine) = engine {
        text.push_str(&inference_extension(engine, now_seconds()));
    }
    text
}

/// The model-server protocol's metrics, read from `engine` now. Written by hand rather than through the
/// process-wide recorder: they are this engine's values at this scrape, and `vllm:lora_requests_info`'s labels
/// change at each one (a recorder would keep every old set).
pub fn inference_extension(engine: &EngineHandle, now: f64) -> String {
    let s = engine.stats();
    let model = escape(&engine.model_info().name);
    let kv = EngineStats::get(&s.kv_tokens) as f64 / engine.config().max_kv_tokens.max(1) as f64;
    let mut out = String::new();
    for (name, help, value) in [
        (
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            EngineStats::get(&s.waiting) as f64,
        ),
        ("vllm:num_requests_running", "Number of requests in the running batch.", EngineStats::get(&s.running) as f64),
        ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv),
        ("vllm:gpu_cache_usage_perc", "KV-cache usage (the older name). 1 means 100 percent usage.", kv),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{model_name=\"{model}\"}} {value}\n"));
    }
    out + &lora_info(&s.adapter_activity(), now)
}

/// `vllm:lora_requests_info`, as vLLM writes it and the inference extension's LoRA affinity reads it: one sample
/// whose labels are the adapters resident (`running_lora_adapters`: they serve a request without a load), those
/// that waiting requests need (`waiting_lora_adapters`), comma-separated, and the most that can be resident
/// (`max_lora`); its value is when it was written (Unix seconds), so that the picker takes the newest.
pub fn lora_info(a: &engine::AdapterActivity, now: f64) -> String {
    format!(
        "# HELP vllm:lora_requests_info Running stats on LoRA requests.\n\
         # TYPE vllm:lora_requests_info gauge\n\
         vllm:lora_requests_info{{max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"}} {now}\n",
        a.max_resident,
        escape(&a.resident.join(",")),
        escape(&a.waited_for.join(",")),
    )
}

/// A Prometheus label value.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// This process's resident memory (Linux: `VmRSS` of /proc/self/status).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_info_is_one_sample_with_the_protocols_labels() {
        let a = engine::AdapterActivity {
            resident: vec!["glue_sst2".into(), "qv_r8".into()],
            waited_for: vec!["we\"ird".into()],
            max_resident: 8,
        };
        let text = lora_info(&a, 1700000000.5);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                r#"vllm:lora_requests_info{max_lora="8",running_lora_adapters="glue_sst2,qv_r8",waiting_lora_adapters="we\"ird"} 1700000000.5"#
            ]
        );
        assert!(text.contains("# TYPE vllm:lora_requests_info gauge\n"));
    }

    /// A writer that takes nothing: its first write waits for ever, like a pipe nobody reads.
    struct Stalled;

    impl std::io::Write for Stalled {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            std::thread::park();
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Lines the log writer drops while its reader is stalled are counted on /metrics, and writing them does not
    /// wait.
    #[test]
    fn dropped_log_lines_are_counted() {
        use std::io::Write;
        let (mut writer, _guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(2)
            .finish(Stalled);
        count_dropped_log_lines(writer.error_counter());
        for _ in 0..10 {
            writer.write_all(b"a line\n").unwrap();
        }
        let dropped: u64 = render(None)
            .lines()
            .find_map(|l| l.strip_prefix("loraland_log_lines_dropped_total ")?.parse().ok())
            .expect("the counter is rendered");
        assert!((7..=9).contains(&dropped), "{dropped} of 10 lines dropped with room for 2 (and 1 taken)");
    }
}
