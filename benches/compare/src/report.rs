//! Writes `docs/benchmarks.md` and the SVG charts.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::work::CONTENDERS;
use crate::{KeyedRun, Run};

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib as f64 / 1048576.0)
        });
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    format!("{cores} logical CPUs ({model}), {mem} RAM, Linux {kernel}")
}

fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn workload_table(out: &mut String, runs: &[Run], workload: &str) {
    let _ = writeln!(
        out,
        "| contender | makespan | ÷ lower bound | requests/s | p50 latency | p99 latency | CPU | peak RSS | peak threads |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in runs.iter().filter(|r| r.workload == workload) {
        match &run.result {
            Ok(f) => {
                let _ = writeln!(
                    out,
                    "| {} | {:.3} s | {:.3} | {:.0} | {:.1} ms | {:.1} ms | {:.2} s | {:.1} MiB | {} |",
                    run.contender,
                    f.makespan,
                    f.makespan / run.lower_bound,
                    run.tasks as f64 / f.makespan,
                    f.p50_ms,
                    f.p99_ms,
                    f.cpu,
                    f.peak_rss_kib as f64 / 1024.0,
                    f.peak_threads
                );
            }
            Err(e) => {
                let _ = writeln!(out, "| {} | failed: {e} | | | | | | | |", run.contender);
            }
        }
    }
}

