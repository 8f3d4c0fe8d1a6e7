//! What a run records: one JSON object per line in `output_dir/metrics.jsonl`, flushed after
//! each line so a crash loses nothing already logged, and a loss / learning-rate chart (SVG)
//! drawn from it at the end. The file holds one run: a run starting at step `n` (0 when fresh,
//! the checkpoint's step when resuming) first drops every record after `n`
//! ([`MetricsLog::open_at`]), so a resumed run continues it without duplicate steps.

use crate::error::TrainError;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One logged point. Training lines have `loss`; evaluation lines have `eval_loss`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub step: u64,
    pub epoch: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub learning_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_perplexity: Option<f64>,
}

pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl` for a run starting after step `step`: records of later steps
    /// (a run killed after its last checkpoint, or an earlier run's) are dropped first, and a
    /// line cut by a crash too.
    pub fn open_at(dir: &Path, step: u64) -> Result<Self, TrainError> {
        let path = dir.join("metrics.jsonl");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Record>(l).is_ok_and(|r| r.step <= step && r.step > 0)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            if kept != text {
                runner_io::atomic::write(&path, kept.as_bytes()).map_err(|e| TrainError::Io {
                    path: e.path,
                    source: e.source,
                })?;
            }
        }
        Self::open(dir)
    }

    /// Opens `dir/metrics.jsonl` for appending, as it is.
    pub fn open(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join("metrics.jsonl");
        let io = |source| TrainError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        Ok(MetricsLog { path, file })
    }

    pub fn write(&mut self, record: &Record) -> Result<(), TrainError> {
        let mut line = serde_json::to_string(record).unwrap_or_default();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|source| TrainError::Io {
                path: self.path.clone(),
                source,
            })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a metrics file back (lines that do not parse are skipped: a crash may cut the last).
pub fn read(path: &Path) -> Result<Vec<Record>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// An SVG chart: training loss (and eval loss as points) on the left axis, learning rate on
/// the right, against the optimizer step.
pub fn chart_svg(records: &[Record], title: &str) -> String {
    let (w, h) = (800.0, 420.0);
    let (left, right, top, bottom) = (70.0, 80.0, 40.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.loss.map(|l| (r.step as f64, l)))
        .filter(|(_, l)| l.is_finite())
        .collect();
    let eval: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.eval_loss.map(|l| (r.step as f64, l)))
        .filter(|(_, l)| l.is_finite())
        .collect();
    let lrs: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.learning_rate.map(|l| (r.step as f64, l)))
        .collect();
    let max_step = records.iter().map(|r| r.step).max().unwrap_or(1).max(1) as f64;
    let losses = train.iter().chain(eval.iter()).map(|p| p.1);
    let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else if lo.is_finite() {
        (lo - 0.5, lo + 0.5)
    } else {
        (0.0, 1.0)
    };
    let lr_hi = lrs
        .iter()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let x = |s: f64| left + pw * s / max_step;
    let y = |l: f64| top + ph * (1.0 - (l - lo) / (hi - lo));
    let y_lr = |l: f64| top + ph * (1.0 - l / lr_hi);
    let path = |pts: &[(f64, f64)], fy: &dyn Fn(f64) -> f64| {
        pts.iter()
            .enumerate()
            .map(|(i, (s, v))| {
                format!(
                    "{}{:.1},{:.1}",
                    if i == 0 { "M" } else { " L" },
                    x(*s),
                    fy(*v)
                )
            })
            .collect::<String>()
    };
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{cx}" y="22" text-anchor="middle" font-size="15">{title}</text>
<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>
"##,
        cx = w / 2.0,
        title = xml_escape(title)
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let yy = top + ph * (1.0 - f);
        svg.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#1f77b4\">{:.3}</text>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d62728\">{:.1e}</text>\n",
            left + pw,
            left - 6.0,
            yy + 4.0,
            lo + (hi - lo) * f,
            left + pw + 6.0,
            yy + 4.0,
            lr_hi * f
        ));
        let xs = max_step * f;
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0}</text>\n",
            x(xs),
            top + ph + 18.0,
            xs
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">optimizer step</text>\n",
        left + pw / 2.0,
        h - 10.0
    ));
    if !lrs.is_empty() {
        svg.push_str(&format!(
            "<path d=\"{}\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"1.5\" stroke-dasharray=\"5,3\"/>\n",
            path(&lrs, &y_lr)
        ));
    }
    if !train.is_empty() {
        svg.push_str(&format!(
            "<path d=\"{}\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\"/>\n",
            path(&train, &y)
        ));
    }
    for (s, l) in &eval {
        svg.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#2ca02c\"/>\n",
            x(*s),
            y(*l)
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1f77b4\">— train loss</text>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#2ca02c\">● eval loss</text>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d62728\">- - learning rate</text>\n</svg>\n",
        left + 10.0,
        top + 16.0,
        left + 120.0,
        top + 16.0,
        left + 220.0,
        top + 16.0
    ));
    svg
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_appends_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path()).unwrap();
        for step in 1..=3 {
            log.write(&Record {
                step,
                epoch: step as f64 / 3.0,
                loss: Some(3.0 / step as f64),
                learning_rate: Some(1e-3),
                ..Default::default()
            })
            .unwrap();
        }
        drop(log);
        // A resumed run appends to the same file.
        let mut log = MetricsLog::open(dir.path()).unwrap();
        log.write(&Record {
            step: 3,
            eval_loss: Some(1.1),
            ..Default::default()
        })
        .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap()
            .write_all(b"{\"step\": 4, \"lo")
            .unwrap();
        let records = read(log.path()).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(records[3].eval_loss, Some(1.1));
    }

    #[test]
    fn chart_draws_every_series() {
        let records: Vec<Record> = (0..50)
            .map(|s| Record {
                step: s,
                loss: Some(2.0 / (1.0 + s as f64)),
                learning_rate: Some(1e-3 * (s as f64 / 50.0)),
                eval_loss: (s % 10 == 0).then_some(1.5),
                ..Default::default()
            })
            .collect();
        let svg = chart_svg(&records, "run <tiny>");
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<circle").count(), 5);
        assert_eq!(svg.matches("<path").count(), 2);
        assert!(svg.contains("run &lt;tiny&gt;"));
        // Nothing to draw is still a valid picture.
        assert!(chart_svg(&[], "empty").ends_with("</svg>\n"));
    }

    #[test]
    fn issue_17_group_2_a_resumed_log_has_no_duplicate_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open_at(dir.path(), 0).unwrap();
        for step in 1..=5 {
            log.write(&Record {
                step,
                loss: Some(step as f64),
                ..Default::default()
            })
            .unwrap();
        }
        drop(log);
        // Killed after step 5, resumed from the checkpoint of step 3: steps 4 and 5 again.
        let mut log = MetricsLog::open_at(dir.path(), 3).unwrap();
        for step in 4..=5 {
            log.write(&Record {
                step,
                loss: Some(step as f64),
                ..Default::default()
            })
            .unwrap();
        }
        let steps: Vec<u64> = read(log.path()).unwrap().iter().map(|r| r.step).collect();
        assert_eq!(steps, [1, 2, 3, 4, 5]);
        // A fresh start keeps nothing.
        drop(MetricsLog::open_at(dir.path(), 0).unwrap());
        assert!(read(&dir.path().join("metrics.jsonl")).unwrap().is_empty());
    }
}
