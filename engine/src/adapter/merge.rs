//! Merging adapters into one (LoRAX's `merged_adapters`), exactly as PEFT's `LoraModel.add_weighted_adapter` does
//! for the combination types `linear`, `ties`, `dare_linear` and `dare_ties`.
//!
//! PEFT merges the `A` factors of a module among themselves and the `B` factors among themselves, never the product
//! `B A` (which would need an SVD to come back to a rank-r adapter). Each adapter's factors are weighted by
//! `sqrt(weight · scale)`, so that a merge of one adapter with weight `w` is `w` times that adapter; the merged
//! adapter has `lora_alpha = r`, a scale of 1. A module that only some adapters target is merged from those.
//!
//! - `linear`: the weighted sum.
//! - `ties` (Yadav et al. 2023): each factor keeps its `density` share of largest magnitudes, a sign is elected
//!   per element (`total`: the sign of the sum; `frequency`: the most frequent sign), and the weighted values that
//!   agree with it are averaged.
//! - `dare_linear`, `dare_ties` (Yu et al. 2023): each factor keeps each element with probability `density` and is
//!   rescaled by `1 / density`, then summed, or sign-elected and averaged as `ties` does.
//!
//! A negative weight (task negation) negates the adapter's `A` only, as PEFT does. Two things differ from PEFT:
//! DARE's random masks come from a seed (see [`seeded_masks`]), so that the same merge gives the same adapter on
//! every replica and after every restart; and the merged scale is 1 even when the first adapter uses rsLoRA (PEFT
//! keeps that adapter's `use_rslora`, which scales the merge by `sqrt(r)`).

use super::{parse_tensor_name, peft_tensor_name, AdapterConfig};
use crate::{Error, ModelConfig, Module, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};

/// How adapters are merged (LoRAX's `merge_strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MergeStrategy {
    /// The weighted sum of the factors.
    #[default]
    Linear,
    /// TIES: magnitude pruning, sign election, disjoint mean.
    Ties,
    /// DARE: random pruning with rescaling, then the weighted sum.
    DareLinear,
    /// DARE's pruning, then TIES' sign election and disjoint mean.
    DareTies,
}

impl MergeStrategy {
    /// Every strategy, in the order LoRAX lists them.
    pub const ALL: [MergeStrategy; 4] = [Self::Linear, Self::Ties, Self::DareLinear, Self::DareTies];

    /// The strategy's name (`linear`, `ties`, `dare_linear`, `dare_ties`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Ties => "ties",
            Self::DareLinear => "dare_linear",
            Self::DareTies => "dare_ties",
        }
    }

    /// The strategy named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    fn prunes_at_random(self) -> bool {
        matches!(self, Self::DareLinear | Self::DareTies)
    }

    fn elects_sign(self) -> bool {
        matches!(self, Self::Ties | Self::DareTies)
    }
}

/// How TIES elects each element's sign (LoRAX's and PEFT's `majority_sign_method`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MajoritySign {
    /// The sign of the sum of the values.
    #[default]
    Total,
    /// The sign most of the values have.
    Frequency,
}

impl MajoritySign {
    /// The method's name (`total`, `frequency`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::Frequency => "frequency",
        }
    }

    /// The method named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Total, Self::Frequency].into_iter().find(|m| m.name() == name)
    }
}

/// How to merge: the strategy, the share of each factor that pruning keeps, and TIES' sign election.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MergeParams {
    /// The strategy.
    pub strategy: MergeStrategy,
    /// The share of each factor's elements kept by pruning, in (0, 1]; 1 prunes nothing. Unused by `linear`.
    pub density: f64,
    /// How `ties` and `dare_ties` elect signs.
    pub majority_sign: MajoritySign,
}

impl MergeParams {
    /// The parameters as they act on `parts` adapters: PEFT merges one adapter linearly whatever the strategy, and
    /// what a strategy does not use is reset (`linear` prunes nothing and elects no sign; `dare_linear` elects
    /// none), so that merges that act alike are one merge.
    pub fn normalized(self, parts: usize) -> Self {
        let strategy = if parts == 1 { MergeStrategy::Linear } else { self.strategy };
        let density = if strategy == MergeStrategy::Linear { 1.0 } else { self.density };
        let majority_sign = if strategy.elects_sign() { self.majority_sign } else { MajoritySign::Total };
        Self { strategy, density, majority_sign }
    }
}

