//! The command-line argument types that serving and the lab tools share: `--device` and `--dtype` (where the model
//! runs and in which activation dtype) and `--quant` (what happens to a GGUF's quantized weights).

use clap::{Args, ValueEnum};
use engine::{LoadOptions, QuantMode};

/// Handling of GGUF quantized weights.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum QuantArg {
    /// Keep the file's quantization.
    Keep,
    /// Requantize Q4_0/Q4_1 to Q8_0 (faster on CPU).
    Q8,
    /// Dequantize to the activation dtype.
    Dequantize,
}

impl From<QuantArg> for QuantMode {
    fn from(q: QuantArg) -> Self {
        match q {
            QuantArg::Keep => QuantMode::Keep,
            QuantArg::Q8 => QuantMode::Q8,
            QuantArg::Dequantize => QuantMode::Dequantize,
        }
    }
}

/// Activation dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// 32-bit float (the CPU default).
    F32,
    /// bfloat16 (the GPU default).
    Bf16,
    /// float16.
    F16,
}

impl From<DTypeArg> for candle_core::DType {
    fn from(d: DTypeArg) -> Self {
        match d {
            DTypeArg::F32 => candle_core::DType::F32,
            DTypeArg::Bf16 => candle_core::DType::BF16,
            DTypeArg::F16 => candle_core::DType::F16,
        }
    }
}

/// Where the model runs.
#[derive(Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Device: `cpu`, `cuda` or `cuda:N` (the GPU needs a build with `--features cuda`).
    #[arg(long, env = "LORALAND_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Activation dtype [default: f32 on the CPU, bf16 on a GPU].
    #[arg(long, env = "LORALAND_DTYPE", value_enum)]
    pub dtype: Option<DTypeArg>,
}

impl Default for DeviceArgs {
    fn default() -> Self {
        Self { device: "cpu".into(), dtype: None }
    }
}

impl DeviceArgs {
    /// The device named by `--device`.
    pub fn device(&self) -> anyhow::Result<candle_core::Device> {
        parse_device(&self.device)
    }

    /// Load options for this device and dtype.
    pub fn load_options(&self, quant: QuantMode) -> anyhow::Result<LoadOptions> {
        let device = self.device()?;
        let dtype = match self.dtype {
            Some(d) => d.into(),
            None if device.is_cpu() => candle_core::DType::F32,
            None => candle_core::DType::BF16,
        };
        Ok(LoadOptions { device, dtype, quant })
    }
}

/// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn parse_device(spec: &str) -> anyhow::Result<candle_core::Device> {
    let ordinal = match spec {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" => 0,
        _ => match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => anyhow::bail!("--device {spec:?}: expected cpu, cuda or cuda:N"),
        },
    };
    if !cfg!(feature = "cuda") {
        anyhow::bail!("--device {spec}: this loraland was built without CUDA; rebuild with `--features cuda`");
    }
    candle_core::Device::new_cuda(ordinal).map_err(|e| anyhow::anyhow!("--device {spec}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_picks_dtypes() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        let err = parse_device("gpu0").unwrap_err().to_string();
        assert!(err.contains("expected cpu, cuda or cuda:N"), "{err}");
        assert!(parse_device("cuda:x").is_err());
        if !cfg!(feature = "cuda") {
            let err = parse_device("cuda:1").unwrap_err().to_string();
            assert!(err.contains("built without CUDA"), "{err}");
        }
        let cpu = DeviceArgs::default().load_options(QuantMode::Q8).unwrap();
        assert_eq!((cpu.dtype, cpu.quant), (candle_core::DType::F32, QuantMode::Q8));
        let bf16 = DeviceArgs { dtype: Some(DTypeArg::Bf16), ..Default::default() };
        assert_eq!(bf16.load_options(QuantMode::Keep).unwrap().dtype, candle_core::DType::BF16);
    }
}
