//! A progress bar on standard error for work that takes more than a second, and nothing at all
//! when standard error is not a terminal.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pixelrts::encode::Progress;

pub struct Bar {
    inner: Option<Arc<Mutex<(ProgressBar, Instant, bool)>>>,
}

impl Bar {
    /// A bar counting bytes.
    pub fn new(label: &str, total: u64) -> Self {
        Self::with_template(
            label,
            total,
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
    }

    /// A bar counting files (a batch).
    pub fn files(label: &str, total: u64) -> Self {
        Self::with_template(label, total, "{msg} [{bar:30}] {pos}/{len} files eta {eta}")
    }

    fn with_template(label: &str, total: u64, template: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Bar { inner: None };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        Bar {
            inner: Some(Arc::new(Mutex::new((bar, Instant::now(), false)))),
        }
    }

    pub fn callback(&self) -> Progress {
        let inner = self.inner.clone();
        Arc::new(move |done, total| {
            if let Some(inner) = &inner {
                if let Ok(mut g) = inner.lock() {
                    let (bar, started, shown) = &mut *g;
                    if !*shown && started.elapsed() > Duration::from_secs(1) {
                        bar.set_draw_target(ProgressDrawTarget::stderr());
                        *shown = true;
                    }
                    bar.set_length(total);
                    bar.set_position(done);
                }
            }
        })
    }

    /// Prints a line on standard error without tearing the bar.
    pub fn println(&self, line: &str) {
        match &self.inner {
            Some(inner) => match inner.lock() {
                Ok(g) if g.2 => g.0.println(line),
                _ => eprintln!("{line}"),
            },
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(inner) = &self.inner {
            if let Ok(g) = inner.lock() {
                g.0.finish_and_clear();
            }
        }
    }
}
