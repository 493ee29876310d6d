//! Renders library progress: a bar with rate and ETA on a terminal, JSON lines, or nothing.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use headstart::progress::Progress;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Bar,
    Json,
    None,
}

/// The default: bars when stderr is a terminal, else nothing.
pub fn default_mode() -> Mode {
    if std::io::stderr().is_terminal() {
        Mode::Bar
    } else {
        Mode::None
    }
}

pub struct Render {
    mode: Mode,
    bar: Mutex<Option<ProgressBar>>,
    json: Mutex<(String, u64, u64, Instant)>,
}

impl Render {
    pub fn new(mode: Mode) -> Render {
        Render { mode, bar: Mutex::new(None), json: Mutex::new((String::new(), 0, 0, Instant::now())) }
    }
}

fn json_line(v: serde_json::Value) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{v}");
}

impl Progress for Render {
    fn start(&self, stage: &str, total: u64) {
        match self.mode {
            Mode::Bar => {
                let bar = ProgressBar::new(total);
                // A download counts bytes.
                let template = if stage == "download" {
                    "{prefix:>9} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
                } else {
                    "{prefix:>9} [{bar:32}] {pos}/{len} {per_sec} eta {eta}"
                };
                bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
                bar.set_prefix(stage.to_string());
                *self.bar.lock().unwrap() = Some(bar);
            }
            Mode::Json => {
                *self.json.lock().unwrap() = (stage.to_string(), 0, total, Instant::now());
                json_line(serde_json::json!({"stage": stage, "done": 0, "total": total}));
            }
            Mode::None => {}
        }
    }
    fn inc(&self, n: u64) {
        match self.mode {
            Mode::Bar => {
                if let Some(b) = &*self.bar.lock().unwrap() {
                    b.inc(n)
                }
            }
            Mode::Json => {
                let mut j = self.json.lock().unwrap();
                j.1 += n;
                if j.3.elapsed() > Duration::from_millis(500) {
                    j.3 = Instant::now();
                    json_line(serde_json::json!({"stage": j.0, "done": j.1, "total": j.2}));
                }
            }
            Mode::None => {}
        }
    }
    fn finish(&self) {
        match self.mode {
            Mode::Bar => {
                if let Some(b) = self.bar.lock().unwrap().take() {
                    b.finish()
                }
            }
            Mode::Json => {
                let j = self.json.lock().unwrap();
                json_line(serde_json::json!({"stage": j.0, "done": j.1, "total": j.2, "finished": true}));
            }
            Mode::None => {}
        }
    }
    fn message(&self, text: &str) {
        match self.mode {
            Mode::Bar => eprintln!("{text}"),
            Mode::Json => json_line(serde_json::json!({"message": text})),
            Mode::None => {}
        }
    }
}
