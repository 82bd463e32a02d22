//! `pipeline` (ordered steps passing files) and `parallel` (jobs at once, the worst exit code),
//! on the native backend with the test registry's busybox image.

mod common;
use common::*;
use std::path::Path;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
}

const THREE_STEPS: &str = r#"
input = "src"
output = "results"

[[steps]]
name = "split"
image = "busybox:latest"
command = "tr ' ' '\n' < /in/words > /out/lines && echo split-done"
input = "/in"
output = "/out"

[[steps]]
name = "sort"
image = "busybox:latest"
command = ["sh", "-c", "sort /data/lines > /sorted/lines; echo sort-warning >&2"]
input = "/data"
output = "/sorted"

[[steps]]
name = "count"
image = "busybox:latest"
command = "wc -l < /x/lines > /result/count && head -n 1 /x/lines > /result/first"
input = "/x"
output = "/result"
"#;

#[test]
fn a_pipeline_passes_files_from_step_to_step() {
    let ak = Ak::new();
    let dir = ak.cwd.path();
    std::fs::create_dir(dir.join("src")).expect("mkdir");
    write(&dir.join("src/words"), "pear apple fig banana");
    write(&dir.join("pipeline.toml"), THREE_STEPS);

    let plan = ak.ok(&["pipeline", "pipeline.toml", "--dry-run"]).stdout;
    assert!(plan.contains("3 step(s)"), "{plan}");
    assert!(plan.contains("step 2's /data"), "{plan}");
    assert!(
        !dir.join("results").exists(),
        "a dry run ran something: {plan}"
    );

    let out = ak.run(&["pipeline", "pipeline.toml"]);
    assert_eq!(out.code, 0, "{out:?}");
    // Each step's own output streams through, stdout and stderr apart.
    assert!(out.stdout.contains("split-done"), "{out:?}");
    assert!(out.stderr.contains("sort-warning"), "{out:?}");
    assert!(!out.stdout.contains("sort-warning"), "{out:?}");
    // Plain progress lines when not on a terminal.
    assert!(out.stderr.contains("step 3/3 count passed"), "{out:?}");
    // The last step's output reached the pipeline's output directory.
    let count = std::fs::read_to_string(dir.join("results/count")).expect("count");
    assert_eq!(count.trim(), "4");
    let first = std::fs::read_to_string(dir.join("results/first")).expect("first");
    assert_eq!(first.trim(), "apple");
    // No step's sandbox or staging directory is left.
    assert!(ak.list_json().is_empty(), "{:?}", ak.list_json());
    let staging = ak.home.path().join("tmp");
    assert!(
        std::fs::read_dir(&staging).map_or(true, |mut d| d.next().is_none()),
        "staging left in {}",
        staging.display()
    );

    // The output is never overwritten: a second run is refused before anything runs.
    let again = ak.run(&["pipeline", "pipeline.toml"]);
    assert_eq!(again.code, 125, "{again:?}");
    assert!(again.stderr.contains("not empty"), "{again:?}");
    assert!(!again.stderr.contains("step 1/3"), "{again:?}");
}

#[test]
fn a_failing_step_stops_the_pipeline_with_its_exit_code() {
    let ak = Ak::new();
    let dir = ak.cwd.path();
    write(
        &dir.join("p.toml"),
        r#"
[[steps]]
name = "first"
image = "busybox:latest"
command = "echo made > /out/file"
output = "/out"

[[steps]]
name = "middle"
image = "busybox:latest"
command = "cat /in/file; exit 7"
input = "/in"
output = "/out"

[[steps]]
name = "last"
image = "busybox:latest"
command = "echo last-ran"
input = "/in"
"#,
    );
    let out = ak.run(&["pipeline", "p.toml"]);
    assert_eq!(out.code, 7, "{out:?}");
    // The middle step got the first one's file, then failed; the last never ran.
    assert!(out.stdout.contains("made"), "{out:?}");
    assert!(!out.stdout.contains("last-ran"), "{out:?}");
    assert!(
        out.stderr
            .contains("step 2/3 middle failed with exit code 7"),
        "{out:?}"
    );
    assert!(out.stderr.contains("1 later step(s) not run"), "{out:?}");
    assert!(ak.list_json().is_empty(), "{:?}", ak.list_json());
}

