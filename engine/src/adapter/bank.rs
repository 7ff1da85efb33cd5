//! Many adapters in one batch. The base matmul runs once for every row; the LoRA delta is added per group of rows
//! that share an adapter (segments of consecutive rows), in one of two ways:
//! - SGMV ([`super::sgmv`], after Punica and LoRAX), what the engine runs: one op over all segments at once. On CUDA,
//!   two kernel launches per module reading each segment's factors from stacks of every adapter in the bank (built
//!   with the bank); on the CPU, loops over the rows split across the worker threads (a few thousand multiply-adds
//!   per row and module) reading each adapter's own factors, so a bank is only a list and building one after an
//!   adapter loads or leaves copies nothing (a full restack took 10-25 ms per load with 25 SmolLM2 adapters, and the
//!   first wave of a load with cold adapters paid it for each of them).
//!   Each row's delta is computed the same way whatever else is in the step, so a sequence decodes to the same
//!   logits alone or in any batch, prompt chunks or not.
//! - Segments: each segment does two small matmuls with its own adapter's factors; kept as the reference the tests
//!   compare SGMV with. (The CPU engine used it for steps with prompt chunks until the rest of a step got fast enough
//!   that its four candle operations per segment and module were a tenth of a step with 25 adapters.)
//!
//! Rows without an adapter (the base model) get no delta, so their output is bit-for-bit the base output.

use super::plan::{LoraPlan, PlanMode};
use super::LoraAdapter;
use crate::{Module, Result};
use candle_core::{DType, Tensor};
use std::sync::Arc;

/// The adapters available to a batch, addressed by slot index.
#[derive(Debug, Default)]
pub struct AdapterBank {
    adapters: Vec<Arc<LoraAdapter>>,
    /// On a GPU: per layer, per module, the factors of all adapters side by side (see [`Stack`]); `None` on the CPU.
    stacks: Option<Vec<[Option<Stack>; 7]>>,
}

/// One module's factors of every adapter in the bank, zero-padded to the largest rank (adapters without the module
/// have zeros), each adapter's scale folded into its `B`.
#[derive(Debug)]
struct Stack {
    /// `A` stacked, `[slots, r_max, in]` (each rank row contiguous over the input features).
    a: Tensor,
    /// `(sB)^T` stacked, `[slots, r_max, out]`.
    b: Tensor,
}

impl AdapterBank {
    /// A bank holding `adapters`, in slot order.
    pub fn new(adapters: Vec<Arc<LoraAdapter>>, num_layers: usize) -> Result<Self> {
        // An engine's adapters all live on its device: the first one's factors say where.
        let first = adapters.iter().flat_map(|a| a.layers.iter().flatten().flatten()).next();
        let on_gpu = first.is_some_and(|w| !w.a_t.device().is_cpu());
        if !on_gpu {
            return Ok(Self { adapters, stacks: None });
        }
        let mut stacks = Vec::with_capacity(num_layers);
        for layer in 0..num_layers {
            let mut mods: [Option<Stack>; 7] = Default::default();
            for module in Module::ALL {
                mods[module.index()] = stack_module(&adapters, layer, module)?;
            }
            stacks.push(mods);
        }
        Ok(Self { adapters, stacks: Some(stacks) })
    }

    /// Number of adapter slots.
    pub fn len(&self) -> usize {
        self.adapters.len()
    }

    /// Whether the bank has no adapters.
    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }

    /// The adapter in `slot`.
    pub fn get(&self, slot: usize) -> Option<&Arc<LoraAdapter>> {
        self.adapters.get(slot)
    }

    /// `base` (= `x W^T`, `[rows, out]`) plus each row's LoRA delta for `module` of `layer`, as `plan` says.
    pub fn apply(&self, plan: &LoraPlan, layer: usize, module: Module, xs: &Tensor, base: Tensor) -> Result<Tensor> {
        match &plan.mode {
            PlanMode::None => Ok(base),
            PlanMode::Sgmv(op) => match &self.stacks {
                Some(stacks) => {
                    let Some(st) = &stacks[layer][module.index()] else { return Ok(base) };
                    Ok((base + op.delta(xs, &st.a, &st.b)?)?)
                }
                None => {
                    let factors: Vec<_> = self.adapters.iter().map(|a| a.weights(layer, module)).collect();
                    op.add_host(xs, base, &factors)
                }
            },
            PlanMode::Segments => {
                let mut pieces = Vec::with_capacity(plan.segments.len());
                let mut any = false;
                for seg in &plan.segments {
                    let out = base.narrow(0, seg.start, seg.len)?;
                    let weights = seg.slot.and_then(|s| self.adapters[s].weights(layer, module));
                    match weights {
                        Some(w) => {
                            any = true;
                            let x = xs.narrow(0, seg.start, seg.len)?;
                            let (a_t, b_t) = (w.a_t.to_dtype(x.dtype())?, w.b_t.to_dtype(x.dtype())?);
                            pieces.push((out + (x.matmul(&a_t)?.matmul(&b_t)? * f64::from(w.scale))?)?);
                        }
                        None => pieces.push(out),
                    }
                }
                if !any {
                    return Ok(base);
                }
                Ok(Tensor::cat(&pieces, 0)?)
            }
        }
    }
}

