//! Turning recorded latencies into what a reader sees: a table on stdout, a JSON file for
//! scripts and plots, a progress bar on stderr, and the tool's own CPU use.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest latency a histogram can hold; anything slower is clamped to it, so one stuck
/// request cannot make the recording fail.
const LATENCY_NS_MAX: u64 = 600_000_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Quantiles written to JSON for plotting a latency distribution, dense towards the tail.
const PLOT_QUANTILES: &[f64] = &[
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.9625, 0.975, 0.98,
    0.99, 0.9925, 0.995, 0.99625, 0.9975, 0.998, 0.999, 0.9995, 0.9999, 1.0,
];

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, SIGNIFICANT_DIGITS)
        .expect("the bounds are constants that hdrhistogram accepts")
}

/// Records one latency, clamping what the histogram cannot hold.
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(ns.clamp(1, LATENCY_NS_MAX));
}

/// Latencies of one kind of operation (e.g. "read" and "write" of a mixed workload), and the
/// errors of that kind counted by message.
pub struct Series {
    pub name: String,
    pub latency_ns: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Series {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            latency_ns: new_histogram(),
            errors: BTreeMap::new(),
        }
    }

    pub fn error(&mut self, message: String) {
        *self.errors.entry(message).or_insert(0) += 1;
    }

    /// Folds another thread's recording of the same series into this one.
    pub fn merge(&mut self, other: &Series) {
        assert_eq!(self.name, other.name, "only the same series merge");
        self.latency_ns
            .add(&other.latency_ns)
            .expect("histograms with the same bounds always add");
        for (message, count) in &other.errors {
            *self.errors.entry(message.clone()).or_insert(0) += count;
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn quantile_us(&self, quantile: f64) -> f64 {
        self.latency_ns.value_at_quantile(quantile) as f64 / 1e3
    }

    fn to_json(&self, wall_s: f64) -> Value {
        let h = &self.latency_ns;
        let distribution: Vec<Value> = PLOT_QUANTILES
            .iter()
            .map(|&q| json!([q, self.quantile_us(q)]))
            .collect();
        json!({
            "name": self.name,
            "count": h.len(),
            "errors": self.error_count(),
            "error_messages": self.errors,
            "throughput_per_s": h.len() as f64 / wall_s,
            "latency_us": {
                "mean": h.mean() / 1e3,
                "min": h.min() as f64 / 1e3,
                "p50": self.quantile_us(0.5),
                "p90": self.quantile_us(0.9),
                "p99": self.quantile_us(0.99),
                "p99.9": self.quantile_us(0.999),
                "max": h.max() as f64 / 1e3,
            },
            "distribution_us": distribution,
        })
    }
}

/// CPU time this process used, from getrusage(RUSAGE_SELF): user and system seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    pub user_s: f64,
    pub system_s: f64,
}

impl CpuTime {
    pub fn now() -> Self {
        // SAFETY: getrusage only writes the struct we pass, which is a plain C struct for which
        // all-zero bytes are a valid value.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            let rc = libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            assert_eq!(rc, 0, "getrusage(RUSAGE_SELF) cannot fail");
            usage
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Self {
            user_s: seconds(usage.ru_utime),
            system_s: seconds(usage.ru_stime),
        }
    }

    pub fn since(self, start: CpuTime) -> CpuTime {
        CpuTime {
            user_s: self.user_s - start.user_s,
            system_s: self.system_s - start.system_s,
        }
    }
}

/// What the server processes under test used, read from /proc (`--server-pid`): CPU seconds
/// (utime + stime of every thread) and context switches (voluntary and not, every thread).
/// Divided by the requests of a run it gives the server's cost per request.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerUsage {
    pub cpu_s: f64,
    pub context_switches: u64,
    /// System calls entered by the servers' threads over the run, when `perf` could count
    /// them (the `raw_syscalls:sys_enter` tracepoint; needs root or a permissive
    /// perf_event_paranoid, but no hardware counters, so it works in VMs).
    pub syscalls: Option<u64>,
    /// Heap allocations the server made over the run, from its /metrics: Basalt's
    /// `basalt_heap_allocations_total` or Go's `go_memstats_mallocs_total` (etcd).
    pub heap_allocations: Option<u64>,
}