impl Default for MergeParams {
    fn default() -> Self {
        Self { strategy: MergeStrategy::Linear, density: 1.0, majority_sign: MajoritySign::Total }
    }
}

/// One adapter to merge: its configuration, its tensors by PEFT name, and its weight.
pub struct MergeInput<'a> {
    /// The adapter's name, for errors.
    pub name: &'a str,
    /// Its `adapter_config.json`.
    pub config: &'a AdapterConfig,
    /// Its tensors, as `adapter_model.safetensors` names them.
    pub tensors: &'a HashMap<String, Tensor>,
    /// Its weight in the merge.
    pub weight: f64,
}

/// Where DARE draws a random mask: the factor `tensor` (its PEFT name) of the `input`-th adapter.
#[derive(Clone, Copy, Debug)]
pub struct MaskSite<'a> {
    /// The adapter's index among the inputs.
    pub input: usize,
    /// The factor's PEFT name (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
    pub tensor: &'a str,
}

/// Draws the mask of `len` elements (true: kept) for a site; given `density`, each element is kept with that
/// probability.
pub type MaskSource<'a> = dyn FnMut(MaskSite<'_>, usize) -> Vec<bool> + 'a;

/// DARE masks drawn from `seed`: each site's mask is a function of the seed, the adapter's index and the tensor's
/// name alone, so it does not depend on the order in which sites are visited.
pub fn seeded_masks(seed: u64, density: f64) -> impl FnMut(MaskSite<'_>, usize) -> Vec<bool> {
    use rand::{Rng, SeedableRng};
    use sha2::{Digest, Sha256};
    move |site: MaskSite<'_>, len: usize| {
        let digest = Sha256::new()
            .chain_update(seed.to_le_bytes())
            .chain_update((site.input as u64).to_le_bytes())
            .chain_update(site.tensor.as_bytes())
            .finalize();
        // ChaCha8 is specified (StdRng may change between versions of rand): the same masks on every build.
        let mut rng = rand_chacha::ChaCha8Rng::from_seed(digest.into());
        (0..len).map(|_| rng.random::<f64>() < density).collect()
    }
}

