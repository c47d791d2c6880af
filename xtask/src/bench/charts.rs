//! SVG charts of a run (plotters' SVG backend: text is written as SVG `<text>`, rendered by
//! the viewer, so no font files are needed here).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::results::{self, Results};

/// One series of a grouped bar chart: a name and a value per category (`None`: no bar).
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A bar chart: one group of bars per category, one bar per series, the value written above
/// each bar.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    categories: &[String],
    series: &[Series],
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let n_cat = categories.len().max(1);
    let n_ser = series.len().max(1);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let top = if max > 0.0 { max * 1.18 } else { 1.0 };
    let width = (160 + n_cat * (40 + 46 * n_ser)).clamp(560, 1100) as u32;
    let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..n_cat as f64, 0f64..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .y_label_formatter(&|v| label(*v))
        .draw()
        .map_err(|e| err(&e))?;
    // Category names under the groups.
    let plot = chart.plotting_area();
    for (i, c) in categories.iter().enumerate() {
        let (x, _) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        let (_, y) = chart.backend_coord(&(0.0, 0.0));
        root.draw(&Text::new(
            c.clone(),
            (x, y + 8),
            ("sans-serif", 13).into_font().color(&BLACK).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Top,
                ),
            ),
        ))
        .map_err(|e| err(&e))?;
    }
    let group = 0.8;
    let bar = group / n_ser as f64;
    for (si, s) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        for (ci, v) in s.values.iter().enumerate() {
            let Some(v) = *v else { continue };
            let x0 = ci as f64 + (1.0 - group) / 2.0 + si as f64 * bar;
            let x1 = x0 + bar * 0.92;
            plot.draw(&Rectangle::new([(x0, 0.0), (x1, v)], color.filled()))
                .map_err(|e| err(&e))?;
            plot.draw(&Text::new(
                label(v),
                ((x0 + x1) / 2.0, v + top * 0.01),
                ("sans-serif", 12).into_font().color(&BLACK).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Bottom,
                    ),
                ),
            ))
            .map_err(|e| err(&e))?;
        }
        if series.len() > 1 {
            // Legend, top left.
            let (lx, ly) = (80 + si as i32 * 170, 40);
            root.draw(&Rectangle::new(
                [(lx, ly), (lx + 12, ly + 12)],
                color.filled(),
            ))
            .map_err(|e| err(&e))?;
            root.draw(&Text::new(
                s.name.clone(),
                (lx + 16, ly),
                ("sans-serif", 13).into_font().color(&BLACK),
            ))
            .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Short names of the systems for chart axes.
fn short(system: &str) -> String {
    match system {
        results::SYS_ROUTING => "routing (no LB)".into(),
        results::SYS_NFT => "nftables DNAT".into(),
        results::SYS_HAPROXY => "HAProxy".into(),
        s => s.into(),
    }
}

/// Draws every chart the results have data for into `dir`, named `{stem}-NAME.svg`; returns
/// their file names.
pub fn draw_all(r: &Results, dir: &Path, stem: &str) -> Result<results::ChartFiles> {
    let mut files = results::ChartFiles::default();
    let name = |what: &str| format!("{stem}-{what}.svg");

    if let Some(p) = &r.prog {
        let f = name("prog");
        grouped_bars(
            &dir.join(&f),
            "XDP program cost per packet (BPF_PROG_TEST_RUN, floor subtracted)",
            "ns per packet",
            &p.cases
                .iter()
                .map(|c| {
                    c.name
                        .replace("established flow, ", "est. ")
                        .replace(" in the table", "")
                        .replace(
                            "new TCP flow (SYN): Maglev + UNCONFIRMED insert",
                            "new flow (SYN)",
                        )
                        .replace("non-service traffic (XDP_PASS)", "pass")
                        .replace("reply (reverse NAT)", "reply")
                })
                .collect::<Vec<_>>(),
            &[
                Series {
                    name: "in the kernel's loop".into(),
                    values: p
                        .cases
                        .iter()
                        .map(|c| c.loop_net_ns.map(|v| v.max(0.0)))
                        .collect(),
                },
                Series {
                    name: "per call (repeat = 1)".into(),
                    values: p.cases.iter().map(|c| Some(c.net_ns.max(0.0))).collect(),
                },
            ],
        )?;
        files.prog = Some(f);
    }

    if let Some(fw) = &r.forwarding {
        let runs: Vec<_> = fw.runs.iter().filter(|x| x.skipped.is_none()).collect();
        if !runs.is_empty() {
            let f = name("forwarding");
            grouped_bars(
                &dir.join(&f),
                &format!(
                    "Balancer CPU per forwarded UDP packet at {} kpps",
                    (fw.offered_pps / 1000.0).round()
                ),
                "CPU ns per packet",
                &runs.iter().map(|x| short(&x.system)).collect::<Vec<_>>(),
                &[Series {
                    name: "CPU ns/packet".into(),
                    values: runs.iter().map(|x| Some(x.cpu_ns_per_packet)).collect(),
                }],
            )?;
            files.forwarding = Some(f);
        }
    }

    if let Some(t) = &r.tcp {
        let fixed: Vec<_> = t
            .conn_fixed
            .iter()
            .filter(|x| x.skipped.is_none())
            .collect();
        if !fixed.is_empty() {
            let f = name("tcp-cpu");
            grouped_bars(
                &dir.join(&f),
                &format!(
                    "Balancer CPU per TCP connection at {} conn/s",
                    t.fixed_rate.round()
                ),
                "CPU µs per connection",
                &fixed.iter().map(|x| short(&x.system)).collect::<Vec<_>>(),
                &[Series {
                    name: "µs/connection".into(),
                    values: fixed.iter().map(|x| Some(x.cpu_us_per_conn)).collect(),
                }],
            )?;
            files.tcp_cpu = Some(f);
        }
        let max: Vec<_> = t.conn_max.iter().filter(|x| x.skipped.is_none()).collect();
        if !max.is_empty() {
            let f = name("tcp-rate");
            grouped_bars(
                &dir.join(&f),
                "TCP connections per second (client-bound)",
                "connections/s",
                &max.iter().map(|x| short(&x.system)).collect::<Vec<_>>(),
                &[Series {
                    name: "conn/s".into(),
                    values: max.iter().map(|x| Some(x.result.conn_per_s)).collect(),
                }],
            )?;
            files.tcp_rate = Some(f);
        }
        let lat: Vec<_> = t.latency.iter().filter(|x| x.skipped.is_none()).collect();
        if !lat.is_empty() {
            let f = name("latency");
            let pick = |g: fn(&super::load::Summary) -> u64| -> Vec<Option<f64>> {
                lat.iter()
                    .map(|x| Some(g(&x.result.latency) as f64 / 1000.0))
                    .collect()
            };
            grouped_bars(
                &dir.join(&f),
                &format!("Request latency at {} req/s", t.latency_rate.round()),
                "µs",
                &lat.iter().map(|x| short(&x.system)).collect::<Vec<_>>(),
                &[
                    Series {
                        name: "p50".into(),
                        values: pick(|s| s.p50_ns),
                    },
                    Series {
                        name: "p99".into(),
                        values: pick(|s| s.p99_ns),
                    },
                    Series {
                        name: "p99.9".into(),
                        values: pick(|s| s.p999_ns),
                    },
                ],
            )?;
            files.latency = Some(f);
        }
    }

    if let Some(g) = &r.maglev {
        if !g.builds.is_empty() {
            let mut ns: Vec<usize> = g.builds.iter().map(|b| b.backends).collect();
            ns.dedup();
            let mut ms: Vec<u32> = g.builds.iter().map(|b| b.m).collect();
            ms.sort_unstable();
            ms.dedup();
            let f = name("maglev");
            grouped_bars(
                &dir.join(&f),
                "Maglev table build time",
                "ms",
                &ns.iter()
                    .map(|n| format!("{n} backends"))
                    .collect::<Vec<_>>(),
                &ms.iter()
                    .map(|&m| Series {
                        name: format!("M = {m}"),
                        values: ns
                            .iter()
                            .map(|&n| {
                                g.builds
                                    .iter()
                                    .find(|b| b.backends == n && b.m == m)
                                    .map(|b| b.median_ms)
                            })
                            .collect(),
                    })
                    .collect::<Vec<_>>(),
            )?;
            files.maglev = Some(f);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_text_without_fonts() {
        let dir = std::env::temp_dir().join(format!("xlb-chart-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.svg");
        grouped_bars(
            &path,
            "Title here",
            "units",
            &["alpha".into(), "beta".into()],
            &[
                Series {
                    name: "one".into(),
                    values: vec![Some(10.0), Some(250.0)],
                },
                Series {
                    name: "two".into(),
                    values: vec![None, Some(3.5)],
                },
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        for text in [
            "Title here",
            "alpha",
            "beta",
            "250",
            "3.50",
            "one",
            "two",
            "units",
        ] {
            assert!(svg.contains(text), "{text} missing from the SVG");
        }
        assert_eq!(
            svg.matches("<rect").count(),
            1 + 3 + 2,
            "background, 3 bars, 2 legend keys"
        );
    }
}