fn sweep_table(out: &mut String, runs: &[Run], levels: &[usize], cell: impl Fn(&Run) -> String) {
    let _ = write!(out, "| contender |");
    for c in levels {
        let _ = write!(out, " {c} |");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|{}", "---:|".repeat(levels.len()));
    for contender in CONTENDERS {
        let _ = write!(out, "| {contender} |");
        for &c in levels {
            let cell = runs
                .iter()
                .find(|r| r.workload == "sweep" && r.contender == *contender && r.concurrency == c)
                .map_or("".into(), &cell);
            let _ = write!(out, " {cell} |");
        }
        let _ = writeln!(out);
    }
}

fn chart(
    path: &Path,
    title: &str,
    y_label: &str,
    runs: &[Run],
    levels: &[usize],
    value: impl Fn(&Run) -> Option<f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let points: Vec<(&str, Vec<(f64, f64)>)> = CONTENDERS
        .iter()
        .map(|c| {
            let line = levels
                .iter()
                .filter_map(|&level| {
                    runs.iter()
                        .find(|r| {
                            r.workload == "sweep" && r.contender == *c && r.concurrency == level
                        })
                        .and_then(&value)
                        .map(|v| ((level as f64).log2(), v))
                })
                .collect();
            (*c, line)
        })
        .collect();
    let max_y = points
        .iter()
        .flat_map(|(_, l)| l.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        * 1.1;
    let min_y = points
        .iter()
        .flat_map(|(_, l)| l.iter().map(|p| p.1))
        .fold(f64::MAX, f64::min)
        .min(1.0)
        * 0.95;
    let (x0, x1) = (
        (levels[0] as f64).log2(),
        (*levels.last().unwrap() as f64).log2(),
    );
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        // Log scale: the worst contenders are hundreds of times off, the best within a percent.
        .build_cartesian_2d(x0 - 0.2..x1 + 0.2, (min_y..max_y).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("concurrency (workers)")
        .y_desc(y_label)
        .x_labels(levels.len())
        .x_label_formatter(&|x| format!("{}", 2f64.powf(*x).round()))
        .draw()?;
    for (i, (name, line)) in points.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let width = if name.starts_with("slowpool") { 3 } else { 1 };
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(width)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
        chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

pub fn write(
    docs: &Path,
    runs: &[Run],
    overhead: &[(String, usize, Option<f64>)],
    idle: &[(String, Option<f64>)],
    idle_workers: usize,
    keyed: Option<&KeyedRun>,
    elapsed: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(docs)?;
    let mut levels: Vec<usize> = runs
        .iter()
        .filter(|r| r.workload == "sweep")
        .map(|r| r.concurrency)
        .collect();
    levels.sort();
    levels.dedup();
    chart(
        &docs.join("sweep_ratio.svg"),
        "sleep: 20,000 tasks of 1-20 ms — makespan ÷ lower bound",
        "makespan ÷ lower bound",
        runs,
        &levels,
        |r| r.result.as_ref().ok().map(|f| f.makespan / r.lower_bound),
    )?;
    chart(
        &docs.join("sweep_rss.svg"),
        "sleep: 20,000 tasks of 1-20 ms — peak RSS",
        "peak RSS (MiB)",
        runs,
        &levels,
        |r| {
            r.result
                .as_ref()
                .ok()
                .map(|f| f.peak_rss_kib as f64 / 1024.0)
        },
    )?;

    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Generated by `cargo run --release -p compare` on {} ({}), in {:.0} s. Every contender runs \
         in a process of its own, the HTTP server (tokio + axum, async sleeps) in the parent; every \
         contender's results are checked (all bodies received, total length right). Lower bound = \
         max(sum of delays ÷ concurrency, longest delay). Latency is from the moment a request was \
         handed over (for contenders without a queue, the start of the run) to the end of its work. \
         CPU is the contender process's user + system time; peak RSS its high-water mark.\n",
        today(),
        machine(),
        elapsed.as_secs_f64()
    );
    let _ = writeln!(out, "Contenders: `slowpool` (one `Task` per request), `slowpool_mailbox` (`add_task_to`), `threadpool` 1.8, rayon 1.x `ThreadPool::spawn`, tokio `spawn_blocking` (`max_blocking_threads` = concurrency), `tokio_async` (reqwest or `tokio::time::sleep`, `buffer_unordered(concurrency)`), a thread per request (at most `concurrency` alive), and `crossbeam_floor` (raw threads on a crossbeam channel of boxed closures — the floor any pool sits on). All blocking contenders use ureq.\n");
    let _ = writeln!(
        out,
        "## http: 2,000 requests, delays 5–100 ms, concurrency 256\n"
    );
    workload_table(&mut out, runs, "http");
    let _ = writeln!(out, "\n## sleep: the same without the network\n");
    workload_table(&mut out, runs, "sleep");
    let _ = writeln!(out, "\n## Concurrency sweep: 20,000 sleeps of 1–20 ms\n");
    let _ = writeln!(
        out,
        "![makespan ratio](sweep_ratio.svg)\n\nMakespan ÷ lower bound:\n"
    );
    sweep_table(&mut out, runs, &levels, |r| {
        r.result.as_ref().map_or("failed".into(), |f| {
            format!("{:.3}", f.makespan / r.lower_bound)
        })
    });
    let _ = writeln!(
        out,
        "\nThe same runs measured from the first add, on a contender already built (its threads \
         started and idle; a long-lived pool pays for starting them once): makespan ÷ lower \
         bound, then CPU seconds of the whole run and seconds spent building:\n"
    );
    sweep_table(&mut out, runs, &levels, |r| {
        r.result.as_ref().map_or("failed".into(), |f| {
            format!(
                "{:.3} · {:.2} s cpu · {:.3} s build",
                f.makespan_built / r.lower_bound,
                f.cpu,
                f.build
            )
        })
    });
    let _ = writeln!(out, "\n![peak RSS](sweep_rss.svg)\n\nPeak RSS (MiB):\n");
    sweep_table(&mut out, runs, &levels, |r| {
        r.result.as_ref().map_or("failed".into(), |f| {
            format!("{:.1}", f.peak_rss_kib as f64 / 1024.0)
        })
    });
    let _ = writeln!(out, "\nPeak threads:\n");
    sweep_table(&mut out, runs, &levels, |r| {
        r.result
            .as_ref()
            .map_or("failed".into(), |f| f.peak_threads.to_string())
    });
    let _ = writeln!(out, "\nCPU seconds:\n");
    sweep_table(&mut out, runs, &levels, |r| {
        r.result
            .as_ref()
            .map_or("failed".into(), |f| format!("{:.2}", f.cpu))
    });

    let _ = writeln!(
        out,
        "\n## Per-task overhead: 200,000 empty tasks, then every result\n"
    );
    let _ = writeln!(out, "Median of three runs, tasks per second (× the crossbeam floor measured in the same run). `tokio_async` is one `tokio::spawn` per task on a runtime with that many worker threads.\n");
    let _ = writeln!(
        out,
        "| contender | 2 workers | 64 workers |\n|---|---:|---:|"
    );
    let rate = |c: &str, w: usize| {
        overhead
            .iter()
            .find(|o| o.0 == c && o.1 == w)
            .and_then(|o| o.2)
    };
    for contender in CONTENDERS.iter().filter(|c| **c != "thread_per_request") {
        let _ = write!(out, "| {contender} |");
        for w in [2, 64] {
            match (rate(contender, w), rate("crossbeam_floor", w)) {
                (Some(r), Some(floor)) => {
                    let _ = write!(out, " {:.2} M/s ({:.2}×) |", r / 1e6, r / floor);
                }
                _ => {
                    let _ = write!(out, " failed |");
                }
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "\n## Idle cost\n");
    let _ = writeln!(out, "Resident memory added per idle worker, {idle_workers} workers started and idle. `slowpool_retired` is an elastic pool (`min_workers(0)`) after its {idle_workers} workers retired.\n");
    let _ = writeln!(out, "| pool | KiB per idle worker |\n|---|---:|");
    for (name, kib) in idle {
        let _ = writeln!(
            out,
            "| {name} | {} |",
            kib.map_or("failed".into(), |k| format!("{k:.1}"))
        );
    }
    if let Some(keyed) = keyed {
        let _ = write!(out, "\n{}", keyed_section(keyed));
    }
    let _ = writeln!(
        out,
        "\nEvery contender in one process, rounds alternating, with CPU time and context switches per task: \
         `cargo run --release -p compare -- inproc` prints it (see `benches/compare/src/inproc.rs`)."
    );
    let _ = writeln!(
        out,
        "\nOn 16 cores: [more-benchmarks.md](more-benchmarks.md)."
    );
    std::fs::write(docs.join("benchmarks.md"), out)?;
    Ok(())
}

/// The keyed-stream section of `docs/benchmarks.md` (also printed by `--only keyed`).
pub fn keyed_section(keyed: &KeyedRun) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Keyed streams: input sorted by key against the same input shuffled\n"
    );
    let _ = writeln!(
        out,
        "`stream(..).key(..)` over {} inputs across 10 keys, each a sleep of 1–3 ms, \
         `max_per_key(2)`, 20 workers; sorted and shuffled runs alternate ({}; {}).\n",
        keyed.inputs,
        machine(),
        today()
    );
    let _ = writeln!(
        out,
        "| input |{} median |",
        (1..=keyed.rounds.len())
            .map(|r| format!(" round {r} |"))
            .collect::<String>()
    );
    let _ = writeln!(out, "|---|{}---:|", "---:|".repeat(keyed.rounds.len()));
    let (sorted, shuffled) = keyed.medians();
    for (name, pick, median) in [("sorted by key", 0, sorted), ("shuffled", 1, shuffled)] {
        let _ = write!(out, "| {name} |");
        for round in &keyed.rounds {
            let _ = write!(out, " {:.3} s |", if pick == 0 { round.0 } else { round.1 });
        }
        let _ = writeln!(out, " {median:.3} s |");
    }
    let _ = writeln!(
        out,
        "\nSorted ÷ shuffled: **{:.3}** (lower bound {:.3} s: the sum of the sleeps ÷ 20 workers).",
        sorted / shuffled,
        keyed.lower_bound
    );
    out
}