#[test]
fn bad_pipeline_files_are_refused_with_what_to_fix() {
    let ak = Ak::new();
    let dir = ak.cwd.path();
    let cases = [
        ("", "steps"),
        ("[[steps]]\nname = \"a\"\nimage = \"busybox\"\n", "command"),
        (
            "[[steps]]\nname = \"a\"\nimage = \"busybox\"\ncommand = \"true\"\nimput = \"/x\"\n",
            "imput",
        ),
        (
            "[[steps]]\nname = \"a\"\nimage = \"busybox\"\ncommand = \"true\"\ninput = \"/in\"\n",
            "the pipeline has none",
        ),
        (
            "[[steps]]\nname = \"a\"\nimage = \"busybox\"\ncommand = \"true\"\noutput = \"relative\"\n",
            "absolute path",
        ),
        (
            "[[steps]]\nname = \"a b\"\nimage = \"busybox\"\ncommand = \"true\"\n",
            "step 1",
        ),
    ];
    for (text, says) in cases {
        write(&dir.join("bad.toml"), text);
        let out = ak.run(&["pipeline", "bad.toml"]);
        assert_eq!(out.code, 125, "{text:?}: {out:?}");
        assert!(out.stderr.contains(says), "{text:?}: {out:?}");
    }
    let missing = ak.run(&["pipeline", "nope.toml"]);
    assert_eq!(missing.code, 125, "{missing:?}");
    assert!(missing.stderr.contains("nope.toml"), "{missing:?}");
    assert!(ak.list_json().is_empty());
}