fn stack_module(adapters: &[Arc<LoraAdapter>], layer: usize, module: Module) -> Result<Option<Stack>> {
    let present: Vec<_> = adapters.iter().map(|a| a.weights(layer, module)).collect();
    let Some(first) = present.iter().flatten().next() else { return Ok(None) };
    let (fan_in, _) = first.a_t.dims2()?;
    let (_, fan_out) = first.b_t.dims2()?;
    let (device, dtype) = (first.a_t.device().clone(), first.a_t.dtype());
    if present.iter().flatten().any(|w| w.a_t.dtype() != dtype || w.b_t.dtype() != dtype) {
        return Err(candle_core::Error::Msg("adapter bank: adapters of different dtypes on one GPU".into()).into());
    }
    let r_max = present.iter().flatten().map(|w| w.a_t.dims()[1]).max().unwrap_or(1);
    let mut a_list = Vec::with_capacity(adapters.len());
    let mut b_list = Vec::with_capacity(adapters.len());
    for w in &present {
        match w {
            Some(w) => {
                let r = w.a_t.dims()[1];
                a_list.push(w.a_t.t()?.pad_with_zeros(0, 0, r_max - r)?);
                let sb_t = (w.b_t.to_dtype(DType::F32)? * f64::from(w.scale))?.to_dtype(dtype)?;
                b_list.push(sb_t.pad_with_zeros(0, 0, r_max - r)?);
            }
            None => {
                a_list.push(Tensor::zeros((r_max, fan_in), dtype, &device)?);
                b_list.push(Tensor::zeros((r_max, fan_out), dtype, &device)?);
            }
        }
    }
    Ok(Some(Stack { a: Tensor::stack(&a_list, 0)?.contiguous()?, b: Tensor::stack(&b_list, 0)?.contiguous()? }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::AdapterTarget;
    use candle_core::Device;

    fn target() -> AdapterTarget {
        crate::adapter::tiny_test_target()
    }

    fn adapter(r: usize, seed: u64, t: &AdapterTarget) -> Arc<LoraAdapter> {
        Arc::new(LoraAdapter::random(t, r, &[Module::Q], seed, candle_core::DType::F32).unwrap())
    }

    /// The reference: each row alone, `x W^T + s x A^T B^T` with its own adapter's unpadded factors.
    fn per_row_loop(bank: &AdapterBank, slots: &[Option<usize>], xs: &Tensor, base: &Tensor) -> Tensor {
        let rows: Vec<Tensor> = slots
            .iter()
            .enumerate()
            .map(|(n, slot)| {
                let x = xs.narrow(0, n, 1).unwrap();
                let b = base.narrow(0, n, 1).unwrap();
                match slot.and_then(|s| bank.get(s).unwrap().weights(0, Module::Q)) {
                    Some(w) => {
                        (b + (x.matmul(&w.a_t).unwrap().matmul(&w.b_t).unwrap() * f64::from(w.scale)).unwrap()).unwrap()
                    }
                    None => b,
                }
            })
            .collect();
        Tensor::cat(&rows, 0).unwrap()
    }

    #[test]
    fn every_strategy_equals_the_per_row_loop() {
        let t = target();
        // Different ranks exercise the zero padding.
        let bank = AdapterBank::new(vec![adapter(8, 1, &t), adapter(4, 2, &t), adapter(2, 3, &t)], 1).unwrap();
        // Decode-like (one row per sequence) and prefill-like (runs of rows sharing an adapter).
        let decode = [Some(1), None, Some(0), Some(2), Some(0), None, Some(1)];
        let prefill = [Some(0), Some(0), Some(0), None, None, Some(2), Some(2), Some(1)];
        for slots in [&decode[..], &prefill[..]] {
            check_strategies(&bank, slots);
        }
    }

    fn check_strategies(bank: &AdapterBank, slots: &[Option<usize>]) {
        let xs = Tensor::arange(0f32, (slots.len() * 16) as f32, &Device::Cpu)
            .unwrap()
            .reshape((slots.len(), 16))
            .unwrap()
            .sin()
            .unwrap();
        let base = xs.cos().unwrap();
        let expected = per_row_loop(bank, slots, &xs, &base);
        for strategy in ["segments", "sgmv"] {
            let plan = LoraPlan::new(slots, &Device::Cpu).unwrap().with_strategy(strategy, &Device::Cpu).unwrap();
            let got = bank.apply(&plan, 0, Module::Q, &xs, base.clone()).unwrap();
            let err = (&got - &expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 1e-5, "{strategy}: max error {err}");
            // Base rows are bit-for-bit the base output.
            for row in (0..slots.len()).filter(|&n| slots[n].is_none()) {
                assert_eq!(
                    got.narrow(0, row, 1).unwrap().to_vec2::<f32>().unwrap(),
                    base.narrow(0, row, 1).unwrap().to_vec2::<f32>().unwrap(),
                    "{strategy}: base row {row}"
                );
            }
        }
    }

    #[test]
    fn plan_runs_sgmv_whenever_a_row_has_an_adapter() {
        let dev = Device::Cpu;
        assert_eq!(LoraPlan::new(&[None, None], &dev).unwrap().strategy(), "none");
        // Decode steps and steps with prompt chunks alike, so a row's arithmetic never depends on the step.
        assert_eq!(LoraPlan::new(&[Some(0)], &dev).unwrap().strategy(), "sgmv");
        assert_eq!(LoraPlan::new(&[Some(0), None, Some(1)], &dev).unwrap().strategy(), "sgmv");
        assert_eq!(LoraPlan::new(&[Some(0), Some(0), Some(1)], &dev).unwrap().strategy(), "sgmv");
    }
}
