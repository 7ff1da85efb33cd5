//! A training job's loss curve as SVG, drawn by the server and redrawn in the browser as points arrive: the
//! training loss as a line, the held-out loss as dots joined by a dashed line, over steps `0..=steps`.

use crate::train::Point;
use leptos::prelude::*;

const W: f64 = 480.0;
const H: f64 = 180.0;
const PAD: f64 = 36.0;

/// The chart's coordinates of the points: `(x, y)` pairs scaled into the plot, for the training and the held-out
/// losses, and the loss range shown.
#[derive(Clone, Debug, PartialEq)]
pub struct Plot {
    /// Training loss polyline.
    pub train: Vec<(f64, f64)>,
    /// Held-out loss points.
    pub held_out: Vec<(f64, f64)>,
    /// Lowest and highest loss on the axis.
    pub range: (f32, f32),
}

/// Lays `points` out over `steps` steps.
pub fn plot(points: &[Point], steps: usize) -> Plot {
    let values = points.iter().flat_map(|p| p.loss.into_iter().chain(p.eval_loss)).filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo.min(hi), if hi > lo { hi } else { lo + 1.0 }) } else { (0.0, 1.0) };
    let x = |step: usize| PAD + (W - 2.0 * PAD) * step as f64 / steps.max(1) as f64;
    let y = |v: f32| H - PAD + (PAD * 2.0 - H) * f64::from((v - lo) / (hi - lo));
    let train = points.iter().filter_map(|p| Some((x(p.step), y(p.loss?)))).collect();
    let held_out = points.iter().filter_map(|p| Some((x(p.step), y(p.eval_loss?)))).collect();
    Plot { train, held_out, range: (lo, hi) }
}

fn polyline(points: &[(f64, f64)]) -> String {
    points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect::<Vec<_>>().join(" ")
}

/// The chart.
#[component]
pub fn LossChart(#[prop(into)] points: Signal<Vec<Point>>, steps: usize) -> AnyView {
    let plot = Memo::new(move |_| points.with(|p| plot(p, steps)));
    view! {
        <figure class="loss-chart">
            <svg
                viewBox=format!("0 0 {W} {H}")
                role="img"
                aria-label="Loss by training step"
                data-points=move || plot.with(|p| p.train.len())
            >
                <line class="axis" x1=PAD y1=H - PAD x2=W - PAD y2=H - PAD/>
                <line class="axis" x1=PAD y1=PAD x2=PAD y2=H - PAD/>
                <text class="tick" x=PAD - 4.0 y=PAD + 4.0 text-anchor="end">
                    {move || format!("{:.2}", plot.with(|p| p.range.1))}
                </text>
                <text class="tick" x=PAD - 4.0 y=H - PAD text-anchor="end">
                    {move || format!("{:.2}", plot.with(|p| p.range.0))}
                </text>
                <text class="tick" x=PAD y=H - PAD + 16.0 text-anchor="middle">"0"</text>
                <text class="tick" x=W - PAD y=H - PAD + 16.0 text-anchor="middle">{steps.to_string()}</text>
                <text class="tick" x=W / 2.0 y=H - 6.0 text-anchor="middle">"step"</text>
                <polyline class="train-loss" fill="none" points=move || plot.with(|p| polyline(&p.train))/>
                <polyline class="held-out-loss" fill="none" points=move || plot.with(|p| polyline(&p.held_out))/>
                {move || plot.with(|p| p.held_out.iter().map(|&(x, y)| view! {
                    <circle class="held-out-point" cx=format!("{x:.1}") cy=format!("{y:.1}") r="3"/>
                }).collect_view())}
            </svg>
            <figcaption class="muted">
                <span class="key train-key">"training loss"</span>
                " · "
                <span class="key held-key">"held-out loss"</span>
            </figcaption>
        </figure>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(step: usize, loss: Option<f32>, eval: Option<f32>) -> Point {
        Point { step, loss, eval_loss: eval, tokens_per_s: 0.0, eta_s: 0.0 }
    }

    #[test]
    fn points_fill_the_plot_from_the_lowest_to_the_highest_loss() {
        let p = plot(&[point(0, None, Some(3.0)), point(5, Some(2.0), None), point(10, Some(1.0), Some(1.5))], 10);
        assert_eq!(p.range, (1.0, 3.0));
        assert_eq!(p.train, [(W / 2.0, H / 2.0), (W - PAD, H - PAD)]);
        assert_eq!(p.held_out, [(PAD, PAD), (W - PAD, H - PAD - (H - 2.0 * PAD) / 4.0)]);
        // No points yet, or one value: a range that still draws.
        assert_eq!(plot(&[], 10).range, (0.0, 1.0));
        assert_eq!(plot(&[point(1, Some(2.0), None)], 10).range, (2.0, 3.0));
        let nan = plot(&[point(1, Some(f32::NAN), None)], 10);
        assert_eq!(nan.range, (0.0, 1.0));
    }
}