/// Merges `inputs` with `params` for a model of `model`'s shapes: the merged adapter's configuration and its
/// tensors by PEFT name (on the CPU, in the first adapter's dtype, as PEFT). DARE's masks come from `masks`. Fails
/// when the adapters' ranks differ (PEFT and LoRAX merge only adapters of one rank), or when a tensor is missing,
/// unexpected or of the wrong shape (as a load would).
pub fn merge(
    inputs: &[MergeInput<'_>],
    params: &MergeParams,
    model: &ModelConfig,
    masks: &mut MaskSource<'_>,
) -> Result<(AdapterConfig, HashMap<String, Tensor>)> {
    let num_layers = model.num_hidden_layers;
    let fail = Error::AdapterMerge;
    if inputs.is_empty() {
        return Err(fail("no adapters to merge".into()));
    }
    let params = params.normalized(inputs.len());
    let (first, rank) = (inputs[0].name, inputs[0].config.r);
    if let Some(other) = inputs.iter().find(|i| i.config.r != rank) {
        let (name, r) = (other.name, other.config.r);
        return Err(fail(format!("{first} has rank {rank} and {name} rank {r}; only adapters of one rank merge")));
    }
    if params.strategy != MergeStrategy::Linear && !(params.density > 0.0 && params.density <= 1.0) {
        return Err(fail(format!("density must be > 0 and <= 1, got {}", params.density)));
    }
    // Each input's factors by (layer, module, 'A' | 'B').
    let by_key: Vec<HashMap<(usize, Module, char), &Tensor>> = inputs
        .iter()
        .map(|input| {
            input
                .tensors
                .iter()
                .map(|(name, t)| {
                    parse_tensor_name(name, num_layers)
                        .filter(|(_, module, _)| input.config.target_modules.contains(module))
                        .map(|key| (key, t))
                        .ok_or_else(|| fail(format!("adapter {}: unexpected tensor `{name}`", input.name)))
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    let targets: BTreeSet<Module> = inputs.iter().flat_map(|i| i.config.target_modules.iter().copied()).collect();
    let mut out = HashMap::new();
    let mut ranks: Vec<(usize, Module, usize)> = Vec::new();
    for layer in 0..num_layers {
        for &module in &targets {
            let mut parts = Vec::new();
            for (index, input) in inputs.iter().enumerate() {
                if !input.config.target_modules.contains(&module) {
                    continue;
                }
                let factor = |which| {
                    by_key[index].get(&(layer, module, which)).copied().ok_or_else(|| {
                        fail(format!(
                            "adapter {}: tensor `{}` is missing",
                            input.name,
                            peft_tensor_name(layer, module, which)
                        ))
                    })
                };
                let (a, b) = (factor('A')?, factor('B')?);
                let (r, scale) = input.config.rank_and_scale(layer, module);
                let (fan_in, fan_out) = model.module_shape(module);
                for (t, which, expected) in [(a, 'A', [r, fan_in]), (b, 'B', [fan_out, r])] {
                    if t.dims() != expected {
                        let name = peft_tensor_name(layer, module, which);
                        return Err(fail(format!(
                            "adapter {}: tensor `{name}` has shape {:?}, expected {expected:?}",
                            input.name,
                            t.dims()
                        )));
                    }
                }
                parts.push((index, a, b, scale));
            }
            let (_, first_a, first_b, _) = parts[0];
            let rank = first_a.dims2()?.0;
            for &(index, a, _, _) in &parts[1..] {
                let r = a.dims2()?.0;
                if r != rank {
                    let (x, y) = (inputs[parts[0].0].name, inputs[index].name);
                    return Err(fail(format!(
                        "{x} has rank {rank} and {y} rank {r} in layer {layer} {}; only adapters of one rank merge",
                        module.short_name()
                    )));
                }
            }
            ranks.push((layer, module, rank));
            // sqrt(|w · s|) on both factors; a negative product negates A.
            let weight = |index: usize, scale: f64, which: char| {
                let ws = inputs[index].weight * scale;
                let magnitude = ws.abs().sqrt() as f32;
                if which == 'A' && ws < 0.0 {
                    -magnitude
                } else {
                    magnitude
                }
            };
            for (which, first) in [('A', first_a), ('B', first_b)] {
                let name = peft_tensor_name(layer, module, which);
                let mut values = Vec::with_capacity(parts.len());
                let mut weights = Vec::with_capacity(parts.len());
                // Shapes are equal: each was checked against the model and its rank, and the ranks are one.
                for &(index, a, b, scale) in &parts {
                    let t = if which == 'A' { a } else { b };
                    let mut v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    prune(&mut v, &params, &mut |len| masks(MaskSite { input: index, tensor: &name }, len));
                    values.push(v);
                    weights.push(weight(index, scale, which));
                }
                let merged = combine(&values, &weights, &params);
                out.insert(name, Tensor::from_vec(merged, first.dims(), &Device::Cpu)?.to_dtype(first.dtype())?);
            }
        }
    }
    // Scale 1 everywhere: alpha equals the rank, module by module where ranks differ from the first.
    let r = ranks.first().map(|&(_, _, r)| r).unwrap_or(1);
    let mut config = AdapterConfig {
        r,
        lora_alpha: r as f64,
        use_rslora: false,
        target_modules: targets,
        rank_pattern: HashMap::new(),
        alpha_pattern: HashMap::new(),
    };
    for (layer, module, rank) in ranks.into_iter().filter(|&(_, _, rank)| rank != r) {
        let path = format!("model.layers.{layer}.{}", module.path());
        config.rank_pattern.insert(path.clone(), rank);
        config.alpha_pattern.insert(path, rank as f64);
    }
    Ok((config, out))
}

/// PEFT's `prune`: nothing at density 1; else `ties` keeps the `int(density · n)` largest magnitudes, DARE keeps
/// the elements its mask keeps and divides them by the density.
fn prune(values: &mut [f32], params: &MergeParams, mask: &mut dyn FnMut(usize) -> Vec<bool>) {
    if params.density >= 1.0 || params.strategy == MergeStrategy::Linear {
        return;
    }
    if params.strategy.prunes_at_random() {
        let keep = mask(values.len());
        let density = params.density as f32;
        for (v, keep) in values.iter_mut().zip(keep) {
            *v = if keep { *v / density } else { 0.0 };
        }
    } else {
        let k = (params.density * values.len() as f64) as usize;
        let mut order: Vec<usize> = (0..values.len()).collect();
        if k < order.len() {
            order.select_nth_unstable_by(k, |&x, &y| values[y].abs().total_cmp(&values[x].abs()));
            for &i in &order[k..] {
                values[i] = 0.0;
            }
        }
    }
}

/// The weighted sum of `values` (`linear`, `dare_linear`), or TIES' disjoint mean: per element, the weighted values
/// whose sign is the elected one, averaged over how many there are.
fn combine(values: &[Vec<f32>], weights: &[f32], params: &MergeParams) -> Vec<f32> {
    let len = values[0].len();
    if !params.strategy.elects_sign() {
        return (0..len).map(|j| values.iter().zip(weights).map(|(v, w)| v[j] * w).sum()).collect();
    }
    (0..len)
        .map(|j| {
            let elected: f32 = match params.majority_sign {
                MajoritySign::Total => values.iter().map(|v| v[j]).sum(),
                MajoritySign::Frequency => values.iter().map(|v| sign(v[j])).sum(),
            };
            let elected = if elected >= 0.0 { 1.0 } else { -1.0 };
            let (mut sum, mut count) = (0.0f32, 0.0f32);
            for (v, w) in values.iter().zip(weights) {
                if sign(v[j]) == elected {
                    sum += v[j] * w;
                    count += 1.0;
                }
            }
            sum / count.max(1.0)
        })
        .collect()
}

/// torch's `sign`: -1, 0 or 1.
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(strategy: MergeStrategy, density: f64) -> MergeParams {
        MergeParams { strategy, density, majority_sign: MajoritySign::Total }
    }

    #[test]
    fn ties_keeps_the_largest_magnitudes_and_averages_the_elected_sign() {
        let mut v = vec![0.1, -3.0, 2.0, -0.5];
        prune(&mut v, &params(MergeStrategy::Ties, 0.5), &mut |_| unreachable!());
        assert_eq!(v, [0.0, -3.0, 2.0, 0.0]);
        // Element 0: signs +,+,- with a positive sum: the two positive values, weighted, averaged.
        let values = vec![vec![1.0, 0.0], vec![2.0, -1.0], vec![-4.0, 0.0]];
        let ties = combine(&values, &[1.0, 0.5, 1.0], &params(MergeStrategy::Ties, 1.0));
        assert_eq!(ties, [-4.0, -0.5], "total: 1 + 2 - 4 < 0 elects minus");
        let freq = MergeParams { majority_sign: MajoritySign::Frequency, ..params(MergeStrategy::Ties, 1.0) };
        assert_eq!(combine(&values, &[1.0, 0.5, 1.0], &freq), [1.0, -0.5], "two of three are positive");
        let linear = combine(&values, &[1.0, 0.5, 1.0], &params(MergeStrategy::Linear, 1.0));
        assert_eq!(linear, [-2.0, -0.5]);
    }

    #[test]
    fn dare_rescales_what_its_mask_keeps_and_seeded_masks_are_stable() {
        let mut v = vec![1.0, 2.0, 3.0, 4.0];
        prune(&mut v, &params(MergeStrategy::DareLinear, 0.5), &mut |n| (0..n).map(|i| i % 2 == 0).collect());
        assert_eq!(v, [2.0, 0.0, 6.0, 0.0]);
        let mut masks = seeded_masks(7, 0.3);
        let site = MaskSite { input: 1, tensor: "t" };
        let m = masks(site, 10_000);
        assert_eq!(m, masks(site, 10_000), "a site's mask is a function of the seed and the site");
        assert_ne!(m, masks(MaskSite { input: 0, tensor: "t" }, 10_000));
        let kept = m.iter().filter(|&&k| k).count() as f64 / m.len() as f64;
        assert!((kept - 0.3).abs() < 0.02, "kept {kept}");
    }
}