#[test]
fn parallel_jobs_keep_their_output_apart_and_exit_with_the_worst_code() {
    let ak = Ak::new();
    let outs = ak.cwd.path().join("outs");
    // Job `many` writes 20 000 numbered lines while the others run: none may be lost, torn
    // or mixed with another job's.
    let out = ak.run(&[
        "parallel",
        "--max-jobs",
        "3",
        "--output-dir",
        outs.to_str().expect("utf-8"),
        "--job",
        "many:busybox:seq 1 20000",
        "--job",
        "fails:busybox:latest:echo about-to-fail; echo oops >&2; exit 3",
        "--job",
        "worse:busybox:echo also-failing; exit 5",
        "--job",
        "ok:busybox:printf 'no newline at the end'",
    ]);
    assert_eq!(out.code, 5, "the worst job's code: {}", out.stderr);
    let many: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("[many] "))
        .collect();
    let expected: Vec<String> = (1..=20000).map(|n| n.to_string()).collect();
    assert_eq!(many, expected, "job many's lines, in order and whole");
    // Every line before the summary belongs to a job.
    for line in out.stdout.lines().take_while(|l| !l.starts_with("JOB ")) {
        let known = ["[many] ", "[fails] ", "[worse] ", "[ok] "];
        assert!(
            known.iter().any(|p| line.starts_with(p)),
            "a line of no job: {line:?}"
        );
    }
    assert!(
        out.stdout.contains("[fails] about-to-fail\n"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("[fails] oops\n"), "{}", out.stderr);
    assert!(!out.stdout.contains("oops"));
    assert!(out.stdout.contains("[ok] no newline at the end\n"));
    // The summary table: each job with its code.
    let table: Vec<&str> = out
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("JOB "))
        .collect();
    assert_eq!(table.len(), 5, "{table:?}");
    for (job, code) in [("many", 0), ("fails", 3), ("worse", 5), ("ok", 0)] {
        let row = table
            .iter()
            .find(|r| r.split_whitespace().next() == Some(job))
            .unwrap_or_else(|| panic!("no row for {job}: {table:?}"));
        assert_eq!(
            row.split_whitespace().nth(1),
            Some(code.to_string().as_str()),
            "{row}"
        );
    }
    // --output-dir keeps each job's raw bytes.
    let raw = std::fs::read_to_string(outs.join("many.stdout")).expect("many.stdout");
    assert_eq!(raw, expected.join("\n") + "\n");
    let raw = std::fs::read_to_string(outs.join("ok.stdout")).expect("ok.stdout");
    assert_eq!(raw, "no newline at the end");
    let raw = std::fs::read_to_string(outs.join("fails.stderr")).expect("fails.stderr");
    assert_eq!(raw, "oops\n");
    assert!(ak.list_json().is_empty(), "{:?}", ak.list_json());

    // All passing: 0.
    let out = ak.run(&[
        "parallel",
        "--job",
        "a:busybox:true",
        "--job",
        "b:busybox:true",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn parallel_refuses_bad_jobs_before_running_any() {
    let ak = Ak::new();
    for (args, says) in [
        (vec!["--job", "x:busybox"], "NAME:IMAGE:COMMAND"),
        (
            vec!["--job", "a:busybox:true", "--job", "a:busybox:false"],
            "two jobs",
        ),
        (
            vec!["--job", "a:busybox:true", "--max-jobs", "0"],
            "--max-jobs",
        ),
    ] {
        let mut all = vec!["parallel"];
        all.extend(args);
        let out = ak.run(&all);
        assert_eq!(out.code, 125, "{all:?}: {out:?}");
        assert!(out.stderr.contains(says), "{all:?}: {out:?}");
        assert!(!out.stdout.contains("JOB"), "{out:?}");
    }
    // A job whose image does not exist fails alone, with agentkernel's code and why.
    let out = ak.run(&[
        "parallel",
        "--job",
        "good:busybox:echo fine",
        "--job",
        "bad:no-such-image-here:true",
    ]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stdout.contains("[good] fine"), "{out:?}");
    assert!(out.stderr.contains("[bad] agentkernel: error:"), "{out:?}");
}

/// `benchmark` measures `run` and `exec` on each backend asked for and prints a table (or
/// JSON); a named backend that cannot be measured makes the exit code 1, bad input is 125.
#[test]
fn benchmark_measures_run_and_exec_per_backend() {
    let mut ak = Ak::new();
    let docker = common::engines::engine("docker");
    ak.env.push((docker.var.to_string(), docker.host.clone()));
    let out = ak.run(&[
        "benchmark",
        "--backends",
        "native,docker",
        "--runs",
        "2",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (row, backend) in rows.iter().zip(["native", "docker"]) {
        assert_eq!(row["backend"], backend, "{row}");
        for op in ["run", "exec"] {
            let t = &row[op];
            assert_eq!(t["runs"], 2, "{row}");
            let (min, median, p95) = (
                t["min_ms"].as_f64().expect("min"),
                t["median_ms"].as_f64().expect("median"),
                t["p95_ms"].as_f64().expect("p95"),
            );
            assert!(0.0 < min && min <= median && median <= p95, "{row}");
        }
    }
    // The benchmark's sandboxes are gone.
    assert!(ak.list_json().is_empty(), "{:?}", ak.list_json());
    let table = ak
        .ok(&["benchmark", "--backends", "native", "--runs", "1"])
        .stdout;
    assert!(table.contains("RUN median"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("native ")), "{table}");
    // A backend that cannot run here is reported, and fails the command when named.
    let mut nowhere = Ak::new();
    nowhere
        .env
        .push((docker.var.to_string(), "unix:///nonexistent.sock".into()));
    let out = nowhere.run(&["benchmark", "--backends", "docker", "--runs", "1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("docker    not measured"), "{out:?}");
    for bad in [&["--backends", "nope"][..], &["--runs", "0"][..]] {
        let mut args = vec!["benchmark"];
        args.extend_from_slice(bad);
        let out = ak.run(&args);
        assert_eq!(out.code, 125, "{bad:?}: {out:?}");
    }
}