/// The server's heap allocations so far, scraped from `/metrics` on a plain-text client
/// endpoint (`host:port` or `http://host:port`); None for https or when neither counter is
/// there.
pub fn heap_allocations(endpoint: &str) -> Option<u64> {
    use std::io::{Read, Write};
    if endpoint.starts_with("https://") {
        return None;
    }
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines().find_map(|line| {
        let value = line
            .strip_prefix("basalt_heap_allocations_total ")
            .or_else(|| line.strip_prefix("go_memstats_mallocs_total "))?;
        // Go prints large counters in exponent form (1.234567e+06).
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

/// Counts the system calls of the server processes while a run lasts, with `perf stat` on
/// the `raw_syscalls:sys_enter` tracepoint. A machine without perf gets no count, not an error.
pub struct SyscallCounter {
    child: std::process::Child,
}

impl SyscallCounter {
    pub fn start(pids: &[u32]) -> Option<SyscallCounter> {
        if pids.is_empty() {
            return None;
        }
        let pid_list = pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let child = std::process::Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                "raw_syscalls:sys_enter",
                "-p",
                &pid_list,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        // perf attaches to the threads after it starts; calls made before then go uncounted,
        // so the run waits for it (a few ms) rather than under-count.
        std::thread::sleep(std::time::Duration::from_millis(100));
        Some(SyscallCounter { child })
    }

    /// Stops perf (SIGINT makes it print its count) and returns the count.
    pub fn finish(self) -> Option<u64> {
        // SAFETY: kill only sends a signal to the perf child this counter spawned.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let output = self.child.wait_with_output().ok()?;
        // CSV: "<count>,<unit>,<event>,..." on the line that names the event.
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .find(|line| line.contains("raw_syscalls:sys_enter"))?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl ServerUsage {
    /// The sum over `pids`; `None` when one of them cannot be read (it has exited).
    pub fn sample(pids: &[u32]) -> Option<ServerUsage> {
        if pids.is_empty() {
            return None;
        }
        // SAFETY: sysconf only reads a configuration value.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let mut usage = ServerUsage::default();
        for pid in pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name (field 2) may hold spaces; the fields after its ')' are fixed:
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            let ticks: f64 =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            usage.cpu_s += ticks / ticks_per_s;
            for task in std::fs::read_dir(format!("/proc/{pid}/task"))
                .ok()?
                .flatten()
            {
                let status =
                    std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                usage.context_switches += status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
        Some(usage)
    }

    pub fn since(self, start: ServerUsage) -> ServerUsage {
        ServerUsage {
            cpu_s: self.cpu_s - start.cpu_s,
            context_switches: self.context_switches.saturating_sub(start.context_switches),
            syscalls: None,
            heap_allocations: None,
        }
    }
}

/// The outcome of one run of one workload.
pub struct RunReport {
    pub workload: String,
    /// The flags of the run, as given, so a JSON file says what produced it.
    pub params: Value,
    pub wall: Duration,
    pub cpu: CpuTime,
    /// The server's usage over the run, when `--server-pid` named it.
    pub server: Option<ServerUsage>,
    pub series: Vec<Series>,
    /// Workload-specific figures (e.g. watch events delivered per second).
    pub extra: BTreeMap<String, f64>,
}

impl RunReport {
    pub fn to_json(&self) -> Value {
        let wall_s = self.wall.as_secs_f64();
        let cpu_s = self.cpu.user_s + self.cpu.system_s;
        json!({
            "workload": self.workload,
            "params": self.params,
            "wall_s": wall_s,
            "client_cpu": {
                "user_s": self.cpu.user_s,
                "system_s": self.cpu.system_s,
                "cores_used": cpu_s / wall_s,
            },
            "extra": self.extra,
            "server": self.server.map(|server| {
                let requests = self.requests().max(1) as f64;
                json!({
                    "cpu_s": server.cpu_s,
                    "cpu_us_per_request": server.cpu_s * 1e6 / requests,
                    "context_switches_per_request": server.context_switches as f64 / requests,
                    "syscalls_per_request": server.syscalls.map(|n| n as f64 / requests),
                    "heap_allocations_per_request": server.heap_allocations.map(|n| n as f64 / requests),
                })
            }),
            "series": self.series.iter().map(|s| s.to_json(wall_s)).collect::<Vec<_>>(),
        })
    }

    /// Requests answered in the run, successfully or not, over every series.
    fn requests(&self) -> u64 {
        self.series
            .iter()
            .map(|s| s.latency_ns.len() + s.error_count())
            .sum()
    }

    /// True when at least one request of the run got a successful answer.
    pub fn succeeded(&self) -> bool {
        self.series.iter().any(|s| !s.latency_ns.is_empty())
    }

    pub fn print_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        let wall_s = self.wall.as_secs_f64();
        let cpu_s = self.cpu.user_s + self.cpu.system_s;
        writeln!(out, "\n{}: {:.2} s", self.workload, wall_s)?;
        writeln!(
            out,
            "{:<14} {:>9} {:>7} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "series",
            "count",
            "errors",
            "ops/s",
            "mean ms",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        )?;
        for s in &self.series {
            let h = &s.latency_ns;
            let ms = |q: f64| s.quantile_us(q) / 1e3;
            writeln!(
                out,
                "{:<14} {:>9} {:>7} {:>11.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                s.name,
                h.len(),
                s.error_count(),
                h.len() as f64 / wall_s,
                h.mean() / 1e6,
                ms(0.5),
                ms(0.9),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1e6,
            )?;
            for (message, count) in &s.errors {
                writeln!(out, "  error x{count}: {message}")?;
            }
        }
        for (name, value) in &self.extra {
            writeln!(out, "{name}: {value:.1}")?;
        }
        writeln!(
            out,
            "client cpu: {:.2} s user + {:.2} s system = {:.2} cores busy",
            self.cpu.user_s,
            self.cpu.system_s,
            cpu_s / wall_s
        )?;
        if let Some(server) = self.server {
            let requests = self.requests().max(1) as f64;
            writeln!(
                out,
                "server cpu: {:.2} s = {:.1} us per request, {:.2} context switches per request{}",
                server.cpu_s,
                server.cpu_s * 1e6 / requests,
                server.context_switches as f64 / requests,
                match server.syscalls {
                    Some(n) => format!(", {:.1} syscalls per request", n as f64 / requests),
                    None => String::new(),
                } + &match server.heap_allocations {
                    Some(n) => format!(", {:.1} heap allocations per request", n as f64 / requests),
                    None => String::new(),
                }
            )?;
        }
        Ok(())
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &std::path::Path, value: &Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("a serde_json Value always serialises");
    std::fs::write(path, text + "\n")
}

/// What the run is bounded by, for the progress bar.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    Count(u64),
    Duration(Duration),
}

/// A progress bar on stderr, redrawn by its own thread while the run goes on. It draws only
/// when stderr is a terminal, so logs of scripted runs stay clean.
pub struct Progress {
    pub done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const PROGRESS_REDRAW_MS: u64 = 200;
const PROGRESS_BAR_CELLS: usize = 40;

impl Progress {
    pub fn start(goal: Goal) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let (done, stop) = (done.clone(), stop.clone());
            std::thread::spawn(move || draw_until_stopped(goal, &done, &stop))
        });
        Self { done, stop, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn draw_until_stopped(goal: Goal, done: &AtomicU64, stop: &AtomicBool) {
    let start = Instant::now();
    let mut stderr = std::io::stderr();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(PROGRESS_REDRAW_MS));
        let count = done.load(Ordering::Relaxed);
        let elapsed_s = start.elapsed().as_secs_f64();
        let fraction = match goal {
            Goal::Count(total) => count as f64 / total.max(1) as f64,
            Goal::Duration(d) => elapsed_s / d.as_secs_f64(),
        }
        .min(1.0);
        let filled = (fraction * PROGRESS_BAR_CELLS as f64) as usize;
        let _ = write!(
            stderr,
            "\r[{}{}] {:>3.0}% {} ops {:.0} ops/s ",
            "=".repeat(filled),
            " ".repeat(PROGRESS_BAR_CELLS - filled),
            fraction * 100.0,
            count,
            count as f64 / elapsed_s.max(1e-9)
        );
    }
    let _ = writeln!(stderr);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_series_hold_both_recordings_and_both_error_counts() {
        let mut a = Series::new("write");
        let mut b = Series::new("write");
        record(&mut a.latency_ns, Duration::from_micros(100));
        record(&mut b.latency_ns, Duration::from_micros(300));
        a.error("boom".into());
        b.error("boom".into());
        a.merge(&b);
        assert_eq!(a.latency_ns.len(), 2);
        assert_eq!(a.errors["boom"], 2);
        let max_us = a.latency_ns.max() as f64 / 1e3;
        assert!((max_us - 300.0).abs() < 1.0, "max was {max_us} us");
    }

    #[test]
    fn a_latency_beyond_the_histogram_bound_is_clamped_not_lost() {
        let mut h = new_histogram();
        record(&mut h, Duration::from_secs(100_000));
        assert_eq!(h.len(), 1);
        assert!(h.max() >= LATENCY_NS_MAX / 2);
    }

    #[test]
    fn report_json_carries_the_percentiles_a_plot_needs() {
        let mut s = Series::new("read");
        for us in 1..=1000u64 {
            record(&mut s.latency_ns, Duration::from_micros(us));
        }
        let report = RunReport {
            workload: "range".into(),
            params: json!({}),
            wall: Duration::from_secs(1),
            cpu: CpuTime::default(),
            server: None,
            series: vec![s],
            extra: BTreeMap::new(),
        };
        let v = report.to_json();
        let p99 = v["series"][0]["latency_us"]["p99"].as_f64().unwrap();
        assert!((p99 - 990.0).abs() < 2.0, "p99 was {p99}");
        let points = v["series"][0]["distribution_us"].as_array().unwrap();
        assert_eq!(points.len(), PLOT_QUANTILES.len());
        assert_eq!(v["series"][0]["throughput_per_s"].as_f64().unwrap(), 1000.0);
    }
}
