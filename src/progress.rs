//! The one channel to a person: stderr. Progress shows one spinner or bar per stage with
//! elapsed time on a terminal, plain timestamped lines otherwise (CI logs); the log events of
//! the library (`tracing`: warnings, retries, `-v`'s command lines) are written through
//! [`Console`], which puts them above the spinner instead of through it. stdout stays free for
//! results and `--json`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The spinner on screen, if any: log lines are written above it.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active() -> Option<ProgressBar> {
    ACTIVE.lock().map(|a| a.clone()).unwrap_or(None)
}

fn set_active(bar: Option<&ProgressBar>) {
    if let Ok(mut a) = ACTIVE.lock() {
        *a = bar.cloned();
    }
}

/// Writes a line to stderr, above the spinner when one is drawn.
fn emit(text: &str) {
    match active() {
        Some(b) => b.println(text),
        None => eprintln!("{text}"),
    }
}

/// stderr for `tracing`'s formatter (`.with_writer(Console::default)`): log events share the
/// terminal with the spinner without garbling it.
#[derive(Default)]
pub struct Console;

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match active() {
            Some(b) => b.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

pub struct Progress {
    tty: bool,
    quiet: bool,
    started: Instant,
    stage: Option<(String, Instant)>,
    bar: Option<ProgressBar>,
    last_plain: Option<Instant>,
    /// `[IMAGE/ARCH] ` when several builds share stderr; empty otherwise.
    prefix: String,
}

impl Progress {
    /// `quiet`: nothing but failures. A terminal gets spinners, anything else plain lines.
    pub fn new(quiet: bool) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal() && !quiet,
            quiet,
            started: Instant::now(),
            stage: None,
            bar: None,
            last_plain: None,
            prefix: String::new(),
        }
    }

    /// Starts every line with `[label] `, for several builds writing to one stderr.
    pub fn with_prefix(mut self, label: &str) -> Progress {
        self.prefix = format!("[{label}] ");
        self
    }

    /// Plain lines only (for tests and pipes).
    pub fn plain(quiet: bool) -> Progress {
        let mut p = Progress::new(quiet);
        p.tty = false;
        p
    }

    fn stamp(&self) -> String {
        format!(
            "{}[{:>7.1}s]",
            self.prefix,
            self.started.elapsed().as_secs_f64()
        )
    }

    /// Prints a line (above the spinner on a terminal).
    pub fn line(&self, msg: &str) {
        if self.quiet {
            return;
        }
        emit(&format!("{} {msg}", self.stamp()));
    }

    /// An error line (each of its lines prefixed), shown even when quiet: errors are what
    /// `-q` keeps.
    pub fn error(&self, msg: &str) {
        for l in format!("error: {msg}").lines() {
            emit(&format!("{}{l}", self.prefix));
        }
    }

    /// Starts a stage; an unfinished previous one is closed as done.
    pub fn stage(&mut self, name: &str) {
        if self.stage.is_some() {
            self.done("");
        }
        self.stage = Some((name.to_string(), Instant::now()));
        self.last_plain = None;
        if self.tty {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} [{elapsed}] {wide_msg}")
                    .expect("template"),
            );
            b.set_prefix(name.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            set_active(Some(&b));
            self.bar = Some(b);
        } else {
            self.line(&format!("{name} ..."));
        }
    }

    /// A status update within the stage. Plain output prints it, at most every 10 s unless
    /// `important`.
    pub fn status(&mut self, msg: &str, important: bool) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
            return;
        }
        let due = self
            .last_plain
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if important || due {
            if let Some((name, _)) = &self.stage {
                self.line(&format!("{name}: {msg}"));
            }
            self.last_plain = Some(Instant::now());
        }
    }

    /// Byte progress (downloads): turns the spinner into a bar when the total is known.
    pub fn bytes(&mut self, done: u64, total: Option<u64>) {
        if let Some(b) = &self.bar {
            if let Some(t) = total {
                if b.length() != Some(t) {
                    b.set_length(t);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{prefix:.bold} [{elapsed}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                        )
                        .expect("template"),
                    );
                }
            }
            b.set_position(done);
        } else {
            let msg = match total {
                Some(t) => format!("{} of {} MiB", done >> 20, t >> 20),
                None => format!("{} MiB", done >> 20),
            };
            self.status(&msg, false);
        }
    }

    fn finish(&mut self, mark: &str, summary: &str) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
            set_active(None);
        }
        if let Some((name, t)) = self.stage.take() {
            let s = if summary.is_empty() {
                String::new()
            } else {
                format!(": {summary}")
            };
            let text = format!("{mark} {name} ({:.1} s){s}", t.elapsed().as_secs_f64());
            if mark == "FAIL" {
                emit(&format!("{} {text}", self.stamp()));
            } else {
                self.line(&text);
            }
        }
    }

    /// Closes the current stage as done, with a short summary.
    pub fn done(&mut self, summary: &str) {
        self.finish("ok  ", summary);
    }

    /// Closes the current stage as failed.
    pub fn fail(&mut self) {
        self.finish("FAIL", "");
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
            set_active(None);
        }
    }
}
